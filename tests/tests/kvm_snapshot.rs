//! Snapshot and revive under KVM: a guest counting once a second on its
//! console is snapshotted mid-count (`vmm boot --snapshot-to --snapshot-on`)
//! and revived in fresh processes (`vmm revive`).
//!
//! Checked: the count continues from the next number, twice from the same
//! snapshot; `sleep 1` in the revived guest takes 0.5-5 s of host time;
//! eight revives at once all continue; the guest's kernel log shows no
//! soft lockup, RCU stall, unstable clocksource or hung task after revive;
//! a flipped state byte, a truncated memory file and a wrong format
//! version are each refused with their reason before the guest runs.
//!
//! Needs the guest kit (`vmm guest build`) and hardware KVM (run through
//! `scripts/with-kvm` elsewhere). One snapshot is shared by all tests of
//! this file; it lives on /dev/shm when there is one.

// Integration tests: the whole file is test code.
#![allow(clippy::tests_outside_test_module)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tests::guest::{BootedGuest, BOOT_TIMEOUT, READY_MARKER};

/// Prints `n=I w=W` once a second: I counts, W counts kernel warnings.
const COUNTER: &str = "run=\"i=0; while true; do echo n=$i w=$(dmesg | grep -ciE 'lockup|stall|unstable|hung'); i=$((i+1)); sleep 1; done\"";
/// The snapshot is taken when the console prints this.
const TRIGGER: &str = "n=2 w=";
/// Bound on the first revived line in the emulated KVM host.
const REVIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// A `vmm revive` process read line by line.
struct Revived {
    child: Child,
    lines: Receiver<(Instant, String)>,
    seen: Vec<String>,
}

impl Revived {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new(tests::vmm_bin())
            .arg("revive")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vmm revive");
        let stdout = child.stdout.take().expect("vmm stdout");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let line = line.trim_end_matches('\r').to_owned();
                if tx.send((Instant::now(), line)).is_err() {
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

    /// The next non-empty console line and when it arrived.
    fn next_line(&mut self, timeout: Duration) -> (Instant, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((_, line)) if line.trim().is_empty() => continue,
                Ok((at, line)) => {
                    self.seen.push(line.clone());
                    return (at, line);
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no console line in {timeout:?}; console: {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.child.kill();
                    let out = self.child.wait_with_output_lossy();
                    panic!("revive ended; console: {:#?}; stderr: {out}", self.seen)
                }
            }
        }
    }

    /// The count and warning count of the next `n=I w=W` line.
    fn next_count(&mut self, timeout: Duration) -> (Instant, u64, u64) {
        let (at, line) = self.next_line(timeout);
        let parsed = line
            .strip_prefix("n=")
            .and_then(|rest| rest.split_once(" w="))
            .and_then(|(n, w)| Some((n.parse().ok()?, w.trim().parse().ok()?)));
        let (n, w) = parsed.unwrap_or_else(|| panic!("not a count line: {line:?}"));
        (at, n, w)
    }
}

trait WaitLossy {
    fn wait_with_output_lossy(&mut self) -> String;
}

impl WaitLossy for Child {
    fn wait_with_output_lossy(&mut self) -> String {
        let _ = self.wait();
        let mut text = String::new();
        if let Some(mut err) = self.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut err, &mut text);
        }
        text
    }
}

impl Drop for Revived {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn scratch_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    base.join(format!("vmm-kvm-snapshot-{}", std::process::id()))
}

/// The counting guest's snapshot, taken once per test process.
fn snapshot() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let scratch = scratch_dir();
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        let dir = scratch.join("counter");
        let to = dir.to_str().unwrap().to_owned();
        let mut g = BootedGuest::start(&[
            "--append",
            COUNTER,
            "--snapshot-to",
            &to,
            "--snapshot-on",
            TRIGGER,
        ]);
        g.expect_line(READY_MARKER, BOOT_TIMEOUT);
        g.expect_line(TRIGGER, BOOT_TIMEOUT);
        let status = g.wait_exit(Duration::from_secs(120));
        assert_eq!(status.code(), Some(0), "console: {:#?}", g.seen);
        assert!(dir.join("state").is_file() && dir.join("memory").is_file());
        dir
    })
}

/// Checks a revive continues at 3, 4, 5 with no kernel warnings, and
/// returns the host time between 3 and 4 (one `sleep 1` in the guest).
fn expect_continuation(r: &mut Revived) -> Duration {
    let (t3, n3, w3) = r.next_count(REVIVE_TIMEOUT);
    assert_eq!(n3, 3, "console: {:#?}", r.seen);
    let (t4, n4, w4) = r.next_count(Duration::from_secs(60));
    let (_, n5, w5) = r.next_count(Duration::from_secs(60));
    assert_eq!((n4, n5), (4, 5), "console: {:#?}", r.seen);
    assert_eq!((w3, w4, w5), (0, 0, 0), "kernel warnings: {:#?}", r.seen);
    t4 - t3
}

#[test]
fn kvm_snapshot_count_continues_from_the_next_number_twice_and_sleep_takes_its_time() {
    if !tests::require_kvm() {
        return;
    }
    let dir = snapshot();
    for round in 0..2 {
        let mut r = Revived::start(dir);
        let slept = expect_continuation(&mut r);
        assert!(
            slept >= Duration::from_millis(500) && slept <= Duration::from_secs(5),
            "round {round}: sleep 1 took {slept:?} of host time"
        );
    }
}

#[test]
fn kvm_snapshot_eight_revives_at_once_all_continue() {
    if !tests::require_kvm() {
        return;
    }
    let dir = snapshot();
    let mut all: Vec<Revived> = (0..8).map(|_| Revived::start(dir)).collect();
    for r in &mut all {
        expect_continuation(r);
    }
}

fn copy_snapshot(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let status = Command::new("cp")
        .args(["-r", "--sparse=always"])
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
}

fn revive_refused(dir: &Path) -> (ExitStatus, String, String) {
    let out = Command::new(tests::vmm_bin())
        .arg("revive")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run vmm revive");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn kvm_snapshot_damaged_copies_are_refused_with_their_reason_before_the_guest_runs() {
    if !tests::require_kvm() {
        return;
    }
    let good = snapshot();
    let verify = Command::new(tests::vmm_bin())
        .args(["snapshot", "verify"])
        .arg(good)
        .output()
        .expect("run vmm snapshot verify");
    assert!(verify.status.success(), "{verify:?}");
    let scratch = good.parent().unwrap();
    /// Name, damage done to a copy, text the refusal must hold.
    type Case = (&'static str, fn(&Path), &'static str);
    let cases: [Case; 3] = [
        (
            "flipped",
            |d| {
                let p = d.join("state");
                let mut b = std::fs::read(&p).unwrap();
                let at = b.len() / 2;
                b[at] ^= 0x10;
                std::fs::write(&p, b).unwrap();
            },
            "checksum",
        ),
        (
            "truncated",
            |d| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("memory"))
                    .unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len - 4096).unwrap();
            },
            "truncated",
        ),
        (
            "version",
            |d| {
                let p = d.join("state");
                let mut b = std::fs::read(&p).unwrap();
                b[8] = b[8].wrapping_add(1);
                std::fs::write(&p, b).unwrap();
            },
            "format version",
        ),
    ];
    for (name, damage, reason) in cases {
        let dir = scratch.join(name);
        copy_snapshot(good, &dir);
        damage(&dir);
        let (status, stdout, stderr) = revive_refused(&dir);
        assert_eq!(status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(reason), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(stdout.is_empty(), "{name}: the guest ran: {stdout}");
        let verify = Command::new(tests::vmm_bin())
            .args(["snapshot", "verify"])
            .arg(&dir)
            .output()
            .expect("run vmm snapshot verify");
        assert!(!verify.status.success(), "{name}: verify passed");
    }
}
