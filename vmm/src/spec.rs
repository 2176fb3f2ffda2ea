//! The bootstrap spec: a TOML file saying which guest `vmm bootstrap`
//! installs and freezes, and how `vmm run` reaches it.
//!
//! Every field is optional; an empty spec (or no `--spec`) bootstraps the
//! project's Linux test guest from the kit in its default folder. Paths are
//! relative to the spec file's folder.
//!
//! ```toml
//! [guest]
//! kernel = "kernel"          # bzImage [default: the guest kit's]
//! initrd = "initrd"          # initramfs [default: the guest kit's]
//! append = "mode=sshd"       # added to the default command line
//! # cmdline = "..."          # or replaces it
//! memory = "256M"
//! cpus = 1
//!
//! [[disk]]                   # repeatable: vda, vdb, ... in order
//! size = "2G"                # a new sparse raw disk, or
//! # image = "base.img"       # a copy of an existing raw image
//!
//! [floppy]                   # a FAT12 image attached read-only after the disks
//! add = ["answers/setup.cmd", "drivers=DRIVERS"]   # SRC[=DEST]
//! unattend = "unattend.toml" # answer-file spec of the floppy crate
//! label = "SETUP"
//!
//! [ssh]
//! user = "root"
//! port = 22
//! key = "key"                # OpenSSH private key [default: the guest kit's]
//! wait = "10m"               # how long bootstrap waits for the port
//!
//! [shares]                   # where the guest sees the shares
//! xchg = "/tmp/xchg"
//! store = "/nix/store"
//!
//! # Run over SSH once the port opens; the default mounts both shares
//! # with the Linux cifs client.
//! post_install = ["..."]
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::ENDPOINT_ADDR;

/// Largest spec file read.
pub const MAX_SPEC_BYTES: u64 = 1 << 20;
/// Most disks a spec may ask for.
pub const MAX_DISKS: usize = 8;

/// Errors in a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file cannot be read.
    #[error("Cannot read spec {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The file is too large.
    #[error("Spec {0} is larger than 1 MiB")]
    TooLarge(PathBuf),
    /// The TOML does not parse or has unknown fields.
    #[error("Spec {0}: {1}")]
    Syntax(PathBuf, String),
    /// A value is out of range or inconsistent.
    #[error("Spec {0}: {1}")]
    Invalid(PathBuf, String),
}

/// A parsed spec, as written (paths not yet resolved).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The guest machine.
    #[serde(default)]
    pub guest: GuestSpec,
    /// Disks, in order.
    #[serde(default, rename = "disk")]
    pub disks: Vec<DiskSpec>,
    /// A floppy image to build and attach.
    #[serde(default)]
    pub floppy: Option<FloppySpec>,
    /// How to reach the guest.
    #[serde(default)]
    pub ssh: SshSpec,
    /// Where the guest sees the shares.
    #[serde(default)]
    pub shares: SharesSpec,
    /// Commands run over SSH once the port opens [default: mount the shares
    /// with the Linux cifs client].
    #[serde(default)]
    pub post_install: Option<Vec<String>>,
}

/// `[guest]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestSpec {
    /// bzImage [default: the kit's].
    pub kernel: Option<PathBuf>,
    /// initramfs [default: the kit's].
    pub initrd: Option<PathBuf>,
    /// Replaces the default command line.
    pub cmdline: Option<String>,
    /// Added to the default command line.
    pub append: String,
    /// Guest RAM (e.g. 256M).
    pub memory: String,
    /// vCPUs.
    pub cpus: u8,
}

impl Default for GuestSpec {
    fn default() -> Self {
        Self {
            kernel: None,
            initrd: None,
            cmdline: None,
            append: "mode=sshd".into(),
            memory: "256M".into(),
            cpus: 1,
        }
    }
}

/// `[[disk]]`: exactly one of `size` and `image`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// A new, empty (sparse) raw disk of this size.
    pub size: Option<String>,
    /// A raw image copied into the base.
    pub image: Option<PathBuf>,
}

/// `[floppy]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FloppySpec {
    /// Files and folders to copy: `SRC` or `SRC=DEST`.
    #[serde(default)]
    pub add: Vec<String>,
    /// Answer-file spec (the floppy crate's TOML format).
    pub unattend: Option<PathBuf>,
    /// Volume label.
    pub label: Option<String>,
    /// Size in KiB: 1440 or 2880.
    #[serde(default = "default_floppy_kib")]
    pub size: u32,
}

fn default_floppy_kib() -> u32 {
    1440
}

/// `[ssh]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshSpec {
    /// Login name.
    pub user: String,
    /// Guest port.
    pub port: u16,
    /// OpenSSH private key [default: the kit's].
    pub key: Option<PathBuf>,
    /// How long bootstrap waits for the port, e.g. "10m" or "90s".
    pub wait: String,
}

impl Default for SshSpec {
    fn default() -> Self {
        Self {
            user: "root".into(),
            port: 22,
            key: None,
            wait: "10m".into(),
        }
    }
}

/// `[shares]`: the paths at which the guest mounts the shares.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharesSpec {
    /// Where xchg (read-write) is mounted.
    pub xchg: String,
    /// Where the store (read-only) is mounted.
    pub store: String,
}

impl Default for SharesSpec {
    fn default() -> Self {
        Self {
            xchg: "/tmp/xchg".into(),
            store: "/nix/store".into(),
        }
    }
}

/// A disk as bootstrap makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// An empty sparse disk of this many bytes.
    Empty(u64),
    /// A copy of this image.
    Copy(PathBuf),
}

/// A spec with defaults applied, values checked and paths made absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The spec as written.
    pub spec: Spec,
    /// Kernel path (absolute).
    pub kernel: PathBuf,
    /// Initramfs path (absolute).
    pub initrd: PathBuf,
    /// The full kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    /// Disks to create, in order.
    pub disks: Vec<DiskSource>,
    /// Floppy, with its paths made absolute.
    pub floppy: Option<FloppySpec>,
    /// SSH private key (absolute).
    pub key: PathBuf,
    /// How long to wait for SSH.
    pub ssh_wait: Duration,
    /// Post-install commands.
    pub post_install: Vec<String>,
}

/// The post-install commands of a Linux guest: mount both shares from the
/// host endpoint with the kernel's cifs client (SMB 3.1.1, guest access).
///
/// `noserverino`: the client numbers inodes itself instead of taking the
/// server's file IDs. Each `vmm run` serves other host folders under the
/// same share names, so the server's ID of a share's root changes between
/// runs; with server inode numbers the revived client would call the root
/// stale (ESTALE) instead of reconnecting to it.
pub fn linux_mount_commands(shares: &SharesSpec) -> Vec<String> {
    let opts = format!("vers=3.1.1,sec=none,noserverino,ip={ENDPOINT_ADDR}");
    vec![format!(
        "mkdir -p {x} {s} && mount -t cifs //{ENDPOINT_ADDR}/xchg {x} -o {opts} && \
         mount -t cifs //{ENDPOINT_ADDR}/store {s} -o {opts},ro",
        x = shell_quote(&shares.xchg),
        s = shell_quote(&shares.store),
    )]
}

/// Quotes `word` for a POSIX shell (single quotes; a quote becomes '\'').
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b))
    {
        return word.to_owned();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Parses `512M`, `2G`, `1GiB`, `65536K` or plain bytes (powers of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

/// Parses a duration such as "90s", "10m" or "1h 30m".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); use e.g. 90s or 10m"))
}

impl Spec {
    /// Reads and parses the spec at `path`.
    pub fn read(path: &Path) -> Result<Spec, SpecError> {
        let meta = std::fs::metadata(path).map_err(|e| SpecError::Read(path.to_owned(), e))?;
        if meta.len() > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge(path.to_owned()));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| SpecError::Read(path.to_owned(), e))?;
        Self::parse(&text).map_err(|e| SpecError::Syntax(path.to_owned(), e))
    }

    /// Parses spec text.
    pub fn parse(text: &str) -> Result<Spec, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }

    /// Applies defaults and checks every value. `origin` names the spec in
    /// errors, `base_dir` is the folder relative paths start from, `kit`
    /// the guest kit's folder (for the default kernel, initrd and key) and
    /// `default_cmdline` the command line `append` adds to.
    pub fn resolve(
        &self,
        origin: &Path,
        base_dir: &Path,
        kit: &Path,
        default_cmdline: &str,
    ) -> Result<Resolved, SpecError> {
        let invalid = |text: String| SpecError::Invalid(origin.to_owned(), text);
        let abs = |p: &Path| base_dir.join(p);
        let kit = crate::guest::Kit::in_dir(kit);
        let g = &self.guest;
        let kernel = g.kernel.as_deref().map_or(kit.kernel.clone(), abs);
        let initrd = g.initrd.as_deref().map_or(kit.initrd.clone(), abs);
        let key = self.ssh.key.as_deref().map_or(kit.key.clone(), abs);
        let cmdline = match (&g.cmdline, g.append.trim()) {
            (Some(c), _) => c.clone(),
            (None, "") => default_cmdline.to_owned(),
            (None, a) => format!("{default_cmdline} {a}"),
        };
        let mem_size = parse_size(&g.memory).ok_or_else(|| {
            invalid(format!(
                "guest.memory {:?} is not a size (e.g. 256M)",
                g.memory
            ))
        })?;
        if g.cpus == 0 || g.cpus > 64 {
            return Err(invalid(format!("guest.cpus {} is not in 1..=64", g.cpus)));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(invalid(format!("at most {MAX_DISKS} disks")));
        }
        let mut disks = Vec::new();
        for (i, d) in self.disks.iter().enumerate() {
            disks.push(match (&d.size, &d.image) {
                (Some(size), None) => {
                    let bytes = parse_size(size)
                        .filter(|b| *b >= 512 && b % 512 == 0)
                        .ok_or_else(|| {
                            invalid(format!(
                                "disk {}: size {size:?} is not a size in whole sectors (e.g. 2G)",
                                i + 1
                            ))
                        })?;
                    DiskSource::Empty(bytes)
                }
                (None, Some(image)) => DiskSource::Copy(abs(image)),
                _ => {
                    return Err(invalid(format!(
                        "disk {}: give exactly one of size and image",
                        i + 1
                    )))
                }
            });
        }
        let floppy = self.floppy.as_ref().map(|f| FloppySpec {
            add: f
                .add
                .iter()
                .map(|a| match a.split_once('=') {
                    Some((src, dest)) => format!("{}={dest}", abs(Path::new(src)).display()),
                    None => abs(Path::new(a)).display().to_string(),
                })
                .collect(),
            unattend: f.unattend.as_deref().map(abs),
            ..f.clone()
        });
        if let Some(f) = &floppy {
            if floppy::Format::from_kib(f.size).is_none() {
                return Err(invalid(format!(
                    "floppy.size {} is not 1440 or 2880",
                    f.size
                )));
            }
        }
        if self.ssh.user.is_empty() || self.ssh.port == 0 {
            return Err(invalid(
                "ssh.user must not be empty and ssh.port not 0".into(),
            ));
        }
        let ssh_wait =
            parse_duration(&self.ssh.wait).map_err(|e| invalid(format!("ssh.wait: {e}")))?;
        for (name, path) in [("xchg", &self.shares.xchg), ("store", &self.shares.store)] {
            if !path.starts_with('/') {
                return Err(invalid(format!(
                    "shares.{name} {path:?} must be an absolute path in the guest"
                )));
            }
        }
        let post_install = self
            .post_install
            .clone()
            .unwrap_or_else(|| linux_mount_commands(&self.shares));
        Ok(Resolved {
            spec: self.clone(),
            kernel,
            initrd,
            cmdline,
            mem_size,
            disks,
            floppy,
            key,
            ssh_wait,
            post_install,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> Result<Resolved, SpecError> {
        Spec::parse(text)
            .map_err(|e| SpecError::Syntax("t".into(), e))?
            .resolve(
                Path::new("spec.toml"),
                Path::new("/specs"),
                Path::new("/kit"),
                "console=ttyS0",
            )
    }

    #[test]
    fn an_empty_spec_is_the_kit_guest_with_sshd_and_share_mounts() {
        let r = resolve("").unwrap();
        assert_eq!(r.kernel, Path::new("/kit/kernel"));
        assert_eq!(r.initrd, Path::new("/kit/initrd"));
        assert_eq!(r.key, Path::new("/kit/key"));
        assert_eq!(r.cmdline, "console=ttyS0 mode=sshd");
        assert_eq!(r.mem_size, 256 << 20);
        assert_eq!(r.ssh_wait, Duration::from_secs(600));
        assert!(r.disks.is_empty() && r.floppy.is_none());
        assert_eq!(r.post_install.len(), 1);
        let mount = &r.post_install[0];
        assert!(mount.contains("//192.168.0.2/xchg /tmp/xchg"), "{mount}");
        assert!(mount.contains("//192.168.0.2/store /nix/store"), "{mount}");
        assert!(mount.ends_with(",ro"), "{mount}");
    }

    #[test]
    fn fields_resolve_relative_to_the_spec_folder() {
        let r = resolve(
            r#"
            post_install = ["true"]
            [guest]
            kernel = "k"
            initrd = "/abs/i"
            cmdline = "console=ttyS0 x=1"
            memory = "1G"
            cpus = 2
            [[disk]]
            size = "2G"
            [[disk]]
            image = "base.img"
            [floppy]
            add = ["a.cmd", "drv=DRIVERS"]
            unattend = "u.toml"
            [ssh]
            user = "builder"
            key = "id"
            wait = "90s"
            [shares]
            xchg = "/x"
            "#,
        )
        .unwrap();
        assert_eq!(r.kernel, Path::new("/specs/k"));
        assert_eq!(r.initrd, Path::new("/abs/i"));
        assert_eq!(r.cmdline, "console=ttyS0 x=1");
        assert_eq!(r.mem_size, 1 << 30);
        assert_eq!(
            r.disks,
            vec![
                DiskSource::Empty(2 << 30),
                DiskSource::Copy("/specs/base.img".into())
            ]
        );
        let f = r.floppy.unwrap();
        assert_eq!(f.add, vec!["/specs/a.cmd", "/specs/drv=DRIVERS"]);
        assert_eq!(f.unattend.as_deref(), Some(Path::new("/specs/u.toml")));
        assert_eq!(f.size, 1440);
        assert_eq!(r.key, Path::new("/specs/id"));
        assert_eq!(r.ssh_wait, Duration::from_secs(90));
        assert_eq!(r.post_install, vec!["true"]);
        assert_eq!(r.spec.shares.store, "/nix/store");
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        for (text, needle) in [
            ("[guest]\nmemory = \"lots\"", "guest.memory"),
            ("[guest]\ncpus = 0", "guest.cpus"),
            ("[[disk]]\nsize = \"1G\"\nimage = \"x\"", "exactly one"),
            ("[[disk]]\nsize = \"100\"", "whole sectors"),
            ("[floppy]\nsize = 720", "floppy.size"),
            ("[ssh]\nwait = \"soon\"", "ssh.wait"),
            ("[ssh]\nport = 0", "ssh.port"),
            ("[shares]\nxchg = \"rel\"", "shares.xchg"),
            ("colour = \"blue\"", "unknown field"),
            ("[guest]\ncpus = \"two\"", "invalid type"),
        ] {
            let e = resolve(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn shell_quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("/tmp/xchg"), "/tmp/xchg");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
