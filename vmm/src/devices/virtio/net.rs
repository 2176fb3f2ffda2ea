//! virtio-net: one receive and one transmit queue, a MAC per NIC, frames
//! exchanged with a [`NetBackend`] (a switch port, or [`pair`] for tests
//! and for two NICs wired together).
//!
//! No offloads are offered, so every frame carries the 12-byte
//! `virtio_net_hdr_v1` with nothing but `num_buffers = 1` on receive, and
//! the transmit header is ignored.
//!
//! Threat model: transmit chains of any length; frames longer than
//! [`MAX_FRAME`] (or shorter than an Ethernet header) are dropped and
//! counted. Receive buffers too small for a frame drop the frame, not the
//! chain. The backend's queue is bounded: a guest that stops reading loses
//! frames, never host memory.
//!
//! Limitations:
//! - No control queue, multiqueue, mergeable buffers, checksum or
//!   segmentation offload; link always up.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::queue::Cursor;
use super::{ChainError, DeviceState, Queues, VirtioDevice, TYPE_NET};

/// Bytes of the virtio-net header (VERSION_1 layout).
pub const HDR_LEN: usize = 12;
/// Largest frame accepted (Ethernet header + 1500 MTU + VLAN tag).
pub const MAX_FRAME: usize = 1518;
/// Frames a pair end holds before dropping.
pub const PAIR_QUEUE: usize = 256;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const MIN_FRAME: usize = 14;

const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
/// MTU announced to the guest.
pub const MTU: u16 = 1500;
const F_STATUS: u64 = 1 << 16;
const STATUS_LINK_UP: u16 = 1;

/// Where a NIC's frames go and come from.
pub trait NetBackend: Send + std::fmt::Debug {
    /// Sends one frame; a full backend drops it.
    fn send(&mut self, frame: &[u8]);
    /// Length of the next frame waiting for the guest, if any.
    fn peek_len(&self) -> Option<usize>;
    /// Takes the next frame into `buf` (at least [`NetBackend::peek_len`]
    /// bytes long); returns its length.
    fn recv(&mut self, buf: &mut [u8]) -> Option<usize>;
    /// Readable when frames may be waiting (the device's worker polls it).
    fn rx_event(&self) -> Option<RawFd>;
    /// Clears [`NetBackend::rx_event`] before the waiting frames are taken.
    fn ack_rx_event(&mut self);
    /// TCP connections the host side has with the guest now (a snapshot
    /// keeps them so a revive can have the guest drop them).
    fn host_connections(&self) -> Vec<netswitch::endpoint::TcpPeer> {
        Vec::new()
    }
}

#[derive(Debug, Default)]
struct Mailbox {
    frames: VecDeque<Vec<u8>>,
    dropped: u64,
}

/// One end of a direct cable between two NICs.
#[derive(Debug)]
pub struct PairEnd {
    inbox: Arc<Mutex<Mailbox>>,
    outbox: Arc<Mutex<Mailbox>>,
    /// Signalled when this end's inbox gets a frame.
    wake: Arc<EventFd>,
    /// The other end's `wake`.
    peer_wake: Arc<EventFd>,
}

/// Two backends wired to each other: what one sends, the other receives.
pub fn pair() -> std::io::Result<(PairEnd, PairEnd)> {
    let a_in = Arc::new(Mutex::new(Mailbox::default()));
    let b_in = Arc::new(Mutex::new(Mailbox::default()));
    let a_wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let b_wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let a = PairEnd {
        inbox: a_in.clone(),
        outbox: b_in.clone(),
        wake: a_wake.clone(),
        peer_wake: b_wake.clone(),
    };
    let b = PairEnd {
        inbox: b_in,
        outbox: a_in,
        wake: b_wake,
        peer_wake: a_wake,
    };
    Ok((a, b))
}

impl PairEnd {
    /// Frames the peer dropped because this end's inbox was full.
    pub fn dropped(&self) -> u64 {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }
}

impl NetBackend for PairEnd {
    fn send(&mut self, frame: &[u8]) {
        let mut out = self.outbox.lock().unwrap_or_else(|e| e.into_inner());
        if out.frames.len() >= PAIR_QUEUE {
            out.dropped += 1;
            return;
        }
        out.frames.push_back(frame.to_vec());
        drop(out);
        let _ = self.peer_wake.write(1);
    }

    fn peek_len(&self) -> Option<usize> {
        let inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        inbox.frames.front().map(Vec::len)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Option<usize> {
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        let frame = inbox.frames.pop_front()?;
        let n = frame.len().min(buf.len());
        buf[..n].copy_from_slice(&frame[..n]);
        Some(n)
    }

    fn rx_event(&self) -> Option<RawFd> {
        Some(self.wake.as_raw_fd())
    }

    fn ack_rx_event(&mut self) {
        // A frame arriving after this signals again.
        let _ = self.wake.read();
    }
}

/// What a NIC did, for tests and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames sent by the guest.
    pub tx_frames: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Guest frames dropped (too long or too short).
    pub tx_dropped: u64,
    /// Frames for the guest dropped (buffer too small).
    pub rx_dropped: u64,
}

/// A virtio network card.
#[derive(Debug)]
pub struct Net {
    mac: [u8; 6],
    backend: Box<dyn NetBackend>,
    buffer: Vec<u8>,
    counters: NetCounters,
}

impl Net {
    /// A NIC with address `mac` on `backend`.
    pub fn new(mac: [u8; 6], backend: Box<dyn NetBackend>) -> Self {
        Self {
            mac,
            backend,
            buffer: vec![0; HDR_LEN + MAX_FRAME],
            counters: NetCounters::default(),
        }
    }

    /// What the NIC did so far.
    pub fn counters(&self) -> &NetCounters {
        &self.counters
    }

    fn transmit(&mut self, q: &mut Queues<'_>) -> Result<(), ChainError> {
        q.drain(TX, |q, chain| {
            let mut r = Cursor::new(chain.readable());
            let total = r.remaining();
            let frame_len = total.saturating_sub(HDR_LEN as u64);
            if total < (HDR_LEN + MIN_FRAME) as u64 || frame_len > MAX_FRAME as u64 {
                self.counters.tx_dropped += 1;
                tracing::trace!("virtio-net: dropped a {total}-byte transmit chain");
            } else {
                // total <= HDR_LEN + MAX_FRAME = buffer length.
                let len = usize::try_from(total).unwrap_or(0).min(self.buffer.len());
                let n = r.read(q.mem(), &mut self.buffer[..len])?;
                self.backend.send(&self.buffer[HDR_LEN..n]);
                self.counters.tx_frames += 1;
            }
            q.add_used(TX, chain.head, 0)
        })
    }

    fn receive(&mut self, q: &mut Queues<'_>) -> Result<(), ChainError> {
        loop {
            if self.backend.peek_len().is_none() {
                return Ok(());
            }
            let Some(chain) = q.pop(RX)? else {
                // No buffer: the frame waits (the backend's queue is bounded).
                // Ask the driver to tell us when it adds buffers.
                if q.enable_notification(RX)? {
                    continue;
                }
                return Ok(());
            };
            let mut w = Cursor::new(chain.writable());
            let Some(len) = self.backend.recv(&mut self.buffer[HDR_LEN..]) else {
                q.unpop(RX)?;
                return Ok(());
            };
            let needed = (HDR_LEN + len) as u64;
            if w.remaining() < needed {
                self.counters.rx_dropped += 1;
                q.add_used(RX, chain.head, 0)?;
                continue;
            }
            self.buffer[..HDR_LEN].fill(0);
            self.buffer[10] = 1; // num_buffers
            let n = w.write(q.mem(), &self.buffer[..HDR_LEN + len])?;
            self.counters.rx_frames += 1;
            // n <= HDR_LEN + MAX_FRAME.
            q.add_used(RX, chain.head, u32::try_from(n).unwrap_or(0))?;
        }
    }
}

impl VirtioDevice for Net {
    fn save(&self) -> DeviceState {
        DeviceState::Net {
            mac: self.mac,
            connections: self
                .backend
                .host_connections()
                .into_iter()
                .map(Into::into)
                .collect(),
        }
    }

    fn device_type(&self) -> u16 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_MTU | F_MAC | F_STATUS
    }

    fn pci_class(&self) -> [u8; 3] {
        [0x02, 0x00, 0x00]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; 12];
        cfg[..6].copy_from_slice(&self.mac);
        cfg[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        cfg[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        cfg[10..12].copy_from_slice(&MTU.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| cfg.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn process_queue(&mut self, queues: &mut Queues<'_>, index: usize) -> Result<(), ChainError> {
        match index {
            TX => self.transmit(queues),
            RX => self.receive(queues),
            _ => Ok(()),
        }
    }

    fn backend_event(&self) -> Option<RawFd> {
        self.backend.rx_event()
    }

    fn ack_backend(&mut self) {
        self.backend.ack_rx_event();
    }

    fn process_backend(&mut self, queues: &mut Queues<'_>) -> Result<(), ChainError> {
        // Frames left for lack of buffers are taken when the driver posts
        // buffers and notifies the receive queue.
        self.backend.ack_rx_event();
        self.receive(queues)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::queue::tests::desc;
    use crate::devices::virtio::GuestMemoryMmap;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress};

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const HDR32: u32 = 12;
    const MAX_FRAME32: u32 = 1518;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn frame(len: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![fill; len];
        f[..6].copy_from_slice(&[0xff; 6]);
        f
    }

    /// Queues for one NIC: rx at 0x10000, tx at 0x20000.
    struct Rings<'a> {
        rx: MockSplitQueue<'a, GuestMemoryMmap>,
        tx: MockSplitQueue<'a, GuestMemoryMmap>,
        qs: Vec<Queue>,
    }

    fn rings(m: &GuestMemoryMmap) -> Rings<'_> {
        let rx = MockSplitQueue::create(m, GuestAddress(0x1_0000), 16);
        let tx = MockSplitQueue::create(m, GuestAddress(0x2_0000), 16);
        let qs = vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()];
        Rings { rx, tx, qs }
    }

    fn add(q: &MockSplitQueue<GuestMemoryMmap>, slot: u16, descs: &[(u64, u32, u16)]) {
        let base = slot * 4;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let i = u16::try_from(i).unwrap();
            let f = if usize::from(i) + 1 == descs.len() {
                flags
            } else {
                flags | F_NEXT
            };
            q.desc_table()
                .store(base + i, desc(addr, len, f, base + i + 1))
                .unwrap();
        }
        let idx = q.avail().idx().load();
        q.avail()
            .ring()
            .ref_at(usize::from(idx % 16))
            .unwrap()
            .store(base);
        q.avail().idx().store(idx + 1);
    }

    #[test]
    fn frames_cross_a_pair_of_nics_with_header_and_counters() {
        let m = mem();
        let (a, b) = pair().unwrap();
        let mut nic_a = Net::new([2, 0, 0, 0, 0, 1], Box::new(a));
        let mut nic_b = Net::new([2, 0, 0, 0, 0, 2], Box::new(b));
        let mut ra = rings(&m);
        let m2 = mem();
        let mut rb = rings(&m2);
        // A transmits: header + 60-byte frame split over two buffers.
        let f = frame(60, 0x5a);
        m.write_slice(&[0u8; HDR_LEN], GuestAddress(0x10_0000))
            .unwrap();
        m.write_slice(&f, GuestAddress(0x11_0000)).unwrap();
        add(&ra.tx, 0, &[(0x10_0000, HDR32, 0), (0x11_0000, 60, 0)]);
        nic_a
            .process_queue(&mut Queues::new(&mut ra.qs, &m, 0), TX)
            .unwrap();
        assert_eq!(ra.tx.used().idx().load(), 1);
        // B has a receive buffer posted; the backend event delivers.
        add(&rb.rx, 0, &[(0x30_0000, 2048, F_WRITE)]);
        nic_b
            .process_backend(&mut Queues::new(&mut rb.qs, &m2, 0))
            .unwrap();
        assert_eq!(rb.rx.used().idx().load(), 1);
        let used = rb.rx.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len(), HDR32 + 60);
        let mut got = vec![0u8; HDR_LEN + 60];
        m2.read_slice(&mut got, GuestAddress(0x30_0000)).unwrap();
        assert_eq!(got[10], 1, "num_buffers");
        assert_eq!(&got[HDR_LEN..], &f[..]);
        assert_eq!(nic_a.counters().tx_frames, 1);
        assert_eq!(nic_b.counters().rx_frames, 1);
    }

    #[test]
    fn frame_waits_in_backend_until_the_guest_posts_a_buffer() {
        let m = mem();
        let (mut a, b) = pair().unwrap();
        let mut nic = Net::new([2, 0, 0, 0, 0, 2], Box::new(b));
        let mut r = rings(&m);
        a.send(&frame(64, 1));
        nic.process_backend(&mut Queues::new(&mut r.qs, &m, 0))
            .unwrap();
        assert_eq!(r.rx.used().idx().load(), 0);
        add(&r.rx, 0, &[(0x30_0000, 2048, F_WRITE)]);
        nic.process_queue(&mut Queues::new(&mut r.qs, &m, 0), RX)
            .unwrap();
        assert_eq!(r.rx.used().idx().load(), 1);
    }

    #[test]
    fn oversized_and_runt_transmits_are_dropped_and_counted() {
        let m = mem();
        let (a, b) = pair().unwrap();
        let mut nic = Net::new([2, 0, 0, 0, 0, 1], Box::new(a));
        let mut r = rings(&m);
        add(&r.tx, 0, &[(0x10_0000, HDR32 + MAX_FRAME32 + 1, 0)]);
        add(&r.tx, 1, &[(0x10_0000, HDR32 + 5, 0)]);
        add(&r.tx, 2, &[(0x10_0000, 0, 0)]);
        nic.process_queue(&mut Queues::new(&mut r.qs, &m, 0), TX)
            .unwrap();
        assert_eq!(r.tx.used().idx().load(), 3);
        assert_eq!(nic.counters().tx_dropped, 3);
        assert_eq!(b.peek_len(), None);
    }

    #[test]
    fn receive_buffer_too_small_drops_the_frame_not_the_chain() {
        let m = mem();
        let (mut a, b) = pair().unwrap();
        let mut nic = Net::new([2, 0, 0, 0, 0, 2], Box::new(b));
        let mut r = rings(&m);
        a.send(&frame(1000, 1));
        a.send(&frame(100, 2));
        add(&r.rx, 0, &[(0x30_0000, 200, F_WRITE)]);
        add(&r.rx, 1, &[(0x31_0000, 200, F_WRITE)]);
        nic.process_backend(&mut Queues::new(&mut r.qs, &m, 0))
            .unwrap();
        assert_eq!(r.rx.used().idx().load(), 2);
        assert_eq!(r.rx.used().ring().ref_at(0).unwrap().load().len(), 0);
        assert_eq!(r.rx.used().ring().ref_at(1).unwrap().load().len(), 112);
        assert_eq!(nic.counters().rx_dropped, 1);
    }

    #[test]
    fn pair_queue_is_bounded_and_counts_drops() {
        let (mut a, b) = pair().unwrap();
        for _ in 0..PAIR_QUEUE + 5 {
            a.send(&frame(60, 0));
        }
        assert_eq!(b.dropped(), 5);
    }

    #[test]
    fn config_space_holds_the_mac_and_link_up() {
        let (a, _b) = pair().unwrap();
        let nic = Net::new([2, 1, 2, 3, 4, 5], Box::new(a));
        let mut cfg = [0u8; 8];
        nic.read_config(0, &mut cfg);
        assert_eq!(cfg, [2, 1, 2, 3, 4, 5, 1, 0]);
        assert_eq!(nic.features() & F_MAC, F_MAC);
    }
}
