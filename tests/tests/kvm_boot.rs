//! `vmm boot` boots the guest kit under KVM: ready marker, `run=` output
//! and status, vCPU and memory sizes the guest sees, and the exit status
//! for power-off, reboot, panic and triple fault.
//!
//! Needs the kit (`vmm guest build`) in its default folder and a hardware
//! KVM (run through `scripts/with-kvm` elsewhere).

// Integration tests: the whole file is test code.
#![allow(clippy::tests_outside_test_module)]

use std::time::Duration;

use tests::guest::{BootedGuest, BOOT_TIMEOUT, EXIT_MARKER_PREFIX, READY_MARKER};

/// `vmm boot`'s documented statuses.
const EXIT_RESET: i32 = 3;
const EXIT_TRIPLE_FAULT: i32 = 4;
const AFTER_READY: Duration = Duration::from_secs(120);

#[test]
fn kvm_boot_ready_run_output_and_status_then_power_off_exits_0() {
    if !tests::require_kvm() {
        return;
    }
    let mut g = BootedGuest::start(&["--append", "run=\"echo hello-from-guest; exit 7\""]);
    g.expect_line(READY_MARKER, BOOT_TIMEOUT);
    g.expect_line("hello-from-guest", AFTER_READY);
    let status = g.expect_line(EXIT_MARKER_PREFIX, AFTER_READY);
    assert!(status.ends_with("exit 7"), "{status}");
    assert_eq!(g.wait_exit(AFTER_READY).code(), Some(0));
}

#[test]
fn kvm_boot_two_cpus_and_512m_are_what_the_guest_sees() {
    if !tests::require_kvm() {
        return;
    }
    let cmd = "run=\"echo cpus=$(grep -c ^processor /proc/cpuinfo); grep MemTotal /proc/meminfo\"";
    let mut g = BootedGuest::start(&["--cpus", "2", "--mem", "512M", "--append", cmd]);
    g.expect_line(READY_MARKER, BOOT_TIMEOUT);
    let cpus = g.expect_line("cpus=", AFTER_READY);
    assert!(cpus.ends_with("cpus=2"), "{cpus}");
    let mem = g.expect_line("MemTotal:", AFTER_READY);
    let kib: u64 = mem
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable {mem:?}"));
    let full = 512 * 1024;
    assert!(kib <= full && kib * 100 >= full * 85, "MemTotal {kib} KiB");
    assert_eq!(g.wait_exit(AFTER_READY).code(), Some(0));
}

#[test]
fn kvm_boot_guest_reboot_exits_with_the_reset_status() {
    if !tests::require_kvm() {
        return;
    }
    let mut g = BootedGuest::start(&["--append", "run=\"reboot -f\""]);
    g.expect_line(READY_MARKER, BOOT_TIMEOUT);
    assert_eq!(g.wait_exit(AFTER_READY).code(), Some(EXIT_RESET));
    assert!(!g.seen.iter().any(|l| l.contains(EXIT_MARKER_PREFIX)));
}

#[test]
fn kvm_boot_guest_panic_with_panic_minus_one_exits_with_the_reset_status() {
    if !tests::require_kvm() {
        return;
    }
    let mut g = BootedGuest::start(&["--append", "run=\"echo c > /proc/sysrq-trigger\""]);
    g.expect_line(READY_MARKER, BOOT_TIMEOUT);
    assert_eq!(g.wait_exit(AFTER_READY).code(), Some(EXIT_RESET));
}

#[test]
fn kvm_boot_triple_fault_exits_with_its_own_status() {
    if !tests::require_kvm() {
        return;
    }
    // reboot=t: Linux resets by loading an empty IDT and faulting.
    let mut g = BootedGuest::start(&["--append", "reboot=t run=\"reboot -f\""]);
    g.expect_line(READY_MARKER, BOOT_TIMEOUT);
    assert_eq!(g.wait_exit(AFTER_READY).code(), Some(EXIT_TRIPLE_FAULT));
}
