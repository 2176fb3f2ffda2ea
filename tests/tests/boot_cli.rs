//! `vmm boot` refuses bad input with one line on stderr and a non-zero
//! status, before touching KVM where it can: missing or unreadable files,
//! a kernel that is not a bzImage, bad sizes, a missing, unopenable or
//! non-KVM device, and a kvm_pvm host. No KVM needed.

// Integration tests: the whole file is test code.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch folder with a minimal bzImage header and an initrd.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmm-boot-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut img = vec![0u8; 0x1000];
        img[0x1f1] = 1;
        img[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x211] = 1;
        img[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        std::fs::write(dir.join("kernel"), img).unwrap();
        std::fs::write(dir.join("initrd"), b"070701").unwrap();
        std::fs::write(dir.join("not-a-kernel"), vec![0x7f; 4096]).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `vmm boot ARGS`, with extra environment, and checks it fails with
/// exactly one `vmm: ...` line containing every one of `wanted`.
fn refuses(args: &[&str], env: &[(&str, &Path)], wanted: &[&str]) {
    let mut cmd = Command::new(tests::vmm_bin());
    cmd.arg("boot").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run vmm boot");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded: {stderr}");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?} printed {stderr:?}");
    assert!(lines[0].starts_with("vmm: "), "{stderr}");
    for w in wanted {
        assert!(stderr.contains(w), "{args:?}: {stderr:?} lacks {w:?}");
    }
    assert!(!stderr.contains("panicked"));
}

#[test]
fn missing_kernel_names_the_file() {
    let s = Scratch::new("nokernel");
    let k = s.path("absent");
    refuses(
        &["--kernel", &k, "--initrd", &s.path("initrd")],
        &[],
        &["Cannot read kernel", &k],
    );
}

#[test]
fn unreadable_kernel_and_initrd_are_refused() {
    let s = Scratch::new("unreadable");
    // A directory opens but cannot be read as a file, even by root.
    let dir = s.dir.to_string_lossy().into_owned();
    refuses(
        &["--kernel", &dir, "--initrd", &s.path("initrd")],
        &[],
        &["Cannot read kernel"],
    );
    refuses(
        &["--kernel", &s.path("kernel"), "--initrd", &dir],
        &[],
        &["Cannot read initrd"],
    );
    refuses(
        &["--kernel", &s.path("kernel"), "--initrd", &s.path("absent")],
        &[],
        &["Cannot read initrd"],
    );
}

#[test]
fn a_kernel_that_is_not_a_bzimage_is_refused() {
    let s = Scratch::new("notbz");
    refuses(
        &[
            "--kernel",
            &s.path("not-a-kernel"),
            "--initrd",
            &s.path("initrd"),
        ],
        &[],
        &["is not a bzImage"],
    );
}

#[test]
fn bad_too_small_and_too_large_memory_sizes_are_refused() {
    let s = Scratch::new("mem");
    let base = ["--kernel", &s.path("kernel"), "--initrd", &s.path("initrd")].map(String::from);
    let run = |mem: &str, wanted: &[&str]| {
        let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
        args.extend(["--mem", mem]);
        refuses(&args, &[], wanted);
    };
    run("lots", &["is not a size"]);
    run("12Q", &["is not a size"]);
    run("1M", &["too small"]);
    run("200G", &["exceeds this host"]);
    run("100T", &["too large"]);
    run("99999999999T", &["too large"]);
}

#[test]
fn missing_and_unopenable_kvm_devices_are_refused() {
    let s = Scratch::new("kvmdev");
    let k = s.path("kernel");
    let i = s.path("initrd");
    let absent = s.path("no-kvm");
    refuses(
        &["--kernel", &k, "--initrd", &i, "--kvm-device", &absent],
        &[],
        &["does not exist", &absent, "VT-x or AMD-V"],
    );
    // A directory cannot be opened for writing.
    let dir = s.dir.to_string_lossy().into_owned();
    refuses(
        &["--kernel", &k, "--initrd", &i, "--kvm-device", &dir],
        &[],
        &["Cannot open KVM device"],
    );
}

#[test]
fn a_device_that_is_not_kvm_is_refused() {
    let s = Scratch::new("notkvm");
    let no_modules = s.dir.join("modules");
    std::fs::create_dir_all(&no_modules).unwrap();
    refuses(
        &[
            "--kernel",
            &s.path("kernel"),
            "--initrd",
            &s.path("initrd"),
            "--kvm-device",
            &s.path("initrd"),
        ],
        &[("VMM_SYS_MODULE_DIR", &no_modules)],
        &["is not a KVM device"],
    );
}

#[test]
fn a_kvm_pvm_host_is_refused_with_the_way_out() {
    let s = Scratch::new("pvm");
    let modules = s.dir.join("modules");
    std::fs::create_dir_all(modules.join("kvm_pvm")).unwrap();
    refuses(
        &[
            "--kernel",
            &s.path("kernel"),
            "--initrd",
            &s.path("initrd"),
            "--kvm-device",
            &s.path("initrd"),
        ],
        &[("VMM_SYS_MODULE_DIR", &modules)],
        &["kvm_pvm", "VT-x or AMD-V", "scripts/with-kvm"],
    );
}

#[test]
fn a_command_line_with_control_characters_is_refused() {
    let s = Scratch::new("cmdline");
    refuses(
        &[
            "--kernel",
            &s.path("kernel"),
            "--initrd",
            &s.path("initrd"),
            "--append",
            "a\nb",
        ],
        &[],
        &["printable ASCII"],
    );
}
