//! The smoltcp device of the endpoint core: two bounded frame queues.

use std::collections::VecDeque;

use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::TX_QUEUE_CAP;

/// smoltcp device made of two bounded frame queues.
#[derive(Debug)]
pub(super) struct QueueDevice {
    pub(super) rx: VecDeque<Vec<u8>>,
    pub(super) tx: VecDeque<Vec<u8>>,
    pub(super) pool: Vec<Vec<u8>>,
    pub(super) max_frame_len: usize,
    pub(super) transmitted: u64,
}

#[derive(Debug)]
pub(super) struct RxFrame(Vec<u8>);

#[derive(Debug)]
pub(super) struct TxSlot<'a> {
    tx: &'a mut VecDeque<Vec<u8>>,
    pool: &'a mut Vec<Vec<u8>>,
    transmitted: &'a mut u64,
}

impl phy::RxToken for RxFrame {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxSlot<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buffer = self.pool.pop().unwrap_or_default();
        buffer.resize(len, 0);
        let result = f(&mut buffer);
        self.tx.push_back(buffer);
        *self.transmitted += 1;
        result
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxFrame;
    type TxToken<'a> = TxSlot<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxFrame, TxSlot<'_>)> {
        if self.tx.len() >= TX_QUEUE_CAP {
            return None;
        }
        let frame = self.rx.pop_front()?;
        Some((
            RxFrame(frame),
            TxSlot {
                tx: &mut self.tx,
                pool: &mut self.pool,
                transmitted: &mut self.transmitted,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxSlot<'_>> {
        (self.tx.len() < TX_QUEUE_CAP).then_some(TxSlot {
            tx: &mut self.tx,
            pool: &mut self.pool,
            transmitted: &mut self.transmitted,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // smoltcp's Ethernet MTU counts the header: MTU 1500 is 1514 here,
        // giving IP packets of 1500 bytes and a TCP MSS of 1460.
        caps.max_transmission_unit = self.max_frame_len;
        caps.checksum = ChecksumCapabilities::default();
        caps
    }
}
