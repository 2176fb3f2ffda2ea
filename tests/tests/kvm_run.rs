//! The main job end to end on the real test guest: `vmm bootstrap` with
//! the default spec, then `vmm run` from that base — one run, one inside
//! `unshare -n`, four at once, a timeout and a guest that dies mid-command;
//! and bootstraps that must fail without leaving a base behind.
//!
//! Needs KVM that boots ordinary guests and the guest kit (`vmm guest
//! build`); runs in the KVM test host (`scripts/with-kvm`). One base is
//! shared by the tests of this file.

// Integration tests: the whole file is test code.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Bound on a bootstrap in the emulated KVM host (boot, SSH, snapshot).
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(600);
/// Bound on one `vmm run` there.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// The store file the runs read.
const INPUT: &str = "the quick brown fox\n";

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vmm-kvm-run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        dir
    })
}

/// Runs `cmd`, killing it after `limit`; returns its output.
fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vmm");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for vmm"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The shared base, bootstrapped once with the default spec, and the
/// store folder the runs share.
fn base() -> &'static (PathBuf, PathBuf) {
    static BASE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = scratch().join("base");
        let mut cmd = Command::new(tests::vmm_bin());
        cmd.arg("bootstrap").arg("--out").arg(&base);
        let t0 = Instant::now();
        let out = output_within(cmd, BOOTSTRAP_TIMEOUT);
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "bootstrap failed: {stderr}");
        assert!(stderr.contains("ready in"), "{stderr}");
        eprintln!("bootstrap took {:?}", t0.elapsed());
        for file in ["base.toml", "key", "snapshot/state", "snapshot/memory"] {
            assert!(base.join(file).is_file(), "{file} missing from the base");
        }
        let store = scratch().join("store");
        std::fs::create_dir_all(&store).expect("store");
        std::fs::write(store.join("in.txt"), INPUT).expect("store file");
        (base, store)
    })
}

/// `vmm run` from the shared base with its own xchg; `prefix` wraps the
/// command (e.g. `unshare -n`).
fn run(prefix: &[&str], xchg: &Path, extra: &[&str], command: &[&str]) -> Output {
    let (base, store) = base();
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(tests::vmm_bin());
            c
        }
        None => Command::new(tests::vmm_bin()),
    };
    cmd.arg("run")
        .arg("--base")
        .arg(base)
        .arg("--store")
        .arg(store)
        .arg("--xchg")
        .arg(xchg)
        .arg("--stats")
        .args(extra)
        .arg("--")
        .args(command);
    output_within(cmd, RUN_TIMEOUT)
}

const UPPERCASE: &str = "tr a-z A-Z < /nix/store/in.txt > /tmp/xchg/out.txt; exit 3";

fn assert_uppercased(out: &Output, xchg: &Path) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    let result = std::fs::read_to_string(xchg.join("out.txt")).expect("out.txt in xchg");
    assert_eq!(result, INPUT.to_uppercase());
    let exit = std::fs::read_to_string(xchg.join("in-vm-exit")).expect("in-vm-exit in xchg");
    assert_eq!(exit, "3\n");
}

#[test]
fn kvm_run_uppercases_a_store_file_into_xchg_and_exits_with_the_commands_status() {
    if !tests::require_kvm() {
        return;
    }
    let xchg = scratch().join("xchg-one");
    let out = run(&[], &xchg, &[], &["sh", "-c", UPPERCASE]);
    assert_uppercased(&out, &xchg);
    eprintln!("{}", text(&out.stderr));
}

#[test]
fn kvm_run_needs_no_host_network() {
    if !tests::require_kvm() {
        return;
    }
    let probe = Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .expect("run unshare");
    assert!(
        probe.success(),
        "unshare -n does not work here (needs root)"
    );
    let xchg = scratch().join("xchg-unshare");
    let out = run(&["unshare", "-n"], &xchg, &[], &["sh", "-c", UPPERCASE]);
    assert_uppercased(&out, &xchg);
}

#[test]
fn kvm_run_four_at_once_from_one_base_keep_apart() {
    if !tests::require_kvm() {
        return;
    }
    let (base, _) = base();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let xchg = scratch().join(format!("xchg-four-{i}"));
                // Each guest leaves a mark in its own RAM-backed root and
                // lists the marks it sees: only its own must be there.
                let script = format!(
                    "echo run-{i} > /mark-{i}; ls / | grep -c '^mark-' > /tmp/xchg/marks; \
                     cat /nix/store/in.txt /mark-{i} > /tmp/xchg/out.txt; ls /tmp/xchg > /tmp/xchg/listing"
                );
                let out = run(&[], &xchg, &[], &["sh", "-c", &script]);
                (i, xchg, out)
            })
        })
        .collect();
    for h in handles {
        let (i, xchg, out) = h.join().expect("run thread");
        assert!(out.status.success(), "run {i}: {}", text(&out.stderr));
        let result = std::fs::read_to_string(xchg.join("out.txt")).expect("out.txt");
        assert_eq!(result, format!("{INPUT}run-{i}\n"), "run {i}");
        let marks = std::fs::read_to_string(xchg.join("marks")).expect("marks");
        assert_eq!(marks.trim(), "1", "run {i} saw another run's files");
        let listing = std::fs::read_to_string(xchg.join("listing")).expect("listing");
        assert_eq!(
            listing.split_whitespace().collect::<Vec<_>>(),
            ["listing", "marks", "out.txt"],
            "run {i} saw another run's xchg"
        );
    }
    // The base is unchanged: its memory file still matches its hash.
    let verify = output_within(
        {
            let mut c = Command::new(tests::vmm_bin());
            c.args(["snapshot", "verify"]).arg(base.join("snapshot"));
            c
        },
        RUN_TIMEOUT,
    );
    assert!(verify.status.success(), "{}", text(&verify.stderr));
}

#[test]
fn kvm_run_timeout_and_a_guest_dying_mid_command_are_reported() {
    if !tests::require_kvm() {
        return;
    }
    let xchg = scratch().join("xchg-timeout");
    let t0 = Instant::now();
    let out = run(&[], &xchg, &["--timeout", "3s"], &["sleep", "1000"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(stderr.contains("did not finish within 3s"), "{stderr}");
    assert!(t0.elapsed() < RUN_TIMEOUT);

    let xchg = scratch().join("xchg-poweroff");
    let out = run(&[], &xchg, &[], &["poweroff", "-f"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("the guest powered off"), "{stderr}");
    assert!(!xchg.join("in-vm-exit").exists());
}

/// Bootstraps with `spec`; returns stderr after checking that it failed
/// and left neither the base nor a partial folder.
fn failed_bootstrap(name: &str, spec: &str) -> String {
    let dir = scratch().join(name);
    std::fs::create_dir_all(&dir).expect("spec folder");
    let spec_path = dir.join("spec.toml");
    std::fs::write(&spec_path, spec).expect("spec");
    let base = dir.join("base");
    let mut cmd = Command::new(tests::vmm_bin());
    cmd.arg("bootstrap")
        .arg("--spec")
        .arg(&spec_path)
        .arg("--out")
        .arg(&base);
    let out = output_within(cmd, BOOTSTRAP_TIMEOUT);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["spec.toml"], "bootstrap left files behind");
    stderr
}

#[test]
fn kvm_bootstrap_of_a_guest_without_sshd_times_out_and_leaves_no_base() {
    if !tests::require_kvm() {
        return;
    }
    // No mode=sshd: the kit guest prints its ready line and idles.
    let stderr = failed_bootstrap("no-sshd", "[guest]\nappend = \"\"\n[ssh]\nwait = \"20s\"\n");
    assert!(
        stderr.contains("did not open its SSH port 22 within 20s"),
        "{stderr}"
    );
}

#[test]
fn kvm_bootstrap_of_a_guest_that_powers_off_says_so_and_leaves_no_base() {
    if !tests::require_kvm() {
        return;
    }
    let stderr = failed_bootstrap("poweroff", "[guest]\nappend = \"run=true\"\n");
    assert!(
        stderr.contains("the guest powered off before bootstrap finished"),
        "{stderr}"
    );
    assert!(
        stderr.contains("vmm-guest: exit 0"),
        "console tail: {stderr}"
    );
}
