//! The guest network (`vmm boot --net`): the guest's virtio-net NIC on the
//! in-process switch reaches the host endpoint 192.168.0.2: ping, a file
//! fetched with busybox `nc` from a TCP service on the endpoint
//! (`--serve-file`), the xchg and store shares mounted with the kernel's
//! cifs client from smbd-lite on the endpoint (`--share`), the `--pcap`
//! file read by tshark, and the endpoint's wait-for-port seeing the
//! guest's dropbear (`--wait-port 22`, `mode=sshd`).
//!
//! Needs the kit (`vmm guest build`) in its default folder, tshark and
//! sha256sum on the host, and a hardware KVM (run through
//! `scripts/with-kvm` elsewhere).

// The whole file is a test crate; clippy cannot see that here.
#![allow(clippy::tests_outside_test_module)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::guest::{BootedGuest, BOOT_TIMEOUT, EXIT_MARKER_PREFIX, READY_MARKER};

const AFTER_READY: Duration = Duration::from_secs(300);

/// A scratch folder removed at the end of the test.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmm-kvm-net-{}-{name}", std::process::id()));
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

fn pattern(size: usize, seed: usize) -> Vec<u8> {
    (0..size)
        .map(|i| u8::try_from((i * 7 + seed) % 251).unwrap_or(0))
        .collect()
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

fn has_line(console: &[String], text: &str) -> bool {
    console.iter().any(|l| l.contains(text))
}

/// The guest sets its address, pings the endpoint, fetches a served file
/// with `nc`, mounts both shares over cifs, copies from store to xchg and
/// tries to write into store; the host checks each result, the copied
/// bytes and the pcap file.
#[test]
fn kvm_net_guest_pings_fetches_mounts_shares_and_is_captured() {
    if !tests::require_kvm() {
        return;
    }
    let dir = Scratch::new("all");
    let served = dir.path("served.bin");
    std::fs::write(&served, pattern(1 << 20, 3)).expect("served file");
    let store = dir.path("store");
    let xchg = dir.path("xchg");
    std::fs::create_dir_all(&store).expect("store");
    std::fs::create_dir_all(&xchg).expect("xchg");
    std::fs::write(store.join("input.bin"), pattern(300_000, 5)).expect("store file");
    let pcap = dir.path("capture.pcap");

    let mount = |share: &str, at: &str, extra: &str| {
        format!(
            "mkdir -p {at}; mount -t cifs //192.168.0.2/{share} {at} \
             -o vers=3.1.1,sec=none,ip=192.168.0.2{extra} && echo MOUNT-{share}-OK"
        )
    };
    let cmd = format!(
        "ip addr add 192.168.0.1/24 dev eth0; ip link set eth0 up; \
         ping -c 3 192.168.0.2; \
         nc 192.168.0.2 8000 </dev/null >/tmp/f; sha256sum /tmp/f; \
         {}; {}; \
         cp /mnt/s/input.bin /mnt/x/output.bin && echo COPY-OK; \
         if echo x >/mnt/s/new 2>/dev/null; then echo STORE-WRITABLE; else echo STORE-REFUSED; fi; \
         sync; umount /mnt/x; umount /mnt/s",
        mount("xchg", "/mnt/x", ""),
        mount("store", "/mnt/s", ",ro"),
    );
    let args = [
        "--net".to_owned(),
        "--pcap".to_owned(),
        pcap.display().to_string(),
        "--serve-file".to_owned(),
        format!("8000={}", served.display()),
        "--share".to_owned(),
        format!("xchg={}", xchg.display()),
        "--share".to_owned(),
        format!("store={},ro", store.display()),
        "--append".to_owned(),
        format!("run=\"{cmd}\""),
    ];
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut g = BootedGuest::start(&refs);
    g.expect_line(READY_MARKER, BOOT_TIMEOUT);
    g.expect_line(EXIT_MARKER_PREFIX, AFTER_READY);
    assert_eq!(g.wait_exit(AFTER_READY).code(), Some(0), "{:#?}", g.seen);
    let console = &g.seen;

    assert!(
        has_line(console, " 0% packet loss"),
        "ping failed: {console:#?}"
    );
    let want = sha256_of(&served);
    assert!(
        has_line(console, &format!("{want}  /tmp/f")),
        "fetched file's hash is not {want}: {console:#?}"
    );
    assert!(has_line(console, "MOUNT-xchg-OK"), "{console:#?}");
    assert!(has_line(console, "MOUNT-store-OK"), "{console:#?}");
    assert!(has_line(console, "COPY-OK"), "{console:#?}");
    assert!(has_line(console, "STORE-REFUSED"), "{console:#?}");
    assert_eq!(
        std::fs::read(xchg.join("output.bin")).expect("copied file on the host"),
        pattern(300_000, 5)
    );
    assert!(!store.join("new").exists(), "a file appeared in the store");

    let out = Command::new("tshark")
        .args(["-r"])
        .arg(&pcap)
        .args(["-T", "fields", "-e", "frame.protocols"])
        .output()
        .expect("run tshark");
    assert!(out.status.success(), "tshark: {out:?}");
    let protocols = String::from_utf8_lossy(&out.stdout);
    assert!(protocols.lines().any(|l| l.contains("arp")), "{protocols}");
    assert!(protocols.lines().any(|l| l.contains(":tcp")), "{protocols}");
    assert!(
        protocols.lines().any(|l| l.contains(":icmp")),
        "{protocols}"
    );
}

/// With `mode=sshd` the endpoint's wait-for-port sees dropbear open port 22.
#[test]
fn kvm_net_endpoint_sees_guest_sshd_open() {
    if !tests::require_kvm() {
        return;
    }
    let mut child = Command::new(tests::vmm_bin())
        .args([
            "boot",
            "--net",
            "--wait-port",
            "22",
            "--append",
            "mode=sshd",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmm boot");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + BOOT_TIMEOUT + AFTER_READY;
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains("vmm: guest port 22");
                seen.push(line.clone());
                if hit {
                    break Some(line);
                }
            }
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = found.unwrap_or_else(|| panic!("no port report; stderr: {seen:#?}"));
    assert_eq!(line, "vmm: guest port 22 open", "{seen:#?}");
}
