//! Opening the KVM device and checking it can run an ordinary guest.
//!
//! A `/dev/kvm` served by `kvm_pvm` (found on some cloud sandboxes) opens
//! and answers ioctls but emulates guest kernel mode instruction by
//! instruction; Linux does not boot on it. It is recognised from
//! `/sys/module` and refused with the way out.
//!
//! Limitations:
//! - kvm_pvm is recognised by its module being loaded without kvm_intel or
//!   kvm_amd; a host running both kinds is taken as hardware KVM.

use std::fs::OpenOptions;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use kvm_ioctls::{Cap, Kvm};

/// The KVM device's usual path.
pub const DEFAULT_DEVICE: &str = "/dev/kvm";
/// Where loaded kernel modules are listed.
pub const SYS_MODULE_DIR: &str = "/sys/module";
/// KVM API version this VMM speaks.
const KVM_API_VERSION: i32 = 12;

/// Capabilities a Linux guest needs from KVM here.
const REQUIRED_CAPS: [(Cap, &str); 8] = [
    (Cap::Irqchip, "in-kernel irqchip"),
    (Cap::Pit2, "in-kernel PIT"),
    (Cap::UserMemory, "user memory slots"),
    (Cap::SetTssAddr, "TSS address"),
    (Cap::ExtCpuid, "CPUID control"),
    (Cap::IrqRouting, "interrupt routing"),
    (Cap::Irqfd, "irqfd"),
    (Cap::Ioeventfd, "ioeventfd"),
];

/// Why KVM cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// No such device node.
    #[error("KVM device {0} does not exist; this host needs KVM (a CPU with VT-x or AMD-V and the kvm_intel or kvm_amd module)")]
    Missing(PathBuf),
    /// The device exists but this user may not open it.
    #[error("No permission to open KVM device {0}; add this user to the kvm group or run as root")]
    Permission(PathBuf),
    /// Opening failed otherwise.
    #[error("Cannot open KVM device {0}")]
    Open(PathBuf, #[source] std::io::Error),
    /// kvm_pvm serves the device.
    #[error("KVM device {0} is served by kvm_pvm, which cannot run ordinary guest kernels; use a host with VT-x or AMD-V, or run through scripts/with-kvm")]
    Pvm(PathBuf),
    /// The file does not answer KVM ioctls.
    #[error("{0} is not a KVM device")]
    NotKvm(PathBuf),
    /// A needed capability is absent.
    #[error("KVM on this host lacks {0}")]
    MissingCap(&'static str),
}

/// Whether `sys_module_dir` shows kvm_pvm without a hardware KVM module.
pub fn is_pvm_host(sys_module_dir: &Path) -> bool {
    let has = |m: &str| sys_module_dir.join(m).exists();
    has("kvm_pvm") && !has("kvm_intel") && !has("kvm_amd")
}

/// Opens `device`, refusing kvm_pvm hosts (as seen in `sys_module_dir`)
/// and devices without the capabilities a Linux guest needs.
pub fn open(device: &Path, sys_module_dir: &Path) -> Result<Kvm, KvmError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(device)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => KvmError::Missing(device.to_owned()),
            std::io::ErrorKind::PermissionDenied => KvmError::Permission(device.to_owned()),
            _ => KvmError::Open(device.to_owned(), e),
        })?;
    if is_pvm_host(sys_module_dir) {
        return Err(KvmError::Pvm(device.to_owned()));
    }
    // SAFETY: the descriptor was just opened by us and its ownership moves
    // into the Kvm object, which closes it.
    let kvm = unsafe { Kvm::from_raw_fd(file.into_raw_fd()) };
    if kvm.get_api_version() != KVM_API_VERSION {
        return Err(KvmError::NotKvm(device.to_owned()));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vmm-kvm-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn pvm_is_recognised_only_without_hardware_modules() {
        let d = tmp("mods");
        assert!(!is_pvm_host(&d));
        std::fs::create_dir_all(d.join("kvm_pvm")).unwrap();
        assert!(is_pvm_host(&d));
        std::fs::create_dir_all(d.join("kvm_amd")).unwrap();
        assert!(!is_pvm_host(&d));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_device_and_plain_file_are_told_apart() {
        let d = tmp("dev");
        let none = tmp("none");
        assert!(matches!(
            open(&d.join("nope"), &none),
            Err(KvmError::Missing(_))
        ));
        let plain = d.join("plain");
        std::fs::write(&plain, b"").unwrap();
        assert!(matches!(open(&plain, &none), Err(KvmError::NotKvm(_))));
        std::fs::create_dir_all(none.join("kvm_pvm")).unwrap();
        assert!(matches!(open(&plain, &none), Err(KvmError::Pvm(_))));
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&none).unwrap();
    }
}
