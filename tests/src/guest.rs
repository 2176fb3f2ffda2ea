//! Running `vmm boot` from a test: console lines as they come, with
//! deadlines, and the exit status.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Printed by the kit's `/init` once it is up.
pub const READY_MARKER: &str = "vmm-guest: ready";
/// Printed by the kit's `/init` before the status of a `run=` command.
pub const EXIT_MARKER_PREFIX: &str = "vmm-guest: exit ";
/// How long a boot may take in the emulated KVM test host.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(400);

/// A `vmm boot` process whose console the test reads line by line.
#[derive(Debug)]
pub struct BootedGuest {
    child: Child,
    lines: Receiver<String>,
    /// Every console line read so far.
    pub seen: Vec<String>,
}

impl BootedGuest {
    /// Starts `vmm boot ARGS...` (the kit unless ARGS name a kernel).
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(crate::vmm_bin())
            .arg("boot")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vmm boot");
        let stdout = child.stdout.take().expect("vmm stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line.trim_end_matches('\r').to_owned()).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Reads until a line containing `wanted`; returns that line. Panics
    /// with the console so far after `timeout` or at end of output.
    pub fn expect_line(&mut self, wanted: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(wanted) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line with {wanted:?} in {timeout:?}; console: {:#?}",
                        self.seen
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("console ended before {wanted:?}; console: {:#?}", self.seen)
                }
            }
        }
    }

    /// Waits for the process to end; kills it and panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for vmm") {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "vmm still running after {timeout:?}; console: {:#?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BootedGuest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
