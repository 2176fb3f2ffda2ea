//! A thread per virtio device that waits on its queue eventfds (signalled
//! by KVM ioeventfds or by notify writes) and its backend's event, and runs
//! the device for each.
//!
//! Limitations:
//! - One thread per device; the transport's lock is held while a queue is
//!   processed, so the guest's register accesses to that device wait.

use std::io;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{IoEventRegistrar, VirtioPci};

const STOP: u64 = u64::MAX;
const BACKEND: u64 = u64::MAX - 1;

/// A running device worker; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a worker for `device`, with `ioevents` (when given) so KVM
    /// signals the queue eventfds without a VM exit.
    pub fn spawn(
        device: Arc<Mutex<VirtioPci>>,
        ioevents: Option<Box<dyn IoEventRegistrar>>,
        name: &str,
    ) -> io::Result<Self> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        let add = |fd, data| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, data),
            )
        };
        use std::os::fd::AsRawFd;
        add(stop.as_raw_fd(), STOP)?;
        let events = {
            let mut dev = device.lock().unwrap_or_else(|e| e.into_inner());
            let events = dev.queue_events()?;
            for (i, e) in events.iter().enumerate() {
                add(e.as_raw_fd(), i as u64)?;
            }
            if let Some(fd) = dev.device().backend_event() {
                add(fd, BACKEND)?;
            }
            dev.attach_worker(ioevents);
            events
        };
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&epoll, &device, &events))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

fn run(epoll: &Epoll, device: &Mutex<VirtioPci>, events: &[EventFd]) {
    let mut ready = vec![EpollEvent::default(); events.len() + 2];
    loop {
        let n = match epoll.wait(-1, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio worker stops: {e}");
                return;
            }
        };
        for ev in &ready[..n] {
            match ev.data() {
                STOP => return,
                BACKEND => device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .handle_backend(),
                q => {
                    let Some(q) = usize::try_from(q).ok().filter(|&q| q < events.len()) else {
                        continue;
                    };
                    let _ = events[q].read();
                    device
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .handle_queue(q);
                }
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pci::msix::tests::FakeMsi;
    use crate::devices::pci::PciDevice;
    use crate::devices::virtio::pci::tests::{bring_up, mem, w16, Echo, FakeIoEvents};
    use crate::devices::virtio::queue::tests::desc;
    use crate::devices::virtio::F_VERSION_1;
    use std::time::{Duration, Instant};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    #[test]
    fn worker_serves_notifications_from_the_eventfd_and_stops_on_drop() {
        let m = mem();
        let fake = FakeMsi::default();
        let dev =
            VirtioPci::new(Box::new(Echo::default()), m.clone(), Box::new(fake.clone())).unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let vq = MockSplitQueue::create(&m, GuestAddress(0x1_0000), 16);
        vq.desc_table().store(0, desc(0x8000, 8, 2, 0)).unwrap();
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let rings = [(vq.desc_table_addr().0, vq.avail_addr().0, vq.used_addr().0)];
        bring_up(&mut dev.lock().unwrap(), F_VERSION_1, &rings);
        let ioevents = FakeIoEvents::default();
        let worker = Worker::spawn(dev.clone(), Some(Box::new(ioevents.clone())), "test").unwrap();
        dev.lock().unwrap().bar_mapped(0, Some(0xc000_0000));
        assert_eq!(ioevents.0.lock().unwrap()[0], (true, 0xc000_3000));
        // What KVM would do on a guest write to the notify address.
        w16(&mut dev.lock().unwrap(), 0x3000, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while vq.used().idx().load() != 1 {
            assert!(Instant::now() < deadline, "worker did not serve the queue");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(fake.0.lock().unwrap().fired, vec![1]);
        drop(worker);
    }
}
