//! Shared helpers for the integration tests that boot real guests.
//!
//! Tests that need hardware-assisted KVM are named `kvm_*`: the project's
//! test command runs them all inside one KVM test host (`scripts/with-kvm`)
//! and every other test natively.

use std::path::Path;

/// Why this machine cannot run KVM guests, or `Ok` when it can.
///
/// A `/dev/kvm` served by `kvm_pvm` is refused: it emulates guest kernel
/// mode and an ordinary Linux kernel does not boot on it.
pub fn kvm_unusable_reason() -> Result<(), String> {
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return Err("no /dev/kvm on this machine".into());
    }
    let hw = ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| Path::new("/sys/module").join(m).exists());
    if !hw && Path::new("/sys/module/kvm_pvm").exists() {
        return Err(
            "/dev/kvm is kvm_pvm, which cannot boot ordinary guest kernels; \
                    run the test through scripts/with-kvm"
                .into(),
        );
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    Ok(())
}

/// Gate for a KVM test: `true` when it can run.
///
/// Without a usable KVM it prints `skipped: REASON` and returns `false`,
/// except under `CI=true`, where it panics: CI must never skip.
pub fn require_kvm() -> bool {
    match kvm_unusable_reason() {
        Ok(()) => true,
        Err(reason) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("no usable KVM under CI=true: {reason}")
        }
        Err(reason) => {
            println!("skipped: {reason}");
            false
        }
    }
}

/// The `vmm` binary built alongside the running test executable
/// (`target/<profile>/vmm`, the test being `target/<profile>/deps/NAME`).
pub fn vmm_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("vmm");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (cargo build -p vmm)",
        bin.display()
    );
    bin
}

pub mod guest;
