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
//! With devices: a guest with a disk and a NIC, snapshotted, pings the
//! fresh host endpoint after revive with no loss, reads what it wrote to
//! its disk before the snapshot and writes into a throwaway overlay (the
//! base image's hash stays the same; a second revive does not see the
//! first one's write); a cifs share mounted before the snapshot works
//! after revive against a fresh server serving another host folder.
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

/// Prints `n=I w=W` once a second: I counts, W counts kernel warnings
/// since the count started (the emulated test host's TSC may be marked
/// unstable during boot; that is not the revive's doing).
const COUNTER: &str = "run=\"dmesg -c >/dev/null; i=0; while true; do echo n=$i w=$(dmesg | grep -ciE 'lockup|stall|unstable|hung'); i=$((i+1)); sleep 1; done\"";
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
        Self::start_with(dir, &[])
    }

    fn start_with(dir: &Path, args: &[String]) -> Self {
        let mut child = Command::new(tests::vmm_bin())
            .arg("revive")
            .arg(dir)
            .args(args)
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

    /// Every console line until the process ends, and its exit status.
    fn finish(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((_, line)) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "revive still running after {timeout:?}; console: {:#?}",
                        self.seen
                    )
                }
            }
        }
        let status = self.child.wait().expect("wait for vmm revive");
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        assert!(
            status.success(),
            "revive exited {status}; stderr: {err}; console: {:#?}",
            self.seen
        );
        status
    }

    /// The text after `KEY=` on the first console line starting so.
    fn value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key}=");
        self.seen
            .iter()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
    }

    /// The count and warning count of the next `n=I w=W` line. The first
    /// line after a revive may be the rest of the trigger line (`W`, when
    /// the guest stopped between `w=` and the number): it is skipped.
    fn next_count(&mut self, timeout: Duration) -> (Instant, u64, u64) {
        let (mut at, mut line) = self.next_line(timeout);
        if self.seen.len() == 1 && !line.starts_with("n=") {
            (at, line) = self.next_line(timeout);
        }
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

/// A scratch folder of its own for a device test, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let mut dir = scratch_dir().into_os_string();
        dir.push(format!("-{name}"));
        let dir = PathBuf::from(dir);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Self(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Boots the kit with `args` and `run` as its command, snapshotting into
/// `dir` when the console prints `trigger`, after the lines in `expect`.
fn boot_and_snapshot(args: &[String], run: &str, dir: &Path, trigger: &str, expect: &[&str]) {
    let mut all: Vec<String> = args.to_vec();
    all.extend([
        "--append".to_owned(),
        format!("run=\"{run}\""),
        "--snapshot-to".to_owned(),
        dir.display().to_string(),
        "--snapshot-on".to_owned(),
        trigger.to_owned(),
    ]);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut g = BootedGuest::start(&refs);
    g.expect_line(READY_MARKER, BOOT_TIMEOUT);
    g.expect_line(trigger, BOOT_TIMEOUT);
    let status = g.wait_exit(Duration::from_secs(300));
    assert_eq!(status.code(), Some(0), "console: {:#?}", g.seen);
    assert!(dir.join("state").is_file(), "no snapshot: {:#?}", g.seen);
    for want in expect {
        assert!(
            g.seen.iter().any(|l| l == want),
            "no {want:?} before the snapshot: {:#?}",
            g.seen
        );
    }
}

/// Guest network setup, and one ping so the endpoint's MAC is cached in
/// the guest when the snapshot is taken (as a revived guest has it).
const NET_UP: &str = "ip addr add 192.168.0.1/24 dev eth0; ip link set eth0 up; \
                      ping -c 1 -W 10 192.168.0.2 >/dev/null && echo PING-BEFORE-OK";
/// Kernel warnings since the ring buffer was cleared before the snapshot
/// (warnings, oopses, lockups, stalls, hung tasks), shown with their
/// context and counted on a `WARNINGS=` line.
const AFTER_REVIVE_WARNINGS: &str = "dmesg | grep -iE -A30 'Modules linked in|lockup|stall|hung'; \
     echo WARNINGS=$(dmesg | grep -ciE 'Modules linked in|lockup|stall|hung')";
const DISK_SIZE: usize = 4 << 20;
const BASE_FILL: u8 = 0xaa;

#[test]
fn kvm_snapshot_revived_guest_pings_the_fresh_endpoint_and_writes_its_disk_into_an_overlay() {
    if !tests::require_kvm() {
        return;
    }
    let scratch = Scratch::new("net-disk");
    let base = scratch.path("disk.img");
    std::fs::write(&base, vec![BASE_FILL; DISK_SIZE]).expect("disk image");
    let dir = scratch.path("snap");
    // Before the snapshot: BEFORE at sector 0 of the base. After each
    // revive: 5 pings, sector 0 read back from the device, whether sector
    // 2048 already holds AFTER (a previous revive's write must not show),
    // then AFTER written there and read back from the device.
    let run = format!(
        "{NET_UP}; printf BEFORE | dd of=/dev/vda conv=notrunc 2>/dev/null; sync; \
         dmesg -c >/dev/null; echo SNAP-DEVICES; \
         ping -c 5 -W 2 192.168.0.2; echo 3 >/proc/sys/vm/drop_caches; \
         echo DISK0=$(head -c 6 /dev/vda); \
         case $(dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | head -c 5) in \
         AFTER) echo PRE=AFTER;; *) echo PRE=CLEAN;; esac; \
         printf AFTER | dd of=/dev/vda bs=512 seek=2048 conv=notrunc 2>/dev/null; sync; \
         echo 3 >/proc/sys/vm/drop_caches; \
         echo DISK1=$(dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | head -c 5); \
         {AFTER_REVIVE_WARNINGS}"
    );
    let args = [
        "--net".to_owned(),
        "--disk".to_owned(),
        base.display().to_string(),
    ];
    boot_and_snapshot(&args, &run, &dir, "SNAP-DEVICES", &["PING-BEFORE-OK"]);
    let saved = std::fs::read(&base).expect("base image");
    assert_eq!(
        &saved[..6],
        b"BEFORE",
        "the booted guest's write is in the base"
    );
    let hash = sha256_of(&base);
    for round in 0..2 {
        let mut r = Revived::start(&dir);
        r.finish(REVIVE_TIMEOUT + Duration::from_secs(120));
        let console = &r.seen;
        assert!(
            console
                .iter()
                .any(|l| l.contains("5 packets received, 0% packet loss")),
            "round {round}: pings lost after revive: {console:#?}"
        );
        assert_eq!(r.value("DISK0").as_deref(), Some("BEFORE"), "{console:#?}");
        assert_eq!(r.value("PRE").as_deref(), Some("CLEAN"), "{console:#?}");
        assert_eq!(r.value("DISK1").as_deref(), Some("AFTER"), "{console:#?}");
        assert_eq!(r.value("WARNINGS").as_deref(), Some("0"), "{console:#?}");
        assert_eq!(
            sha256_of(&base),
            hash,
            "round {round}: the base image changed"
        );
    }
    let after = std::fs::read(&base).expect("base image");
    assert!(after[6..].iter().all(|&b| b == BASE_FILL));
}

#[test]
fn kvm_snapshot_cifs_mount_reconnects_to_a_fresh_server_with_another_folder() {
    if !tests::require_kvm() {
        return;
    }
    let scratch = Scratch::new("cifs");
    let old = scratch.path("old");
    let new = scratch.path("new");
    std::fs::create_dir_all(&old).expect("old share");
    std::fs::create_dir_all(&new).expect("new share");
    let dir = scratch.path("snap");
    // noserverino: the fresh server's folder has other inode numbers, and
    // with server inode numbers the client calls the share root stale.
    let run = format!(
        "{NET_UP}; mkdir -p /mnt/x; mount -t cifs //192.168.0.2/xchg /mnt/x \
         -o guest,vers=3.1.1,sec=none,ip=192.168.0.2,noserverino && echo MOUNT-OK; \
         echo before >/mnt/x/before.txt; dmesg -c >/dev/null; echo SNAP-CIFS; \
         t0=$(cut -d' ' -f1 /proc/uptime); \
         echo revived >/mnt/x/after.txt && echo WRITE-OK; \
         echo RECONNECT=$t0-$(cut -d' ' -f1 /proc/uptime); \
         ls /mnt/x && echo LS-OK; echo READ=$(cat /mnt/x/after.txt); \
         {AFTER_REVIVE_WARNINGS}"
    );
    let args = [
        "--net".to_owned(),
        "--share".to_owned(),
        format!("xchg={}", old.display()),
    ];
    boot_and_snapshot(
        &args,
        &run,
        &dir,
        "SNAP-CIFS",
        &["PING-BEFORE-OK", "MOUNT-OK"],
    );
    assert_eq!(
        std::fs::read_to_string(old.join("before.txt")).expect("written before the snapshot"),
        "before\n"
    );
    let mut r = Revived::start_with(
        &dir,
        &["--share".to_owned(), format!("xchg={}", new.display())],
    );
    r.finish(REVIVE_TIMEOUT + Duration::from_secs(120));
    let console = &r.seen;
    assert!(console.iter().any(|l| l == "WRITE-OK"), "{console:#?}");
    assert!(console.iter().any(|l| l == "LS-OK"), "{console:#?}");
    assert_eq!(r.value("READ").as_deref(), Some("revived"), "{console:#?}");
    assert_eq!(r.value("WARNINGS").as_deref(), Some("0"), "{console:#?}");
    assert_eq!(
        std::fs::read_to_string(new.join("after.txt")).expect("written after revive"),
        "revived\n"
    );
    assert!(
        !old.join("after.txt").exists(),
        "the old folder was written"
    );
    assert!(!new.join("before.txt").exists());
    let (t0, t1) = r
        .value("RECONNECT")
        .and_then(|v| {
            let (a, b) = v.split_once('-')?;
            Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?))
        })
        .unwrap_or_else(|| panic!("no reconnect time: {console:#?}"));
    let took = t1 - t0;
    println!("cifs: first write after revive took {took:.2} s of guest time");
    assert!(took < 30.0, "cifs took {took} s to reconnect");
}
