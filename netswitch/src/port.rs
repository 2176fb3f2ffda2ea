//! Thread-safe glue around [`SwitchCore`]: a cloneable [`Switch`] handle and
//! the [`Port`] handles peers use to send and receive frames.
//!
//! This layer reads the clock (`Instant::now`) and holds the lock; all
//! switching decisions are in [`crate::switch`]. A peer learns that frames
//! wait for it through a notifier callback, called when its queue goes from
//! empty to non-empty (edge-triggered: drain with [`Port::try_recv`] until
//! it returns `None` before waiting again).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::pcap::{PcapError, PcapWriter};
use crate::switch::{
    ConfigError, Forward, PortCounters, PortId, SwitchConfig, SwitchCore, SwitchCounters,
};

/// Callback telling a peer that frames are waiting in its port's queue.
///
/// It runs on the sending peer's thread with the switch locked, so it must
/// only signal (write an eventfd, notify a condvar, `tokio::sync::Notify`,
/// wake a `Waker`) and never call back into the switch.
pub type Notifier = Arc<dyn Fn() + Send + Sync>;

/// Errors of the shared switch handle.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The switch settings are unusable.
    #[error("Invalid switch settings")]
    Config(#[source] ConfigError),
    /// The capture file could not be created, written or renamed.
    #[error("Cannot write capture file {path}")]
    Capture {
        /// The capture file asked for.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Writing capture records failed.
    #[error("Cannot write capture records")]
    CaptureRecord(#[source] PcapError),
}

struct Capture {
    writer: PcapWriter<BufWriter<File>>,
    partial: PathBuf,
    path: PathBuf,
    /// Wall-clock time matching `Shared::start`, for record timestamps.
    wall_start: Duration,
}

impl Capture {
    fn finish(mut self) -> Result<(), SwitchError> {
        self.writer.flush().map_err(SwitchError::CaptureRecord)?;
        std::fs::rename(&self.partial, &self.path).map_err(|source| SwitchError::Capture {
            path: self.path.clone(),
            source,
        })
    }
}

struct Inner {
    core: SwitchCore,
    notifiers: Vec<Option<Notifier>>,
    capture: Option<Capture>,
}

struct Shared {
    inner: Mutex<Inner>,
    start: Instant,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(capture) = inner.capture.take() {
            if let Err(error) = capture.finish() {
                tracing::warn!(%error, "capture lost at switch shutdown");
            }
        }
    }
}

/// A switch shared by its ports; clones refer to the same switch.
#[derive(Clone)]
pub struct Switch {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("config", self.lock().core.config())
            .finish_non_exhaustive()
    }
}

impl Switch {
    /// Creates a switch with no ports.
    pub fn new(config: SwitchConfig) -> Result<Self, SwitchError> {
        let core = SwitchCore::new(config).map_err(SwitchError::Config)?;
        Ok(Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    core,
                    notifiers: Vec::new(),
                    capture: None,
                }),
                start: Instant::now(),
            }),
        })
    }

    /// Adds a port. Dropping the returned handle removes the port again.
    pub fn add_port(&self) -> Port {
        let mut inner = self.lock();
        let id = inner.core.add_port();
        inner.notifiers.push(None);
        Port {
            switch: self.clone(),
            id,
        }
    }

    /// The switch's settings.
    pub fn config(&self) -> SwitchConfig {
        self.lock().core.config().clone()
    }

    /// Counters of a port, or `None` once the port is gone.
    pub fn port_counters(&self, id: PortId) -> Option<PortCounters> {
        self.lock().core.port_counters(id)
    }

    /// Frames and bytes waiting in a port's queue.
    pub fn queued(&self, id: PortId) -> (usize, usize) {
        self.lock().core.queued(id)
    }

    /// Counters of the switch as a whole.
    pub fn counters(&self) -> SwitchCounters {
        self.lock().core.counters()
    }

    /// Forgets learned addresses past their ageing time; call now and then
    /// (stale entries are never used for forwarding even without this).
    pub fn expire_macs(&self) {
        let now = Instant::now();
        self.lock().core.expire(now);
    }

    /// Starts capturing every frame the switch accepts into a pcap file at
    /// `path`. Records go to `path` + ".partial" until the capture is
    /// finished by [`Switch::finish_capture`] or by dropping the last handle
    /// of the switch, which renames it to `path`.
    pub fn capture_to(&self, path: &Path) -> Result<(), SwitchError> {
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let io_error = |source| SwitchError::Capture {
            path: path.to_owned(),
            source,
        };
        let file = File::create(&partial).map_err(io_error)?;
        let writer = PcapWriter::new(BufWriter::with_capacity(256 * 1024, file))
            .map_err(SwitchError::CaptureRecord)?;
        let wall_now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let wall_start = wall_now.saturating_sub(self.shared.start.elapsed());
        let old = self.lock().capture.replace(Capture {
            writer,
            partial,
            path: path.to_owned(),
            wall_start,
        });
        old.map_or(Ok(()), Capture::finish)
    }

    /// Flushes and closes the capture file, renaming it into place.
    pub fn finish_capture(&self) -> Result<(), SwitchError> {
        let capture = self.lock().capture.take();
        capture.map_or(Ok(()), Capture::finish)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One port of a [`Switch`], held by the peer plugged into it.
///
/// `Port` is `Send + Sync`; share it (e.g. in an `Arc`) between a device's
/// RX and TX threads if needed. Dropping it removes the port.
pub struct Port {
    switch: Switch,
    id: PortId,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port").field("id", &self.id).finish()
    }
}

impl Port {
    /// This port's id on its switch.
    pub fn id(&self) -> PortId {
        self.id
    }

    /// The switch this port belongs to.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// Sends one frame into the switch. Never blocks: a frame for a full
    /// queue is dropped and counted on the receiving port.
    pub fn send(&self, frame: &[u8]) -> Forward {
        let now = Instant::now();
        let start = self.switch.shared.start;
        let mut guard = self.switch.lock();
        let inner = &mut *guard;
        let forward = inner.core.input(now, self.id, frame);
        if !matches!(forward, crate::switch::Forward::Dropped(_)) {
            record(&mut inner.capture, now.duration_since(start), frame);
        }
        for port in inner.core.drain_woken() {
            let index = usize::try_from(port.0).unwrap_or(usize::MAX);
            if let Some(Some(notify)) = inner.notifiers.get(index) {
                notify();
            }
        }
        forward
    }

    /// Takes the oldest frame waiting for this port, if any.
    pub fn try_recv(&self) -> Option<Vec<u8>> {
        self.switch.lock().core.pop(self.id)
    }

    /// Length of the oldest frame waiting for this port, if any.
    pub fn peek_len(&self) -> Option<usize> {
        self.switch.lock().core.peek_len(self.id)
    }

    /// Hands a buffer from [`Port::try_recv`] back for reuse (optional; it
    /// saves an allocation per frame).
    pub fn recycle(&self, buffer: Vec<u8>) {
        self.switch.lock().core.recycle(buffer);
    }

    /// Frames and bytes waiting for this port.
    pub fn queued(&self) -> (usize, usize) {
        self.switch.lock().core.queued(self.id)
    }

    /// Sets the callback run when this port's queue becomes non-empty (see
    /// [`Notifier`] for what it may do). If frames already wait, it runs
    /// once right away so none is missed.
    pub fn set_notifier(&self, notifier: impl Fn() + Send + Sync + 'static) {
        let notifier: Notifier = Arc::new(notifier);
        let mut inner = self.switch.lock();
        let index = usize::try_from(self.id.0).unwrap_or(usize::MAX);
        if let Some(slot) = inner.notifiers.get_mut(index) {
            *slot = Some(notifier.clone());
        }
        if inner.core.queued(self.id).0 > 0 {
            notifier();
        }
    }

    /// Removes the notifier callback.
    pub fn clear_notifier(&self) {
        let mut inner = self.switch.lock();
        let index = usize::try_from(self.id.0).unwrap_or(usize::MAX);
        if let Some(slot) = inner.notifiers.get_mut(index) {
            *slot = None;
        }
    }

    /// This port's counters.
    pub fn counters(&self) -> PortCounters {
        self.switch.port_counters(self.id).unwrap_or_default()
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        let mut inner = self.switch.lock();
        inner.core.remove_port(self.id);
        let index = usize::try_from(self.id.0).unwrap_or(usize::MAX);
        if let Some(slot) = inner.notifiers.get_mut(index) {
            *slot = None;
        }
    }
}

fn record(capture: &mut Option<Capture>, since_start: Duration, frame: &[u8]) {
    let Some(active) = capture else {
        return;
    };
    if let Err(error) = active
        .writer
        .write_frame(active.wall_start + since_start, frame)
    {
        // One line, then capture stops: a full disk must not spam the log.
        tracing::warn!(%error, path = %active.path.display(), "capture stopped");
        *capture = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn frame(dst: [u8; 6], src: [u8; 6], len: usize) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f
    }

    #[test]
    fn notifier_runs_once_per_empty_to_nonempty_transition() {
        let sw = Switch::new(SwitchConfig::default()).unwrap();
        let a = sw.add_port();
        let b = sw.add_port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        b.set_notifier(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        for _ in 0..3 {
            a.send(&frame([0xff; 6], [2, 0, 0, 0, 0, 1], 60));
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        while b.try_recv().is_some() {}
        a.send(&frame([0xff; 6], [2, 0, 0, 0, 0, 1], 60));
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn late_notifier_fires_for_frames_already_queued() {
        let sw = Switch::new(SwitchConfig::default()).unwrap();
        let a = sw.add_port();
        let b = sw.add_port();
        a.send(&frame([0xff; 6], [2, 0, 0, 0, 0, 1], 60));
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        b.set_notifier(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn blocked_device_thread_is_woken_by_a_frame() {
        let sw = Switch::new(SwitchConfig::default()).unwrap();
        let a = sw.add_port();
        let b = Arc::new(sw.add_port());
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        b.set_notifier(move || {
            let _ = tx.try_send(());
        });
        let device = {
            let b = b.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < 100 {
                    rx.recv_timeout(Duration::from_secs(10)).expect("woken");
                    while let Some(f) = b.try_recv() {
                        got.push(f);
                    }
                }
                got
            })
        };
        for i in 0..100u8 {
            let mut f = frame([0xff; 6], [2, 0, 0, 0, 0, 1], 60);
            f[20] = i;
            a.send(&f);
        }
        let got = device.join().unwrap();
        assert_eq!(got.len(), 100);
        assert!(got.iter().enumerate().all(|(i, f)| usize::from(f[20]) == i));
    }

    #[test]
    fn unread_port_neither_blocks_others_nor_grows() {
        let config = SwitchConfig {
            queue_frames: 64,
            ..SwitchConfig::default()
        };
        let sw = Switch::new(config).unwrap();
        let (a, stuck, c) = (sw.add_port(), sw.add_port(), sw.add_port());
        stuck.send(&frame([0xff; 6], [2, 0, 0, 0, 0, 2], 60));
        c.send(&frame([0xff; 6], [2, 0, 0, 0, 0, 3], 60));
        for port in [&a, &stuck, &c] {
            while port.try_recv().is_some() {}
        }
        for _ in 0..100_000 {
            a.send(&frame([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1], 1514));
        }
        let (frames, bytes) = stuck.queued();
        assert_eq!(frames, 64);
        assert!(bytes <= 64 * 1514);
        assert_eq!(stuck.counters().tx_dropped_queue_full, 100_000 - 64);
        let to_c = frame([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 1], 60);
        a.send(&to_c);
        assert_eq!(c.try_recv(), Some(to_c));
    }

    #[test]
    fn handles_can_move_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Switch>();
        assert_send_sync::<Port>();
    }

    #[test]
    fn dropped_port_leaves_the_switch() {
        let sw = Switch::new(SwitchConfig::default()).unwrap();
        let a = sw.add_port();
        let b = sw.add_port();
        let id = b.id();
        drop(b);
        assert_eq!(sw.port_counters(id), None);
        a.send(&frame([0xff; 6], [2, 0, 0, 0, 0, 1], 60));
        assert_eq!(a.counters().rx_frames, 1);
    }

    #[test]
    fn capture_appears_under_its_name_once_finished() {
        let dir = std::env::temp_dir().join(format!("netswitch-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("unit.pcap");
        let sw = Switch::new(SwitchConfig::default()).unwrap();
        let a = sw.add_port();
        let _b = sw.add_port();
        sw.capture_to(&path).unwrap();
        a.send(&frame([0xff; 6], [2, 0, 0, 0, 0, 1], 60));
        a.send(&frame([0xff; 6], [2, 0, 0, 0, 0, 1], 1515)); // dropped: not captured
        assert!(!path.exists());
        sw.finish_capture().unwrap();
        let records = crate::pcap::parse(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].data.len(), 60);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
