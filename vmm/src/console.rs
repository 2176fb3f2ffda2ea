//! The guest console's path to the host: a bounded byte buffer filled by
//! the UART on the vCPU thread and drained to stdout or a file by its own
//! thread. A full buffer drops bytes and counts them; a writer never waits
//! for the host (PITFALLS Boot 5).
//!
//! Limitations:
//! - Output only; the guest gets no console input.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default buffer size between the UART and the host.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

#[derive(Debug)]
struct Inner {
    data: VecDeque<u8>,
    capacity: usize,
    dropped: u64,
    closed: bool,
    drained: bool,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    ready: Condvar,
}

/// The writing end given to the UART. Cheap to clone; never blocks on I/O.
#[derive(Debug, Clone)]
pub struct ConsoleWriter {
    shared: Arc<Shared>,
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = self.shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = inner.capacity.saturating_sub(inner.data.len());
        let taken = room.min(buf.len());
        inner.data.extend(&buf[..taken]);
        inner.dropped += (buf.len() - taken) as u64;
        drop(inner);
        self.shared.ready.notify_one();
        // Dropped bytes are reported as written: the guest must not stall.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The console buffer and its draining thread.
#[derive(Debug)]
pub struct Console {
    shared: Arc<Shared>,
    drain: Option<JoinHandle<()>>,
}

impl Console {
    /// Starts draining into `out` through a buffer of `capacity` bytes.
    pub fn spawn(out: Box<dyn Write + Send>, capacity: usize) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                data: VecDeque::new(),
                capacity,
                dropped: 0,
                closed: false,
                drained: false,
            }),
            ready: Condvar::new(),
        });
        let worker = shared.clone();
        let drain = std::thread::Builder::new()
            .name("console".into())
            .spawn(move || drain_loop(&worker, out))?;
        Ok(Self {
            shared,
            drain: Some(drain),
        })
    }

    /// A writer for the UART.
    pub fn writer(&self) -> ConsoleWriter {
        ConsoleWriter {
            shared: self.shared.clone(),
        }
    }

    /// Bytes dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dropped
    }

    /// Writes out what is buffered, waiting at most `timeout` for the host
    /// to take it, and stops the thread. Returns the dropped-byte count.
    pub fn finish(mut self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut inner = self.shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.closed = true;
        self.shared.ready.notify_all();
        while !inner.drained {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            inner = match self.shared.ready.wait_timeout(inner, left) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
        }
        let (drained, dropped) = (inner.drained, inner.dropped);
        drop(inner);
        if drained {
            if let Some(handle) = self.drain.take() {
                let _ = handle.join();
            }
        }
        // Otherwise the host is not reading: leave the thread behind.
        dropped
    }
}

fn drain_loop(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut chunk = Vec::new();
    loop {
        let closed = {
            let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
            while inner.data.is_empty() && !inner.closed {
                inner = shared.ready.wait(inner).unwrap_or_else(|e| e.into_inner());
            }
            chunk.clear();
            chunk.extend(inner.data.drain(..));
            inner.closed
        };
        if !chunk.is_empty() && (out.write_all(&chunk).is_err() || out.flush().is_err()) {
            // The host side is gone; keep emptying the buffer regardless.
            tracing::debug!("console output failed");
        }
        if closed {
            let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
            if inner.data.is_empty() {
                inner.drained = true;
                shared.ready.notify_all();
                return;
            }
        }
    }
}

/// A console sink that keeps the last bytes written (to show when a guest
/// fails) and copies everything to an optional file. Cheap to clone; the
/// clones share the kept bytes.
#[derive(Debug, Clone)]
pub struct Tail {
    kept: Arc<Mutex<VecDeque<u8>>>,
    limit: usize,
    file: Option<Arc<Mutex<std::fs::File>>>,
}

impl Tail {
    /// Keeps the last `limit` bytes, copying all to `file` if given.
    pub fn new(limit: usize, file: Option<std::fs::File>) -> Self {
        Self {
            kept: Arc::new(Mutex::new(VecDeque::with_capacity(limit))),
            limit,
            file: file.map(|f| Arc::new(Mutex::new(f))),
        }
    }

    /// The last lines kept, lossily decoded, at most `lines` of them.
    pub fn last_lines(&self, lines: usize) -> String {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let bytes: Vec<u8> = kept.iter().copied().collect();
        drop(kept);
        let text = String::from_utf8_lossy(&bytes).replace('\r', "");
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Tail {
    /// Prints the last `lines` lines on stderr under a heading, if any.
    pub fn show(&self, lines: usize) {
        let text = self.last_lines(lines);
        if !text.trim().is_empty() {
            eprintln!("vmm: the guest console's last lines:");
            for line in text.lines() {
                eprintln!("  | {line}");
            }
        }
    }
}

impl Write for Tail {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            let skip = buf.len().saturating_sub(self.limit);
            kept.extend(&buf[skip..]);
            let excess = kept.len().saturating_sub(self.limit);
            kept.drain(..excess);
        }
        if let Some(file) = &self.file {
            file.lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.file {
            Some(file) => file.lock().unwrap_or_else(|e| e.into_inner()).flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A host that never reads: every write blocks forever.
    struct Stuck(Arc<(Mutex<bool>, Condvar)>);

    impl Write for Stuck {
        fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut go = lock.lock().unwrap();
            while !*go {
                go = cv.wait(go).unwrap();
            }
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn tail_keeps_only_the_last_bytes_and_lines() {
        let mut t = Tail::new(16, None);
        t.write_all(b"one\r\ntwo\nthree\nfour\n").unwrap();
        assert_eq!(t.last_lines(2), "three\nfour");
        t.write_all(&[b'x'; 40]).unwrap();
        assert_eq!(t.last_lines(5), "x".repeat(16));
    }

    #[test]
    fn everything_written_reaches_the_output_after_finish() {
        let sink = Sink::default();
        let console = Console::spawn(Box::new(sink.clone()), 1024).unwrap();
        let mut w = console.writer();
        for i in 0..100u8 {
            w.write_all(&[i]).unwrap();
        }
        assert_eq!(console.finish(Duration::from_secs(5)), 0);
        assert_eq!(*sink.0.lock().unwrap(), (0..100u8).collect::<Vec<_>>());
    }

    #[test]
    fn a_host_that_never_reads_makes_writes_drop_not_block() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let console = Console::spawn(Box::new(Stuck(gate.clone())), 4096).unwrap();
        let mut w = console.writer();
        let start = Instant::now();
        // 1 MiB, one byte at a time as the UART does.
        for _ in 0..(1 << 20) {
            w.write_all(b"x").unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(console.dropped() >= (1 << 20) - 2 * 4096);
        let dropped = console.finish(Duration::from_millis(50));
        assert!(dropped > 0);
        // Let the stuck thread go.
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }
}
