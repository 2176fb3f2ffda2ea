//! virtio-blk over a [`Disk`]: read, write, flush and the serial (GET_ID).
//!
//! A request is a 16-byte header (type, reserved, sector) in readable
//! buffers, data, and a status byte: the last byte of the last writable
//! buffer.
//!
//! Threat model: the header, sector and lengths are the driver's. A
//! request out of the disk's range, of a length not a multiple of 512, or
//! with a short header fails with IOERR; unknown types get UNSUPP; a chain
//! without a writable byte for the status is returned unanswered (used
//! length 0). Data moves through a fixed 1 MiB buffer, whatever the
//! request's size.
//!
//! Limitations:
//! - One queue; requests are served one after the other, synchronously.
//! - No DISCARD or WRITE_ZEROES (answered UNSUPP).
//! - A read-only disk does not announce VIRTIO_BLK_F_RO: its writes reach
//!   the device and fail with IOERR, which the guest sees as I/O errors.

pub mod disk;

pub use disk::{CowDisk, Disk, DiskError, DiskMode, DiskSpec, Overlay, RawDisk};

use vm_memory::{Bytes, GuestAddress};

use super::queue::Cursor;
use super::{Chain, ChainError, DeviceState, Queues, VirtioDevice, TYPE_BLOCK};

const SECTOR: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
const CHUNK: usize = 1 << 20;
/// Length of the serial returned by GET_ID.
pub const ID_LEN: usize = 20;

const F_SEG_MAX: u64 = 1 << 2;
const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

/// Request status: done.
pub const S_OK: u8 = 0;
/// Request status: failed.
pub const S_IOERR: u8 = 1;
/// Request status: not supported.
pub const S_UNSUPP: u8 = 2;

/// What the device did, for tests and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BlockCounters {
    /// Bytes read from the disk.
    pub read_bytes: u64,
    /// Bytes written to the disk.
    pub write_bytes: u64,
    /// FLUSH requests served.
    pub flushes: u64,
    /// Requests answered IOERR or UNSUPP.
    pub failed: u64,
}

/// A virtio block device.
#[derive(Debug)]
pub struct Block {
    disk: Box<dyn Disk>,
    serial: [u8; ID_LEN],
    buffer: Vec<u8>,
    counters: BlockCounters,
}

impl Block {
    /// A device for `disk` whose GET_ID answers `serial` (cut to 20 bytes).
    pub fn new(disk: Box<dyn Disk>, serial: &str) -> Self {
        let mut id = [0u8; ID_LEN];
        let n = serial.len().min(ID_LEN);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        Self {
            disk,
            serial: id,
            buffer: Vec::new(),
            counters: BlockCounters::default(),
        }
    }

    /// A device for `disk` answering GET_ID with a saved `serial`.
    pub fn with_serial(disk: Box<dyn Disk>, serial: [u8; ID_LEN]) -> Self {
        Self {
            disk,
            serial,
            buffer: Vec::new(),
            counters: BlockCounters::default(),
        }
    }

    /// What the device did so far.
    pub fn counters(&self) -> &BlockCounters {
        &self.counters
    }

    fn capacity_sectors(&self) -> u64 {
        self.disk.size() / SECTOR
    }

    /// The byte offset for `len` bytes at `sector`, if inside the disk.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR)?;
        let end = offset.checked_add(len)?;
        (len % SECTOR == 0 && end <= self.capacity_sectors() * SECTOR).then_some(offset)
    }

    fn read(&mut self, q: &Queues<'_>, sector: u64, out: &mut Cursor) -> Result<u8, ChainError> {
        let len = out.remaining();
        let Some(mut offset) = self.range(sector, len) else {
            return Ok(S_IOERR);
        };
        self.buffer.resize(CHUNK, 0);
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            if let Err(e) = self.disk.read_at(&mut self.buffer[..n], offset) {
                tracing::debug!("virtio-blk read at {offset}: {e}");
                return Ok(S_IOERR);
            }
            out.write(q.mem(), &self.buffer[..n])?;
            self.counters.read_bytes += n as u64;
            offset += n as u64;
            left -= n as u64;
        }
        Ok(S_OK)
    }

    fn write(&mut self, q: &Queues<'_>, sector: u64, data: &mut Cursor) -> Result<u8, ChainError> {
        let len = data.remaining();
        let Some(mut offset) = self.range(sector, len) else {
            return Ok(S_IOERR);
        };
        if self.disk.read_only() {
            return Ok(S_IOERR);
        }
        self.buffer.resize(CHUNK, 0);
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            data.read(q.mem(), &mut self.buffer[..n])?;
            if let Err(e) = self.disk.write_at(&self.buffer[..n], offset) {
                tracing::debug!("virtio-blk write at {offset}: {e}");
                return Ok(S_IOERR);
            }
            self.counters.write_bytes += n as u64;
            offset += n as u64;
            left -= n as u64;
        }
        Ok(S_OK)
    }

    /// Serves one request; returns (status, bytes written to the guest
    /// before the status byte).
    fn serve(
        &mut self,
        q: &Queues<'_>,
        r: &mut Cursor,
        w: &mut Cursor,
    ) -> Result<(u8, u64), ChainError> {
        let mut header = [0u8; 16];
        if r.read(q.mem(), &mut header)? < header.len() {
            return Ok((S_IOERR, 0));
        }
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(s);
        Ok(match kind {
            T_IN => {
                let len = w.remaining();
                let status = self.read(q, sector, w)?;
                (status, if status == S_OK { len } else { 0 })
            }
            T_OUT => (self.write(q, sector, r)?, 0),
            T_FLUSH => match self.disk.flush() {
                Ok(()) => {
                    self.counters.flushes += 1;
                    (S_OK, 0)
                }
                Err(e) => {
                    tracing::debug!("virtio-blk flush: {e}");
                    (S_IOERR, 0)
                }
            },
            T_GET_ID => {
                let n = w.write(q.mem(), &self.serial)?;
                (S_OK, n as u64)
            }
            _ => (S_UNSUPP, 0),
        })
    }

    fn handle(&mut self, q: &mut Queues<'_>, chain: Chain) -> Result<(), ChainError> {
        let writable = chain.writable();
        let Some(last) = writable.last().copied() else {
            tracing::debug!("virtio-blk request without a status byte");
            return q.add_used(0, chain.head, 0);
        };
        let status_addr = GuestAddress(last.addr.0 + u64::from(last.len) - 1);
        let mut w = Cursor::new(writable);
        let _status = w.split_off(w.remaining() - 1);
        let mut r = Cursor::new(chain.readable());
        let (status, written) = self.serve(q, &mut r, &mut w)?;
        if status != S_OK {
            self.counters.failed += 1;
        }
        q.mem()
            .write_slice(&[status], status_addr)
            .map_err(|_| ChainError::OutOfMemory {
                addr: status_addr.0,
                len: 1,
            })?;
        // The chain's total length is below 2^32 (checked when walked).
        let used = u32::try_from(written + 1).unwrap_or(u32::MAX);
        q.add_used(0, chain.head, used)
    }
}

impl VirtioDevice for Block {
    fn save(&self) -> DeviceState {
        DeviceState::Block {
            serial: self.serial,
        }
    }

    fn device_type(&self) -> u16 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_SEG_MAX | F_FLUSH
    }

    fn pci_class(&self) -> [u8; 3] {
        [0x01, 0x80, 0x00]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; 36];
        cfg[0..8].copy_from_slice(&self.capacity_sectors().to_le_bytes());
        cfg[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
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
        if index != 0 {
            return Ok(());
        }
        queues.drain(0, |q, chain| self.handle(q, chain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::queue::tests::desc;
    use crate::devices::virtio::GuestMemoryMmap;
    use std::path::PathBuf;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x3_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn image(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-blk-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(HDR)).unwrap();
        m.write_slice(&[0xee], GuestAddress(STATUS)).unwrap();
    }

    /// Runs one request made of `descs` (chained in order) and returns the
    /// status byte and used length.
    fn run(dev: &mut Block, m: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> (u8, u32) {
        let vq = MockSplitQueue::new(m, 16);
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let last = i + 1 == descs.len();
            let f = if last { flags } else { flags | F_NEXT };
            vq.desc_table()
                .store(
                    i.try_into().unwrap(),
                    desc(addr, len, f, (i + 1).try_into().unwrap()),
                )
                .unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let mut qs = [vq.create_queue::<Queue>().unwrap()];
        let mut queues = Queues::new(&mut qs, m, 0);
        dev.process_queue(&mut queues, 0).unwrap();
        assert_eq!(vq.used().idx().load(), 1);
        let used = vq.used().ring().ref_at(0).unwrap().load().len();
        let mut s = [0u8];
        m.read_slice(&mut s, GuestAddress(STATUS)).unwrap();
        (s[0], used)
    }

    fn rw(path: &std::path::Path, ro: bool) -> Block {
        Block::new(Box::new(RawDisk::open(path, ro).unwrap()), "disk-serial-1")
    }

    #[test]
    fn read_returns_file_bytes_and_write_lands_in_the_file() {
        let m = mem();
        let mut bytes = vec![0u8; 8192];
        bytes[512..1024].fill(0x42);
        let p = image("rw", &bytes);
        let mut dev = rw(&p, false);
        header(&m, T_IN, 1);
        let got = run(
            &mut dev,
            &m,
            &[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
        );
        assert_eq!(got, (S_OK, 513));
        let mut data = [0u8; 512];
        m.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        assert_eq!(data, [0x42; 512]);
        m.write_slice(&[0x99; 1024], GuestAddress(DATA)).unwrap();
        header(&m, T_OUT, 4);
        let got = run(
            &mut dev,
            &m,
            &[(HDR, 16, 0), (DATA, 1024, 0), (STATUS, 1, F_WRITE)],
        );
        assert_eq!(got, (S_OK, 1));
        let file = std::fs::read(&p).unwrap();
        assert!(file[2048..3072].iter().all(|&b| b == 0x99));
        assert_eq!(dev.counters().write_bytes, 1024);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn read_only_write_fails_with_ioerr_and_file_is_unchanged() {
        let m = mem();
        let p = image("ro", &[7u8; 4096]);
        let mut dev = rw(&p, true);
        m.write_slice(&[1; 512], GuestAddress(DATA)).unwrap();
        header(&m, T_OUT, 0);
        let got = run(
            &mut dev,
            &m,
            &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)],
        );
        assert_eq!(got, (S_IOERR, 1));
        assert_eq!(std::fs::read(&p).unwrap(), vec![7u8; 4096]);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn requests_past_the_end_or_unaligned_fail_with_ioerr() {
        let m = mem();
        let p = image("bounds", &[0u8; 4096]);
        let mut dev = rw(&p, false);
        header(&m, T_IN, 7);
        let got = run(
            &mut dev,
            &m,
            &[(HDR, 16, 0), (DATA, 1024, F_WRITE), (STATUS, 1, F_WRITE)],
        );
        assert_eq!(got, (S_IOERR, 1));
        header(&m, T_IN, u64::MAX / 256);
        let got = run(
            &mut dev,
            &m,
            &[(HDR, 16, 0), (DATA, 512, F_WRITE), (STATUS, 1, F_WRITE)],
        );
        assert_eq!(got.0, S_IOERR);
        header(&m, T_OUT, 0);
        let got = run(
            &mut dev,
            &m,
            &[(HDR, 16, 0), (DATA, 100, 0), (STATUS, 1, F_WRITE)],
        );
        assert_eq!(got.0, S_IOERR);
        assert_eq!(std::fs::read(&p).unwrap(), vec![0u8; 4096]);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn get_id_flush_and_unknown_types() {
        let m = mem();
        let p = image("id", &[0u8; 4096]);
        let mut dev = rw(&p, false);
        header(&m, T_GET_ID, 0);
        let got = run(
            &mut dev,
            &m,
            &[(HDR, 16, 0), (DATA, 20, F_WRITE), (STATUS, 1, F_WRITE)],
        );
        assert_eq!(got, (S_OK, 21));
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id[..13], b"disk-serial-1");
        assert_eq!(&id[13..], &[0; 7]);
        header(&m, T_FLUSH, 0);
        assert_eq!(
            run(&mut dev, &m, &[(HDR, 16, 0), (STATUS, 1, F_WRITE)]).0,
            S_OK
        );
        assert_eq!(dev.counters().flushes, 1);
        header(&m, 11, 0);
        assert_eq!(
            run(&mut dev, &m, &[(HDR, 16, 0), (STATUS, 1, F_WRITE)]).0,
            S_UNSUPP
        );
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn short_header_zero_length_and_missing_status_do_no_harm() {
        let m = mem();
        let p = image("short", &[5u8; 4096]);
        let mut dev = rw(&p, false);
        header(&m, T_IN, 0);
        // 8-byte header.
        assert_eq!(
            run(&mut dev, &m, &[(HDR, 8, 0), (STATUS, 1, F_WRITE)]),
            (S_IOERR, 1)
        );
        // Zero-length data descriptor: a read of nothing succeeds.
        let got = run(
            &mut dev,
            &m,
            &[(HDR, 16, 0), (DATA, 0, F_WRITE), (STATUS, 1, F_WRITE)],
        );
        assert_eq!(got, (S_OK, 1));
        // No writable byte at all: returned with length 0, nothing written.
        header(&m, T_IN, 0);
        let got = run(&mut dev, &m, &[(HDR, 16, 0), (DATA, 512, 0)]);
        assert_eq!(got, (0xee, 0));
        assert_eq!(std::fs::read(&p).unwrap(), vec![5u8; 4096]);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn cow_disk_takes_writes_and_keeps_the_base_bytes() {
        let m = mem();
        let p = image("cowbase", &[0xaa; 65536]);
        let disk = CowDisk::open(&p, &Overlay::Temporary, 0).unwrap();
        let mut dev = Block::new(Box::new(disk), "cow");
        m.write_slice(&[0x10; 512], GuestAddress(DATA)).unwrap();
        header(&m, T_OUT, 3);
        assert_eq!(
            run(
                &mut dev,
                &m,
                &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, F_WRITE)]
            )
            .0,
            S_OK
        );
        header(&m, T_IN, 2);
        let got = run(
            &mut dev,
            &m,
            &[(HDR, 16, 0), (DATA, 1024, F_WRITE), (STATUS, 1, F_WRITE)],
        );
        assert_eq!(got, (S_OK, 1025));
        let mut data = [0u8; 1024];
        m.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        assert!(data[..512].iter().all(|&b| b == 0xaa));
        assert!(data[512..].iter().all(|&b| b == 0x10));
        assert_eq!(std::fs::read(&p).unwrap(), vec![0xaa; 65536]);
        let _ = std::fs::remove_file(&p);
    }

    #[test]
    fn config_space_reports_capacity_in_sectors() {
        let p = image("cfg", &[0u8; 10 * 512 + 100]);
        let dev = rw(&p, false);
        let mut b = [0u8; 8];
        dev.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), 10);
        let mut far = [9u8; 4];
        dev.read_config(u64::MAX, &mut far);
        assert_eq!(far, [0; 4]);
        let _ = std::fs::remove_file(&p);
    }
}
