//! `vmm guest build`: fetches the packages, picks the files, assembles the
//! initrd and writes the kit.
//!
//! Library resolution: the `DT_NEEDED` names of dropbear (and, in turn, of
//! each library found) are looked up as files in the standard multiarch
//! directories of the packages in dropbear-bin's dependency closure
//! (`Pre-Depends`/`Depends`, followed recursively). Debian computes a
//! binary package's library dependencies from exactly these `DT_NEEDED`
//! entries (dpkg-shlibdeps), so the providers are in that closure; a name
//! found in none of them stops the build with an error. This needs only
//! `apt-cache show`, unlike `dpkg -S` (which knows installed packages
//! only) or apt-file (which needs the large Contents indices).
//!
//! Limitations:
//! - Runs the packaged busybox once (`busybox --list`) to learn its applet
//!   names, so the build host must run x86-64 Linux binaries.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use super::apt::{self, PackageInfo};
use super::cpio::{Archive, Kind};
use super::deb::{self, Node, Tree};
use super::modules::{Module, ModuleSet};
use super::{elf, init, keys, lz4, BuildReport, FetchedPackage, GuestError, MODULES};

/// Package whose first dependency is the current cloud kernel image.
const KERNEL_META: &str = "linux-image-cloud-amd64";
const BUSYBOX_PACKAGE: &str = "busybox-static";
const DROPBEAR_PACKAGE: &str = "dropbear-bin";
const DROPBEAR_PATH: &str = "usr/sbin/dropbear";
/// Where the kit places every library, by soname.
const LIB_DIR: &str = "lib/x86_64-linux-gnu";
/// Where packages keep the libraries the guest may need.
const SEARCH_DIRS: [&str; 4] = [
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib",
];
/// Most packages in dropbear-bin's dependency closure.
const MAX_CLOSURE: usize = 64;
/// Most busybox applets accepted.
const MAX_APPLETS: usize = 1000;
/// Cap on one decompressed kernel module.
const MAX_MODULE: u64 = 64 << 20;

/// Builds the kit into `out`, with packages cached in `debs`.
pub fn build(out: &Path, debs: &Path) -> Result<BuildReport, GuestError> {
    let mut report = BuildReport::default();
    let keys = keys::kit_keys().map_err(GuestError::Keys)?;

    let meta = apt::show(KERNEL_META)?;
    let image_name = meta
        .depends
        .iter()
        .find(|d| d.starts_with("linux-image-"))
        .ok_or_else(|| GuestError::NoKernelImage(KERNEL_META.into()))?;
    let image = apt::show(image_name)?;
    let (kernel, kver, modules) = unpack_kernel(&image, debs, &mut report)?;
    let plan = modules.plan(&MODULES)?;

    let busybox_info = apt::show(BUSYBOX_PACKAGE)?;
    let busybox_tree = unpack(&busybox_info, debs, &mut report, |p| p == "bin/busybox")?;
    let busybox = file(&busybox_tree, &busybox_info.name, "bin/busybox")?;
    let applets = busybox_applets(busybox)?;

    let dropbear_tree = unpack_closure(DROPBEAR_PACKAGE, debs, &mut report)?;
    let dropbear = file(&dropbear_tree, DROPBEAR_PACKAGE, DROPBEAR_PATH)?;
    let libs = resolve_libraries(&dropbear_tree, "dropbear", dropbear)?;

    let mut archive = Archive::default();
    add_base(&mut archive, &keys);
    archive.insert("bin/busybox", 0o755, Kind::File(busybox.to_vec()));
    for applet in &applets {
        archive.insert(
            &format!("bin/{applet}"),
            0o777,
            Kind::Symlink("busybox".into()),
        );
    }
    archive.insert("bin/dropbear", 0o755, Kind::File(dropbear.to_vec()));
    for (soname, data) in &libs.files {
        archive.insert(
            &format!("{LIB_DIR}/{soname}"),
            0o755,
            Kind::File(data.clone()),
        );
        report.libraries.push(soname.clone());
    }
    if let Some(interp) = &libs.interpreter {
        let name = interp.rsplit('/').next().unwrap_or(interp);
        let target = format!("/{LIB_DIR}/{name}");
        if interp.trim_start_matches('/') != target.trim_start_matches('/') {
            archive.insert(interp, 0o777, Kind::Symlink(target));
        }
    }
    let module_dir = format!("{}/{kver}", init::MODULE_DIR);
    // busybox's modprobe needs a modules.dep; /init names every module in
    // load order, so each entry lists no dependencies.
    let mut modules_dep = String::new();
    for load in &plan.order {
        let module = modules
            .get(&load.name)
            .ok_or_else(|| GuestError::MissingFile {
                package: image.name.clone(),
                path: format!("{}.ko", load.name),
            })?;
        let path = format!("{module_dir}/{}.ko", load.name);
        archive.insert(&path, 0o644, Kind::File(module.data.clone()));
        modules_dep.push_str(&format!("{}.ko:\n", load.name));
    }
    let dep_path = format!("{module_dir}/modules.dep");
    archive.insert(&dep_path, 0o644, Kind::File(modules_dep.into_bytes()));
    let builtin: String = modules.builtin().iter().map(|n| format!("{n}\n")).collect();
    let builtin_path = format!("{module_dir}/builtin");
    archive.insert(&builtin_path, 0o644, Kind::File(builtin.into_bytes()));
    archive.insert(
        "init",
        0o755,
        Kind::File(init::script(&plan.order).into_bytes()),
    );

    let newc = archive.to_newc();
    let initrd = lz4::compress(&newc);
    std::fs::create_dir_all(out).map_err(|e| GuestError::Write(out.to_path_buf(), e))?;
    write_atomic(&out.join("kernel"), &kernel, 0o644)?;
    write_atomic(&out.join("initrd"), &initrd, 0o644)?;
    write_atomic(&out.join("key"), keys.client_private.as_bytes(), 0o600)?;

    report.kernel_package = image.name.clone();
    report.kernel_size = kernel.len() as u64;
    report.initrd_size = initrd.len() as u64;
    report.initrd_unpacked_size = newc.len() as u64;
    report.modules = plan.order;
    report.unresolved_softdeps = plan.unresolved_softdeps.into_iter().collect();
    Ok(report)
}

/// Fetches and unpacks one package, recording it in the report.
fn unpack(
    info: &PackageInfo,
    debs: &Path,
    report: &mut BuildReport,
    keep: impl Fn(&str) -> bool,
) -> Result<Tree, GuestError> {
    let (data, downloaded) = apt::fetch(info, debs)?;
    report.packages.push(FetchedPackage {
        name: info.name.clone(),
        version: info.version.clone(),
        size: data.len() as u64,
        downloaded,
    });
    deb::unpack(&data, keep).map_err(|e| GuestError::Deb(info.name.clone(), e))
}

/// A regular file of a package, following symlinks.
fn file<'a>(tree: &'a Tree, package: &str, path: &str) -> Result<&'a [u8], GuestError> {
    tree.resolve(path)
        .map(|(_, _, data)| data)
        .ok_or_else(|| GuestError::MissingFile {
            package: package.to_string(),
            path: path.to_string(),
        })
}

/// The bzImage, the kernel version (its folder under `lib/modules`) and
/// every module of the kernel image package.
fn unpack_kernel(
    image: &PackageInfo,
    debs: &Path,
    report: &mut BuildReport,
) -> Result<(Vec<u8>, String, ModuleSet), GuestError> {
    let tree = unpack(image, debs, report, |p| {
        p.starts_with("boot/vmlinuz-")
            || (p.starts_with("lib/modules/")
                && (p.contains(".ko")
                    || p.ends_with("/modules.builtin.modinfo")
                    || p.ends_with("/modules.builtin")))
    })?;
    let mut kernel = None;
    let mut kver = None;
    let mut modules = ModuleSet::default();
    for (path, node) in tree.into_nodes() {
        let Node::File { data, .. } = node else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or(&path).to_string();
        if path.starts_with("boot/vmlinuz-") {
            kernel = Some(data);
        } else if name == "modules.builtin" {
            kver = path.split('/').nth(2).map(str::to_string);
            modules.add_builtin_list(&String::from_utf8_lossy(&data));
        } else if name == "modules.builtin.modinfo" {
            modules.add_builtin_modinfo(&data);
        } else if let Some(stem) = ko_stem(&name) {
            let data = deb::decompress(&name, &data, MAX_MODULE)
                .map_err(|e| GuestError::Deb(image.name.clone(), e))?;
            modules.insert(Module::from_ko(stem, data)?);
        }
    }
    let kernel = kernel.ok_or_else(|| GuestError::MissingFile {
        package: image.name.clone(),
        path: "boot/vmlinuz-*".into(),
    })?;
    let kver = kver.ok_or_else(|| GuestError::MissingFile {
        package: image.name.clone(),
        path: "lib/modules/*/modules.builtin".into(),
    })?;
    Ok((kernel, kver, modules))
}

/// `virtio_net` for `virtio_net.ko`, `.ko.xz`, `.ko.zst` or `.ko.gz`.
fn ko_stem(name: &str) -> Option<&str> {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
}

/// Fetches `root` and its dependency closure; returns all their files.
fn unpack_closure(root: &str, debs: &Path, report: &mut BuildReport) -> Result<Tree, GuestError> {
    let mut seen = BTreeSet::from([root.to_string()]);
    let mut queue = VecDeque::from([root.to_string()]);
    let mut tree = Tree::default();
    while let Some(name) = queue.pop_front() {
        let info = apt::show(&name)?;
        for dep in &info.depends {
            if seen.len() < MAX_CLOSURE && seen.insert(dep.clone()) {
                queue.push_back(dep.clone());
            }
        }
        tree.merge(unpack(&info, debs, report, |p| {
            p == DROPBEAR_PATH || SEARCH_DIRS.iter().any(|d| p.starts_with(d))
        })?);
    }
    Ok(tree)
}

/// The dynamic loader and libraries a program needs, by soname.
#[derive(Debug, Default)]
struct Libraries {
    interpreter: Option<String>,
    files: BTreeMap<String, Vec<u8>>,
}

/// Follows `DT_NEEDED` from `program` through every library it reaches.
fn resolve_libraries(tree: &Tree, name: &str, program: &[u8]) -> Result<Libraries, GuestError> {
    let mut libs = Libraries::default();
    let mut queue: VecDeque<(String, Vec<u8>)> =
        VecDeque::from([(name.to_string(), program.to_vec())]);
    while let Some((owner, data)) = queue.pop_front() {
        let deps = elf::dynamic_deps(&data).map_err(|e| GuestError::Elf(owner.clone(), e))?;
        if let Some(interp) = deps.interpreter {
            let (_, _, bytes) = tree.resolve(&interp).ok_or_else(|| GuestError::Library {
                soname: interp.clone(),
                needed_by: owner.clone(),
            })?;
            let soname = interp.rsplit('/').next().unwrap_or(&interp).to_string();
            if !libs.files.contains_key(&soname) {
                libs.files.insert(soname.clone(), bytes.to_vec());
                queue.push_back((soname, bytes.to_vec()));
            }
            libs.interpreter.get_or_insert(interp);
        }
        for soname in deps.needed {
            if libs.files.contains_key(&soname) {
                continue;
            }
            let bytes = SEARCH_DIRS
                .iter()
                .find_map(|dir| tree.resolve(&format!("{dir}/{soname}")))
                .map(|(_, _, b)| b.to_vec())
                .ok_or_else(|| GuestError::Library {
                    soname: soname.clone(),
                    needed_by: owner.clone(),
                })?;
            libs.files.insert(soname.clone(), bytes.clone());
            queue.push_back((soname, bytes));
        }
    }
    Ok(libs)
}

/// Applet names of a busybox binary, from running it with `--list`.
fn busybox_applets(busybox: &[u8]) -> Result<BTreeSet<String>, GuestError> {
    let path = std::env::temp_dir().join(format!("vmm-busybox-{}", std::process::id()));
    let run = || -> std::io::Result<std::process::Output> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o700)
            .open(&path)?;
        f.write_all(busybox)?;
        drop(f);
        // busybox picks the applet from argv[0]: only "busybox" lists them.
        std::process::Command::new(&path)
            .arg0("busybox")
            .arg("--list")
            .output()
    };
    let output = run();
    let _ = std::fs::remove_file(&path);
    let output = output.map_err(GuestError::Busybox)?;
    let text = String::from_utf8_lossy(&output.stdout);
    let applets: BTreeSet<String> = text
        .lines()
        .map(str::trim)
        .filter(|a| {
            !a.is_empty()
                && *a != "busybox"
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.[".contains(c))
        })
        .map(str::to_string)
        .collect();
    if !output.status.success() || !applets.contains("sh") || applets.len() > MAX_APPLETS {
        return Err(GuestError::Busybox(std::io::Error::other(
            "busybox --list did not give a plausible applet list",
        )));
    }
    Ok(applets)
}

/// Directories, device node, account files and keys.
fn add_base(archive: &mut Archive, keys: &keys::KitKeys) {
    for dir in ["proc", "sys", "dev", "etc", "run", "var"] {
        archive.insert(dir, 0o755, Kind::Dir);
    }
    archive.insert("tmp", 0o1777, Kind::Dir);
    archive.insert(
        "dev/console",
        0o600,
        Kind::CharDevice { major: 5, minor: 1 },
    );
    archive.insert("sbin", 0o777, Kind::Symlink("bin".into()));
    archive.insert("usr/bin", 0o777, Kind::Symlink("../bin".into()));
    archive.insert("usr/sbin", 0o777, Kind::Symlink("../bin".into()));
    let text = |s: &str| Kind::File(s.as_bytes().to_vec());
    archive.insert("etc/passwd", 0o644, text("root:x:0:0:root:/root:/bin/sh\n"));
    archive.insert("etc/group", 0o644, text("root:x:0:\ntty:x:5:\n"));
    archive.insert("etc/shells", 0o644, text("/bin/sh\n"));
    archive.insert("etc/hostname", 0o644, text("vmm-guest\n"));
    archive.insert("etc/dropbear", 0o755, Kind::Dir);
    archive.insert(
        init::HOST_KEY_PATH,
        0o600,
        Kind::File(keys.dropbear_host_key.clone()),
    );
    archive.insert("root", 0o700, Kind::Dir);
    archive.insert("root/.ssh", 0o700, Kind::Dir);
    archive.insert(
        "root/.ssh/authorized_keys",
        0o600,
        text(&keys.authorized_keys),
    );
}

/// Writes `data` to `path` through a temporary name in the same folder.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), GuestError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let err = |e| GuestError::Write(path.to_path_buf(), e);
    std::fs::write(&tmp, data).map_err(err)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ko_stem_accepts_every_module_compression() {
        assert_eq!(ko_stem("virtio_net.ko"), Some("virtio_net"));
        assert_eq!(ko_stem("cifs.ko.xz"), Some("cifs"));
        assert_eq!(ko_stem("vfat.ko.zst"), Some("vfat"));
        assert_eq!(ko_stem("fat.ko.gz"), Some("fat"));
        assert_eq!(ko_stem("modules.order"), None);
    }

    #[test]
    fn resolve_libraries_reports_a_missing_soname() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let err = resolve_libraries(&Tree::default(), "test", &exe).unwrap_err();
        assert!(matches!(err, GuestError::Library { .. }), "{err}");
    }

    #[test]
    fn base_holds_account_files_and_keys() {
        let keys = keys::kit_keys().unwrap();
        let mut a = Archive::default();
        add_base(&mut a, &keys);
        assert_eq!(a.get("root").unwrap().perm, 0o700);
        assert_eq!(a.get(init::HOST_KEY_PATH).unwrap().perm, 0o600);
        assert_eq!(
            a.get("dev/console").unwrap().kind,
            Kind::CharDevice { major: 5, minor: 1 }
        );
        let Kind::File(passwd) = &a.get("etc/passwd").unwrap().kind else {
            panic!()
        };
        assert!(passwd.starts_with(b"root:x:0:0:"));
    }

    #[test]
    fn write_atomic_leaves_only_the_final_file() {
        let dir = std::env::temp_dir().join(format!("vmm-write-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_atomic(&dir.join("key"), b"secret", 0o600).unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let mode = std::fs::metadata(dir.join("key"))
            .unwrap()
            .permissions()
            .mode();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(names, ["key"]);
        assert_eq!(mode & 0o777, 0o600);
    }
}
