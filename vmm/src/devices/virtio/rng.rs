//! virtio-rng: one queue whose writable buffers are filled from the host's
//! `getrandom`, so guests never wait for entropy.
//!
//! Threat model: the driver picks buffer sizes; each request is filled up
//! to [`MAX_REQUEST`] bytes, in chunks from a fixed buffer.
//!
//! Limitations:
//! - No rate limit: a guest may drain host entropy as fast as it asks
//!   (getrandom does not block once the host pool is initialised).

use super::queue::Cursor;
use super::{ChainError, DeviceState, Queues, VirtioDevice, TYPE_RNG};

/// Most bytes returned for one request.
pub const MAX_REQUEST: u64 = 64 * 1024;
const CHUNK: usize = 4096;

/// The entropy device.
#[derive(Debug, Default)]
pub struct Rng {
    /// Bytes handed to the guest.
    pub bytes_served: u64,
}

impl Rng {
    /// A new entropy device.
    pub fn new() -> Self {
        Self::default()
    }

    fn fill(&mut self, queues: &mut Queues<'_>, mut out: Cursor) -> Result<u32, ChainError> {
        let mut chunk = [0u8; CHUNK];
        let mut left = out.remaining().min(MAX_REQUEST);
        let mut written = 0u32;
        while left > 0 {
            let n = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            if getrandom::getrandom(&mut chunk[..n]).is_err() {
                tracing::warn!("getrandom failed; request answered short");
                break;
            }
            let done = out.write(queues.mem(), &chunk[..n])?;
            // done <= CHUNK, and the total stays <= MAX_REQUEST.
            written += u32::try_from(done).unwrap_or(0);
            left -= done as u64;
            if done < n {
                break;
            }
        }
        self.bytes_served += u64::from(written);
        Ok(written)
    }
}

impl VirtioDevice for Rng {
    fn save(&self) -> DeviceState {
        DeviceState::Rng
    }

    fn device_type(&self) -> u16 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256]
    }

    fn features(&self) -> u64 {
        0
    }

    fn pci_class(&self) -> [u8; 3] {
        [0xff, 0, 0]
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(&mut self, queues: &mut Queues<'_>, index: usize) -> Result<(), ChainError> {
        if index != 0 {
            return Ok(());
        }
        queues.drain(0, |qs, chain| {
            let n = self.fill(qs, Cursor::new(chain.writable()))?;
            qs.add_used(0, chain.head, n)
        })
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

    #[test]
    fn fills_writable_buffers_and_caps_large_requests() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        vq.desc_table().store(0, desc(0x1_0000, 64, 2, 0)).unwrap();
        vq.desc_table()
            .store(1, desc(0x2_0000, 0x10_0000, 2, 0))
            .unwrap();
        vq.desc_table().store(2, desc(0x1_1000, 8, 0, 0)).unwrap();
        for (i, head) in [0u16, 1, 2].into_iter().enumerate() {
            vq.avail().ring().ref_at(i).unwrap().store(head);
        }
        vq.avail().idx().store(3);
        let mut qs = [vq.create_queue::<Queue>().unwrap()];
        let mut rng = Rng::new();
        let mut queues = Queues::new(&mut qs, &m, 0);
        rng.process_queue(&mut queues, 0).unwrap();
        assert_eq!(vq.used().idx().load(), 3);
        let lens: Vec<u32> = (0..3)
            .map(|i| vq.used().ring().ref_at(i).unwrap().load().len())
            .collect();
        assert_eq!(lens, vec![64, 64 * 1024, 0]);
        let mut got = [0u8; 64];
        m.read_slice(&mut got, GuestAddress(0x1_0000)).unwrap();
        assert!(got.iter().any(|&b| b != 0));
        assert_eq!(rng.bytes_served, 64 + MAX_REQUEST);
    }
}
