//! The test guest kit (`vmm guest build`): what its initrd holds, and that
//! two builds give the same bytes. Needs apt with Debian 12 package lists
//! and, for the first build on a machine, network access to the mirror.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;

use vmm::guest::cpio::{Archive, Kind};
use vmm::guest::{self, BuildReport, MODULES};

/// One built kit, read into memory.
struct Built {
    kernel: Vec<u8>,
    initrd: Vec<u8>,
    key: Vec<u8>,
    report: BuildReport,
}

/// Two builds into fresh folders (shared by every test in this file).
fn builds() -> &'static (Built, Built) {
    static BUILDS: OnceLock<(Built, Built)> = OnceLock::new();
    BUILDS.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("vmm-kit-test-{}", std::process::id()));
        let debs = guest::deb_cache_dir().expect("cache folder");
        let build = |name: &str| {
            let dir = root.join(name);
            let report = guest::build(&dir, &debs).expect("vmm guest build");
            let read = |f: &str| std::fs::read(dir.join(f)).expect(f);
            Built {
                kernel: read("kernel"),
                initrd: read("initrd"),
                key: read("key"),
                report,
            }
        };
        let pair = (build("a"), build("b"));
        std::fs::remove_dir_all(&root).expect("remove test folders");
        pair
    })
}

fn initrd() -> Archive {
    guest::read_initrd(&builds().0.initrd).expect("initrd parses as LZ4 + cpio newc")
}

fn file<'a>(archive: &'a Archive, path: &str) -> &'a [u8] {
    match &archive
        .get(path)
        .unwrap_or_else(|| panic!("initrd lacks {path}"))
        .kind
    {
        Kind::File(data) => data,
        other => panic!("{path} is not a file: {other:?}"),
    }
}

/// Follows symlinks inside the archive to a regular file's path.
fn resolve(archive: &Archive, path: &str) -> String {
    let mut path = path.trim_start_matches('/').to_string();
    for _ in 0..8 {
        match archive.get(&path).map(|e| &e.kind) {
            Some(Kind::Symlink(target)) if target.starts_with('/') => {
                path = target.trim_start_matches('/').to_string()
            }
            Some(Kind::Symlink(target)) => {
                let dir = Path::new(&path)
                    .parent()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                path = format!("{dir}/{target}");
            }
            Some(Kind::File(_)) => return path,
            other => panic!("{path} resolves to {other:?}"),
        }
    }
    panic!("symlink loop at {path}")
}

#[cfg(test)]
mod kit {
    use super::*;

    #[test]
    fn kit_two_builds_give_identical_bytes() {
        let (a, b) = builds();
        assert!(a.initrd == b.initrd, "initrd bytes differ between builds");
        assert!(a.kernel == b.kernel, "kernel bytes differ between builds");
        assert_eq!(a.key, b.key);
        assert_eq!(&a.kernel[0x202..0x206], b"HdrS", "kernel is not a bzImage");
        println!("packages:");
        for p in &a.report.packages {
            println!("  {} {} {} bytes", p.name, p.version, p.size);
        }
        println!(
            "kernel {} bytes, initrd {} bytes",
            a.kernel.len(),
            a.initrd.len()
        );
    }

    #[test]
    fn kit_initrd_holds_every_module_with_its_dependencies_in_load_order() {
        let archive = initrd();
        let module_dir = archive
            .entries()
            .keys()
            .find_map(|p| p.strip_suffix("/modules.dep"))
            .expect("lib/modules/KVER/modules.dep")
            .to_string();
        let builtin: BTreeSet<String> =
            String::from_utf8_lossy(file(&archive, &format!("{module_dir}/builtin")))
                .lines()
                .map(str::to_string)
                .collect();
        let mut modules: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (path, entry) in archive.entries() {
            if let (Some(name), Kind::File(data)) = (
                path.strip_prefix("lib/modules/")
                    .and_then(|n| n.split_once('/'))
                    .and_then(|(_, n)| n.strip_suffix(".ko")),
                &entry.kind,
            ) {
                let info = guest::elf::modinfo(data).unwrap_or_else(|e| panic!("{name}: {e}"));
                modules.insert(name.to_string(), info);
            }
        }
        let init = String::from_utf8_lossy(file(&archive, "init")).into_owned();
        // One busybox modprobe loads every module, in the order given.
        let order: Vec<&str> = init
            .lines()
            .find_map(|l| l.strip_prefix("modprobe -q -a "))
            .expect("/init runs modprobe -a")
            .split(' ')
            .take_while(|w| !w.starts_with('2'))
            .collect();
        let dep = String::from_utf8_lossy(file(&archive, &format!("{module_dir}/modules.dep")))
            .into_owned();
        for name in &order {
            assert!(
                dep.contains(&format!("{name}.ko:\n")),
                "modules.dep lacks {name}"
            );
        }
        let position = |name: &str| order.iter().position(|m| *m == name);
        for wanted in MODULES {
            assert!(
                modules.contains_key(wanted) || builtin.contains(wanted),
                "{wanted} missing"
            );
        }
        assert_eq!(
            order.len(),
            modules.len(),
            "/init loads every module file once"
        );
        for (name, info) in &modules {
            let at = position(name).unwrap_or_else(|| panic!("/init does not load {name}"));
            for (key, value) in info {
                if key != "depends" {
                    continue;
                }
                for dep in value.split(',').filter(|d| !d.is_empty()) {
                    let dep = dep.replace('-', "_");
                    if builtin.contains(&dep) {
                        continue;
                    }
                    let dep_at = position(&dep).unwrap_or_else(|| panic!("{name} needs {dep}"));
                    assert!(dep_at < at, "{dep} loads after {name}");
                }
            }
        }
        // cifs's soft dependencies (SMB3 signing and encryption) come first.
        let cifs = position("cifs").expect("cifs loaded");
        for soft in ["gcm", "ccm", "cmac", "ecb", "sha512_generic"] {
            let at = position(soft).unwrap_or_else(|| panic!("softdep {soft} missing"));
            assert!(at < cifs, "{soft} loads after cifs");
        }
        // Loading is quiet: modprobe's complaints go to /dev/null, and only
        // required modules missing from /sys/module are reported.
        assert!(init.contains(" 2>/dev/null\n"));
        assert!(init.contains("[ -d /sys/module/$m ] || echo \"vmm-guest: cannot load module $m\""));
    }

    #[test]
    fn kit_initrd_holds_dropbear_with_loader_and_libraries() {
        let archive = initrd();
        let mut queue = vec!["bin/dropbear".to_string()];
        let mut seen = BTreeSet::new();
        let mut interpreter = None;
        while let Some(path) = queue.pop() {
            if !seen.insert(path.clone()) {
                continue;
            }
            let deps = guest::elf::dynamic_deps(file(&archive, &path)).expect("ELF");
            if let Some(interp) = deps.interpreter {
                queue.push(resolve(&archive, &interp));
                interpreter = Some(interp);
            }
            for soname in deps.needed {
                let lib = format!("lib/x86_64-linux-gnu/{soname}");
                queue.push(resolve(&archive, &lib));
            }
        }
        assert_eq!(interpreter.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        for lib in [
            "libc.so.6",
            "libz.so.1",
            "libcrypt.so.1",
            "libtomcrypt.so.1",
        ] {
            assert!(
                seen.contains(&format!("lib/x86_64-linux-gnu/{lib}")),
                "{lib}: {seen:?}"
            );
        }
        let host_key = archive
            .get("etc/dropbear/dropbear_ed25519_host_key")
            .expect("host key");
        assert_eq!(host_key.perm, 0o600);
        assert_eq!(
            archive.get("dev/console").unwrap().kind,
            Kind::CharDevice { major: 5, minor: 1 }
        );
    }

    #[test]
    fn kit_initrd_holds_init_busybox_accounts_and_the_kit_key() {
        let archive = initrd();
        let init = archive.get("init").expect("/init");
        assert_eq!(init.perm, 0o755);
        let text = String::from_utf8_lossy(file(&archive, "init")).into_owned();
        for needle in [
            "#!/bin/sh",
            "mount -t proc",
            "mount -t sysfs",
            "mount -t devtmpfs",
            "mount -t devpts",
            guest::READY_MARKER,
            guest::EXIT_MARKER_PREFIX,
            "poweroff -f",
            "dropbear",
        ] {
            assert!(text.contains(needle), "/init lacks {needle}");
        }
        assert!(file(&archive, "bin/busybox").starts_with(b"\x7fELF"));
        for applet in ["sh", "insmod", "ip", "mount", "poweroff"] {
            assert_eq!(resolve(&archive, &format!("bin/{applet}")), "bin/busybox");
        }
        let passwd = String::from_utf8_lossy(file(&archive, "etc/passwd")).into_owned();
        assert!(passwd
            .lines()
            .any(|l| l.starts_with("root:") && l.ends_with(":/root:/bin/sh")));
        let key = ssh_key::PrivateKey::from_openssh(&builds().0.key).expect("DIR/key is OpenSSH");
        let public = key.public_key().to_openssh().unwrap();
        let authorized = String::from_utf8_lossy(file(&archive, "root/.ssh/authorized_keys"));
        assert_eq!(authorized.trim(), public);
        assert_eq!(archive.get("root").unwrap().perm, 0o700);
    }
}
