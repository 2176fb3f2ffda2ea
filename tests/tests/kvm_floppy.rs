//! A floppy image built by `vmm floppy build` is read by a real guest: the
//! test guest mounts it as vfat over virtio-blk (read-only) and prints the
//! answer file and a long-named file it holds.
//!
//! Needs the kit (`vmm guest build`) in its default folder and a hardware
//! KVM (run through `scripts/with-kvm` elsewhere).

// Integration tests: the whole file is test code.
#![allow(clippy::tests_outside_test_module)]

use std::process::Command;
use std::time::Duration;

use tests::guest::{BootedGuest, BOOT_TIMEOUT, EXIT_MARKER_PREFIX, READY_MARKER};

const AFTER_READY: Duration = Duration::from_secs(240);

#[test]
fn kvm_guest_mounts_a_built_floppy_and_reads_its_files() {
    if !tests::require_kvm() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmm-kvm-floppy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let answer = dir.join("winnt.sif");
    std::fs::write(&answer, "[Unattended]\r\nUnattendMode=FullUnattended\r\n").unwrap();
    let long = dir.join("Post Install Notes.txt");
    std::fs::write(&long, "floppy-long-name-ok\n").unwrap();
    let image = dir.join("answers.img");

    let built = Command::new(tests::vmm_bin())
        .args(["floppy", "build", "--label", "WINSETUP", "--out"])
        .arg(&image)
        .arg("--add")
        .arg(&answer)
        .arg("--add")
        .arg(format!("{}=NOTES/Post Install Notes.txt", long.display()))
        .output()
        .expect("run vmm floppy build");
    assert!(built.status.success(), "{built:?}");

    let disk = format!("{},ro", image.display());
    let cmd = "mkdir -p /mnt/a && mount -t vfat -o ro /dev/vda /mnt/a && \
               cat /mnt/a/winnt.sif && cat '/mnt/a/NOTES/Post Install Notes.txt' && \
               ls /mnt/a";
    let append = format!("run=\"{cmd}\"");
    let mut guest = BootedGuest::start(&["--disk", &disk, "--append", &append]);
    guest.expect_line(READY_MARKER, BOOT_TIMEOUT);
    guest.expect_line("UnattendMode=FullUnattended", AFTER_READY);
    guest.expect_line("floppy-long-name-ok", AFTER_READY);
    let status = guest.expect_line(EXIT_MARKER_PREFIX, AFTER_READY);
    assert!(status.ends_with("exit 0"), "{status}: {:#?}", guest.seen);
    assert_eq!(guest.wait_exit(AFTER_READY).code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
