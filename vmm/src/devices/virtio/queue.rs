//! Strict descriptor-chain walking and guest-memory copies for devices.
//!
//! virtio-queue's [`Queue`] keeps the ring state (sizes, addresses, next
//! indexes, event-index suppression) and checks `avail.idx` against the
//! queue size; chains themselves are walked here, because a device must
//! tell a finished chain from a broken one: every rule a driver can break
//! is an error, not a silent end of the chain.
//!
//! Threat model: descriptors, ring indexes and buffer addresses come from
//! the guest. Rules enforced: head and `next` indexes inside their table;
//! at most queue-size buffers per chain, indirect ones included (a loop
//! ends there); indirect tables only when negotiated, only once per chain,
//! never with NEXT, a whole non-zero number of 16-byte descriptors, inside
//! guest memory; every buffer inside guest memory (checked sums, across
//! regions only where they touch); total length below 2^32.
//!
//! Limitations:
//! - Zero-length descriptors are accepted and skipped.

// Register and descriptor fields are cut from and packed into fixed-width
// words on purpose; each cast below narrows a value already masked or bounded.
#![allow(clippy::cast_possible_truncation)]

use std::num::Wrapping;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{GuestMemoryMmap, F_INDIRECT_DESC};

const DESC_SIZE: u64 = 16;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// A driver broke a rule; the device needs a reset.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// avail.idx moved further than the queue holds.
    #[error("Available ring index {idx} is more than the queue size past {next_avail}")]
    AvailIndex {
        /// The driver's avail.idx.
        idx: u16,
        /// The device's next available index.
        next_avail: u16,
    },
    /// The rings themselves cannot be read or written.
    #[error("Ring of queue {0} is not in guest memory")]
    Ring(usize),
    /// A head or next index is outside its descriptor table.
    #[error("Descriptor index {index} outside a table of {len}")]
    BadIndex {
        /// The index.
        index: u16,
        /// Entries in the table.
        len: u16,
    },
    /// More buffers than the queue size: too long, or a loop.
    #[error("Descriptor chain longer than {0} buffers")]
    TooLong(u16),
    /// A descriptor or buffer lies outside guest memory.
    #[error("Buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The buffers add up to 2^32 bytes or more.
    #[error("Descriptor chain of 4 GiB or more")]
    TooBig,
    /// Indirect descriptor without the feature negotiated.
    #[error("Indirect descriptor without VIRTIO_F_INDIRECT_DESC")]
    IndirectNotNegotiated,
    /// Indirect descriptor inside an indirect table.
    #[error("Nested indirect descriptor")]
    NestedIndirect,
    /// Indirect descriptor with NEXT set.
    #[error("Indirect descriptor with NEXT set")]
    IndirectWithNext,
    /// Indirect table empty or not a whole number of descriptors.
    #[error("Indirect table of {0} bytes")]
    BadIndirectTable(u32),
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes (never 0).
    pub len: u32,
    /// The device may write it (else it reads it).
    pub writable: bool,
}

/// A validated descriptor chain: every buffer lies in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Head index, to hand back in the used ring.
    pub head: u16,
    /// The buffers in order.
    pub bufs: Vec<Buf>,
}

impl Chain {
    /// The device-readable buffers, in order.
    pub fn readable(&self) -> Vec<Buf> {
        self.bufs.iter().copied().filter(|b| !b.writable).collect()
    }

    /// The device-writable buffers, in order.
    pub fn writable(&self) -> Vec<Buf> {
        self.bufs.iter().copied().filter(|b| b.writable).collect()
    }
}

#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_desc(mem: &GuestMemoryMmap, table: GuestAddress, index: u16) -> Result<Desc, ChainError> {
    let addr =
        table
            .0
            .checked_add(u64::from(index) * DESC_SIZE)
            .ok_or(ChainError::OutOfMemory {
                addr: table.0,
                len: DESC_SIZE,
            })?;
    let mut raw = [0u8; 16];
    mem.read_slice(&mut raw, GuestAddress(addr))
        .map_err(|_| ChainError::OutOfMemory {
            addr,
            len: DESC_SIZE,
        })?;
    let le = |r: std::ops::Range<usize>| -> u64 {
        raw[r]
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    };
    Ok(Desc {
        addr: le(0..8),
        len: le(8..12) as u32,
        flags: le(12..14) as u16,
        next: le(14..16) as u16,
    })
}

/// Whether `[addr, addr + len)` is all guest RAM.
pub fn in_memory(mem: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    let Some(_end) = addr.checked_add(len) else {
        return false;
    };
    let Ok(len) = usize::try_from(len) else {
        return false;
    };
    len == 0 || mem.check_range(GuestAddress(addr), len)
}

/// Walks the chain at `head` of a queue whose table is at `table` with
/// `size` entries.
pub fn walk_chain(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    size: u16,
    head: u16,
    features: u64,
) -> Result<Chain, ChainError> {
    let mut bufs = Vec::new();
    let mut total: u32 = 0;
    let mut count: u16 = 0;
    let (mut table, mut table_len, mut index) = (table, size, head);
    let mut indirect = false;
    loop {
        if index >= table_len {
            return Err(ChainError::BadIndex {
                index,
                len: table_len,
            });
        }
        let d = read_desc(mem, table, index)?;
        if d.flags & F_INDIRECT != 0 {
            if features & F_INDIRECT_DESC == 0 {
                return Err(ChainError::IndirectNotNegotiated);
            }
            if indirect {
                return Err(ChainError::NestedIndirect);
            }
            if d.flags & F_NEXT != 0 {
                return Err(ChainError::IndirectWithNext);
            }
            let entries = u64::from(d.len) / DESC_SIZE;
            if d.len == 0 || u64::from(d.len) % DESC_SIZE != 0 || entries > u64::from(u16::MAX) {
                return Err(ChainError::BadIndirectTable(d.len));
            }
            if !in_memory(mem, d.addr, u64::from(d.len)) {
                return Err(ChainError::OutOfMemory {
                    addr: d.addr,
                    len: u64::from(d.len),
                });
            }
            // The indirect descriptor's own WRITE flag means nothing.
            (table, table_len, index) = (GuestAddress(d.addr), entries as u16, 0);
            indirect = true;
            continue;
        }
        // Counting buffers (not the indirect pointer) bounds loops too.
        count += 1;
        if count > size {
            return Err(ChainError::TooLong(size));
        }
        total = total.checked_add(d.len).ok_or(ChainError::TooBig)?;
        if !in_memory(mem, d.addr, u64::from(d.len)) {
            return Err(ChainError::OutOfMemory {
                addr: d.addr,
                len: u64::from(d.len),
            });
        }
        // Zero-length buffers count against the limit but carry nothing.
        if d.len > 0 {
            bufs.push(Buf {
                addr: GuestAddress(d.addr),
                len: d.len,
                writable: d.flags & F_WRITE != 0,
            });
        }
        if d.flags & F_NEXT == 0 {
            return Ok(Chain { head, bufs });
        }
        index = d.next;
    }
}

/// A device's view of its queues during one call: pops validated chains,
/// returns used ones, and records which queues need an interrupt.
#[derive(Debug)]
pub struct Queues<'a> {
    queues: &'a mut [Queue],
    mem: &'a GuestMemoryMmap,
    features: u64,
    used: u64,
}

impl<'a> Queues<'a> {
    /// Wraps the transport's queues for one device call.
    pub fn new(queues: &'a mut [Queue], mem: &'a GuestMemoryMmap, features: u64) -> Self {
        Self {
            queues,
            mem,
            features,
            used: 0,
        }
    }

    /// Guest memory.
    pub fn mem(&self) -> &GuestMemoryMmap {
        self.mem
    }

    /// Bit `i` set: queue `i` got used entries in this call.
    pub fn used_mask(&self) -> u64 {
        self.used
    }

    fn queue(&mut self, q: usize) -> Result<&mut Queue, ChainError> {
        self.queues.get_mut(q).ok_or(ChainError::Ring(q))
    }

    /// The next available chain of queue `q`, validated, or `None`.
    pub fn pop(&mut self, q: usize) -> Result<Option<Chain>, ChainError> {
        let (mem, features) = (self.mem, self.features);
        let queue = self.queue(q)?;
        if !queue.ready() {
            return Ok(None);
        }
        let next_avail = queue.next_avail();
        let idx = queue
            .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
            .map_err(|_| ChainError::Ring(q))?;
        if idx.0 == next_avail {
            return Ok(None);
        }
        let (table, size) = (GuestAddress(queue.desc_table()), queue.size());
        let head = {
            let mut iter = queue.iter(mem).map_err(|_| ChainError::AvailIndex {
                idx: idx.0,
                next_avail,
            })?;
            match iter.next() {
                Some(chain) => chain.head_index(),
                None => return Err(ChainError::Ring(q)),
            }
        };
        walk_chain(mem, table, size, head, features).map(Some)
    }

    /// Puts back the chain popped last from queue `q` (it stays available).
    pub fn unpop(&mut self, q: usize) -> Result<(), ChainError> {
        let queue = self.queue(q)?;
        let prev = (Wrapping(queue.next_avail()) - Wrapping(1)).0;
        queue.set_next_avail(prev);
        Ok(())
    }

    /// Returns chain `head` of queue `q` with `len` bytes written.
    pub fn add_used(&mut self, q: usize, head: u16, len: u32) -> Result<(), ChainError> {
        let mem = self.mem;
        self.queue(q)?
            .add_used(mem, head, len)
            .map_err(|_| ChainError::Ring(q))?;
        self.used |= 1 << (q % 64);
        Ok(())
    }

    /// Tells the driver it need not notify queue `q` for now.
    pub fn disable_notification(&mut self, q: usize) -> Result<(), ChainError> {
        let mem = self.mem;
        self.queue(q)?
            .disable_notification(mem)
            .map_err(|_| ChainError::Ring(q))
    }

    /// Asks for notifications on queue `q` again; `true` when chains
    /// arrived meanwhile (process them before waiting).
    pub fn enable_notification(&mut self, q: usize) -> Result<bool, ChainError> {
        let mem = self.mem;
        self.queue(q)?
            .enable_notification(mem)
            .map_err(|_| ChainError::Ring(q))
    }

    /// Runs `handle` on every available chain of queue `q` until none is
    /// left, with driver notifications suppressed meanwhile.
    pub fn drain(
        &mut self,
        q: usize,
        mut handle: impl FnMut(&mut Self, Chain) -> Result<(), ChainError>,
    ) -> Result<(), ChainError> {
        loop {
            self.disable_notification(q)?;
            while let Some(chain) = self.pop(q)? {
                handle(self, chain)?;
            }
            if !self.enable_notification(q)? {
                return Ok(());
            }
        }
    }
}

/// Copies between a host buffer and a run of guest buffers, in order.
#[derive(Debug, Clone)]
pub struct Cursor {
    bufs: Vec<Buf>,
    index: usize,
    offset: u32,
}

impl Cursor {
    /// A cursor at the start of `bufs`.
    pub fn new(bufs: Vec<Buf>) -> Self {
        Self {
            bufs,
            index: 0,
            offset: 0,
        }
    }

    /// Bytes left from the cursor to the end.
    pub fn remaining(&self) -> u64 {
        let rest: u64 = self
            .bufs
            .iter()
            .skip(self.index)
            .map(|b| u64::from(b.len))
            .sum();
        rest - u64::from(self.offset)
    }

    /// Cuts the run to its first `len` bytes from here, returning the rest.
    pub fn split_off(&mut self, len: u64) -> Cursor {
        let mut left = len + u64::from(self.offset);
        let mut i = self.index;
        while i < self.bufs.len() && left >= u64::from(self.bufs[i].len) {
            left -= u64::from(self.bufs[i].len);
            i += 1;
        }
        let mut tail = self.bufs.split_off(i.min(self.bufs.len()));
        if left > 0 {
            if let Some(first) = tail.first_mut() {
                // left < first.len here, so both parts fit in u32.
                let cut = left as u32;
                self.bufs.push(Buf { len: cut, ..*first });
                first.addr = GuestAddress(first.addr.0 + u64::from(cut));
                first.len -= cut;
            }
        }
        Cursor::new(tail)
    }

    /// Calls `f` with each (address, length) piece of the next `len` bytes.
    fn advance(
        &mut self,
        len: usize,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), ChainError>,
    ) -> Result<usize, ChainError> {
        let mut done = 0;
        while done < len && self.index < self.bufs.len() {
            let b = self.bufs[self.index];
            let avail = (b.len - self.offset) as usize;
            let n = avail.min(len - done);
            f(GuestAddress(b.addr.0 + u64::from(self.offset)), done, n)?;
            done += n;
            // n <= avail, which is a u32 difference.
            self.offset += n as u32;
            if self.offset == b.len {
                self.index += 1;
                self.offset = 0;
            }
        }
        Ok(done)
    }

    /// Copies guest bytes into `out`; returns how many (less at the end).
    pub fn read(&mut self, mem: &GuestMemoryMmap, out: &mut [u8]) -> Result<usize, ChainError> {
        self.advance(out.len(), |addr, at, n| {
            mem.read_slice(&mut out[at..at + n], addr)
                .map_err(|_| ChainError::OutOfMemory {
                    addr: addr.0,
                    len: n as u64,
                })
        })
    }

    /// Copies `data` into guest buffers; returns how many bytes fit.
    pub fn write(&mut self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<usize, ChainError> {
        self.advance(data.len(), |addr, at, n| {
            mem.write_slice(&data[at..at + n], addr)
                .map_err(|_| ChainError::OutOfMemory {
                    addr: addr.0,
                    len: n as u64,
                })
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    pub(crate) fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// Writes raw descriptors at `table` (outside the mock's own table).
    fn put_table(mem: &GuestMemoryMmap, table: u64, descs: &[RawDescriptor]) {
        for (i, d) in descs.iter().enumerate() {
            mem.write_obj(*d, GuestAddress(table + 16 * i as u64))
                .unwrap();
        }
    }

    fn walk(
        mem: &GuestMemoryMmap,
        vq: &MockSplitQueue<GuestMemoryMmap>,
        head: u16,
        f: u64,
    ) -> Result<Chain, ChainError> {
        walk_chain(mem, vq.desc_table_addr(), 16, head, f)
    }

    #[test]
    fn direct_then_indirect_gives_four_buffers_in_order_ignoring_indirect_write_flag() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        put_table(
            &m,
            0x8000,
            &[
                desc(0x2000, 512, F_NEXT, 1),
                desc(0x3000, 512, F_WRITE | F_NEXT, 2),
                desc(0x4000, 1, F_WRITE, 0),
            ],
        );
        vq.desc_table()
            .store(0, desc(0x1000, 16, F_NEXT, 1))
            .unwrap();
        vq.desc_table()
            .store(1, desc(0x8000, 48, F_INDIRECT | F_WRITE, 0))
            .unwrap();
        let c = walk(&m, &vq, 0, F_INDIRECT_DESC).unwrap();
        let got: Vec<_> = c
            .bufs
            .iter()
            .map(|b| (b.addr.0, b.len, b.writable))
            .collect();
        assert_eq!(
            got,
            vec![
                (0x1000, 16, false),
                (0x2000, 512, false),
                (0x3000, 512, true),
                (0x4000, 1, true)
            ]
        );
    }

    #[test]
    fn indirect_misuse_is_refused() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let t = vq.desc_table();
        // Feature off.
        t.store(0, desc(0x8000, 16, F_INDIRECT, 0)).unwrap();
        put_table(&m, 0x8000, &[desc(0x2000, 8, 0, 0)]);
        assert_eq!(walk(&m, &vq, 0, 0), Err(ChainError::IndirectNotNegotiated));
        assert!(walk(&m, &vq, 0, F_INDIRECT_DESC).is_ok());
        // Nested.
        put_table(&m, 0x8000, &[desc(0x9000, 16, F_INDIRECT, 0)]);
        assert_eq!(
            walk(&m, &vq, 0, F_INDIRECT_DESC),
            Err(ChainError::NestedIndirect)
        );
        // Table not a multiple of 16 bytes, or empty.
        t.store(0, desc(0x8000, 24, F_INDIRECT, 0)).unwrap();
        assert_eq!(
            walk(&m, &vq, 0, F_INDIRECT_DESC),
            Err(ChainError::BadIndirectTable(24))
        );
        t.store(0, desc(0x8000, 0, F_INDIRECT, 0)).unwrap();
        assert_eq!(
            walk(&m, &vq, 0, F_INDIRECT_DESC),
            Err(ChainError::BadIndirectTable(0))
        );
        // INDIRECT with NEXT.
        t.store(0, desc(0x8000, 16, F_INDIRECT | F_NEXT, 1))
            .unwrap();
        assert_eq!(
            walk(&m, &vq, 0, F_INDIRECT_DESC),
            Err(ChainError::IndirectWithNext)
        );
        // next out of the indirect table's range.
        t.store(0, desc(0x8000, 32, F_INDIRECT, 0)).unwrap();
        put_table(
            &m,
            0x8000,
            &[desc(0x2000, 8, F_NEXT, 2), desc(0x2000, 8, 0, 0)],
        );
        assert_eq!(
            walk(&m, &vq, 0, F_INDIRECT_DESC),
            Err(ChainError::BadIndex { index: 2, len: 2 })
        );
        // Table itself outside memory.
        t.store(0, desc(0xffff_0000, 32, F_INDIRECT, 0)).unwrap();
        assert!(matches!(
            walk(&m, &vq, 0, F_INDIRECT_DESC),
            Err(ChainError::OutOfMemory { .. })
        ));
    }

    #[test]
    fn indirect_table_does_not_reset_the_length_limit() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // 15 direct buffers, then an indirect table of 2: 17 > 16.
        for i in 0..15 {
            vq.desc_table()
                .store(i, desc(0x2000, 8, F_NEXT, i + 1))
                .unwrap();
        }
        vq.desc_table()
            .store(15, desc(0x8000, 32, F_INDIRECT, 0))
            .unwrap();
        put_table(
            &m,
            0x8000,
            &[desc(0x2000, 8, F_NEXT, 1), desc(0x2000, 8, 0, 0)],
        );
        assert_eq!(
            walk(&m, &vq, 0, F_INDIRECT_DESC),
            Err(ChainError::TooLong(16))
        );
        // Exactly 16 buffers is fine.
        put_table(&m, 0x8000, &[desc(0x2000, 8, 0, 0)]);
        assert_eq!(walk(&m, &vq, 0, F_INDIRECT_DESC).unwrap().bufs.len(), 16);
    }

    #[test]
    fn loops_and_bad_indexes_are_errors_not_hangs() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.desc_table()
            .store(0, desc(0x2000, 8, F_NEXT, 1))
            .unwrap();
        vq.desc_table()
            .store(1, desc(0x2000, 8, F_NEXT, 0))
            .unwrap();
        assert_eq!(walk(&m, &vq, 0, 0), Err(ChainError::TooLong(16)));
        // A loop of zero-length buffers ends too.
        vq.desc_table()
            .store(0, desc(0x2000, 0, F_NEXT, 0))
            .unwrap();
        assert_eq!(walk(&m, &vq, 0, 0), Err(ChainError::TooLong(16)));
        vq.desc_table()
            .store(0, desc(0x2000, 8, F_NEXT, 16))
            .unwrap();
        assert_eq!(
            walk(&m, &vq, 0, 0),
            Err(ChainError::BadIndex { index: 16, len: 16 })
        );
        assert_eq!(
            walk(&m, &vq, 16, 0),
            Err(ChainError::BadIndex { index: 16, len: 16 })
        );
    }

    #[test]
    fn chain_of_exactly_queue_size_passes_and_one_more_fails() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        for i in 0..16 {
            let flags = if i == 15 { 0 } else { F_NEXT };
            vq.desc_table()
                .store(i, desc(0x2000, 8, flags, i + 1))
                .unwrap();
        }
        assert_eq!(walk(&m, &vq, 0, 0).unwrap().bufs.len(), 16);
        vq.desc_table()
            .store(15, desc(0x2000, 8, F_NEXT, 0))
            .unwrap();
        assert_eq!(walk(&m, &vq, 0, 0), Err(ChainError::TooLong(16)));
    }

    #[test]
    fn bounds_are_checked_across_regions_and_against_overflow() {
        // RAM [0, 640K) + [1M, 64M).
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0xa_0000),
            (GuestAddress(0x10_0000), 0x3f0_0000),
        ])
        .unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        let t = vq.desc_table();
        t.store(0, desc(0x9_f000, 0x1000, 0, 0)).unwrap();
        assert!(walk(&m, &vq, 0, 0).is_ok(), "ends exactly at 640K");
        t.store(0, desc(0x9_f000, 0x1001, 0, 0)).unwrap();
        assert!(matches!(
            walk(&m, &vq, 0, 0),
            Err(ChainError::OutOfMemory { .. })
        ));
        t.store(0, desc(0x9_f000, 0x7_0000, 0, 0)).unwrap();
        assert!(matches!(
            walk(&m, &vq, 0, 0),
            Err(ChainError::OutOfMemory { .. })
        ));
        t.store(0, desc(0xffff_ffff_ffff_f000, 0x2000, 0, 0))
            .unwrap();
        assert!(matches!(
            walk(&m, &vq, 0, 0),
            Err(ChainError::OutOfMemory { .. })
        ));
        // Descriptor table itself past the end of memory.
        assert!(matches!(
            walk_chain(&m, GuestAddress(0x3ff_fff8), 16, 0, 0),
            Err(ChainError::OutOfMemory { .. })
        ));
        assert!(!in_memory(&m, u64::MAX, 2));
    }

    #[test]
    fn sum_of_buffers_at_four_gib_is_refused() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        vq.desc_table()
            .store(0, desc(0x1000, 0xffff_ffff, F_NEXT, 1))
            .unwrap();
        vq.desc_table().store(1, desc(0x1000, 1, 0, 0)).unwrap();
        // The first buffer alone is already outside memory, the sum wraps.
        assert!(walk(&m, &vq, 0, 0).is_err());
    }

    fn ready_queue(vq: &MockSplitQueue<GuestMemoryMmap>) -> Queue {
        vq.create_queue::<Queue>().unwrap()
    }

    #[test]
    fn avail_index_jump_past_queue_size_is_an_error() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q = ready_queue(&vq);
        q.set_next_avail(10);
        vq.avail().idx().store(10 + 17);
        let mut qs = [q];
        let mut queues = Queues::new(&mut qs, &m, 0);
        assert_eq!(
            queues.pop(0),
            Err(ChainError::AvailIndex {
                idx: 27,
                next_avail: 10
            })
        );
    }

    #[test]
    fn avail_index_wrapping_past_65535_yields_each_chain() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let mut q = ready_queue(&vq);
        q.set_next_avail(65535);
        for (slot, head) in [(65535u16, 0u16), (0, 1), (1, 2)] {
            vq.desc_table().store(head, desc(0x2000, 8, 0, 0)).unwrap();
            vq.avail()
                .ring()
                .ref_at(usize::from(slot % 16))
                .unwrap()
                .store(head);
        }
        vq.avail().idx().store(2);
        let mut qs = [q];
        let mut queues = Queues::new(&mut qs, &m, 0);
        let mut heads = Vec::new();
        while let Some(c) = queues.pop(0).unwrap() {
            heads.push(c.head);
            queues.add_used(0, c.head, 0).unwrap();
        }
        assert_eq!(heads, vec![0, 1, 2]);
        assert_eq!(queues.used_mask(), 1);
    }

    #[test]
    fn cursor_reads_writes_and_splits_across_buffers() {
        let m = mem();
        let bufs = vec![
            Buf {
                addr: GuestAddress(0x1000),
                len: 3,
                writable: true,
            },
            Buf {
                addr: GuestAddress(0x2000),
                len: 5,
                writable: true,
            },
        ];
        let mut c = Cursor::new(bufs);
        assert_eq!(c.remaining(), 8);
        let mut tail = c.split_off(7);
        assert_eq!(tail.remaining(), 1);
        assert_eq!(c.write(&m, &[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap(), 7);
        assert_eq!(tail.write(&m, &[0xee]).unwrap(), 1);
        let mut back = [0u8; 6];
        m.read_slice(&mut back, GuestAddress(0x2000)).unwrap();
        assert_eq!(back, [4, 5, 6, 7, 0xee, 0]);
        let mut r = Cursor::new(vec![Buf {
            addr: GuestAddress(0x1000),
            len: 3,
            writable: false,
        }]);
        let mut out = [0u8; 8];
        assert_eq!(r.read(&m, &mut out).unwrap(), 3);
        assert_eq!(&out[..3], &[1, 2, 3]);
    }
}
