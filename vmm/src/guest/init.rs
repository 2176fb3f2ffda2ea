//! The guest's `/init` script (busybox `sh`), generated with the module
//! load order baked in.
//!
//! Kernel command-line parameters that the kernel does not know and that
//! hold a `=` reach `/init` as environment variables, so `run`, `mode` and
//! `addr` are read from the environment; the kernel strips the double
//! quotes around a value with spaces.
//!
//! Limitations:
//! - A `run` value cannot contain a double quote (the kernel's command-line
//!   syntax has no escape for it).

use super::modules::Load;
use super::{DEFAULT_ADDR, EXIT_MARKER_PREFIX, READY_MARKER};

/// Path of the guest's dropbear host key.
pub const HOST_KEY_PATH: &str = "etc/dropbear/dropbear_ed25519_host_key";
/// Folder holding one folder per kernel version, with the module files
/// (`NAME.ko`) and a `modules.dep` for busybox's modprobe.
pub const MODULE_DIR: &str = "lib/modules";

/// The `/init` script loading `modules` in the given order.
pub fn script(modules: &[Load]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n\
         # /init of the vmm test guest, written by `vmm guest build`.\n\
         # Kernel command line: run=\"CMD\", or mode=sshd [addr=IP/PREFIX].\n\
         export PATH=/bin HOME=/root\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mkdir -p /dev/pts\n\
         mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts\n\
         # Modules in dependency order, all in one busybox process (a process\n\
         # costs much in a nested VM); only failures of required ones are reported\n\
         # (optional ones, such as CPU-specific crypto drivers, may not apply).\n",
    );
    let names: Vec<&str> = modules.iter().map(|l| l.name.as_str()).collect();
    if !names.is_empty() {
        s.push_str(&format!("modprobe -q -a {} 2>/dev/null\n", names.join(" ")));
    }
    let required: Vec<&str> = modules
        .iter()
        .filter(|l| l.required)
        .map(|l| l.name.as_str())
        .collect();
    if !required.is_empty() {
        s.push_str(&format!(
            "for m in {}; do\n\
             \t[ -d /sys/module/$m ] || echo \"vmm-guest: cannot load module $m\"\n\
             done\n",
            required.join(" ")
        ));
    }
    s.push_str(&format!(
        "echo \"{READY_MARKER}\"\n\
         if [ -n \"$run\" ]; then\n\
         \tsh -c \"$run\"\n\
         \techo \"{EXIT_MARKER_PREFIX}$?\"\n\
         \tsync\n\
         \tpoweroff -f\n\
         elif [ \"$mode\" = sshd ]; then\n\
         \tip link set lo up\n\
         \tip addr add \"${{addr:-{DEFAULT_ADDR}}}\" dev eth0\n\
         \tip link set eth0 up\n\
         \tdropbear -F -s -r /{HOST_KEY_PATH}\n\
         \techo \"vmm-guest: dropbear exit $?\"\n\
         \tpoweroff -f\n\
         fi\n\
         while :; do sleep 3600; done\n"
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_in_the_given_order_with_required_flags() {
        let s = script(&[
            Load {
                name: "gcm".into(),
                required: false,
            },
            Load {
                name: "cifs".into(),
                required: true,
            },
        ]);
        assert!(s.contains("\nmodprobe -q -a gcm cifs 2>/dev/null\n"));
        assert!(s.contains("\nfor m in cifs; do\n"));
        assert!(s.find("for m in").unwrap() < s.find(READY_MARKER).unwrap());
    }

    #[test]
    fn script_mounts_and_handles_both_modes() {
        let s = script(&[]);
        assert!(s.starts_with("#!/bin/sh\n"));
        for needle in [
            "mount -t proc",
            "mount -t sysfs",
            "mount -t devtmpfs",
            "mount -t devpts",
            "sh -c \"$run\"",
            "vmm-guest: exit $?",
            "poweroff -f",
            "${addr:-192.168.0.1/24}",
            "dropbear -F -s -r /etc/dropbear/dropbear_ed25519_host_key",
        ] {
            assert!(s.contains(needle), "missing {needle}");
        }
    }
}
