//! A base: the folder `vmm bootstrap` writes and `vmm run` revives, never
//! modified after bootstrap renamed it into place.
//!
//! ```text
//! BASE/
//!   base.toml       what run needs: SSH login, share paths, disk files
//!   key             the SSH private key that logs into the guest
//!   snapshot/       state + memory (see crate::snapshot)
//!   disk0.img ...   the disks the guest installed onto (raw; read-only)
//!   floppy.img      the floppy, when the spec had one
//!   spec.toml       the spec bootstrap ran, for reference
//!   bootstrap.log   the guest console during bootstrap
//! ```
//!
//! The snapshot records each disk by its path when bootstrap ran (under
//! a temporary name); a revive looks the disks up in the base instead, by
//! the file names `base.toml` lists, so a base can be moved.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spec::SharesSpec;

/// Version of `base.toml`'s layout.
pub const BASE_FORMAT: u32 = 1;
/// The description file.
pub const INFO_FILE: &str = "base.toml";
/// The SSH key.
pub const KEY_FILE: &str = "key";
/// The snapshot folder.
pub const SNAPSHOT_DIR: &str = "snapshot";
/// The floppy image.
pub const FLOPPY_FILE: &str = "floppy.img";
/// The spec copy.
pub const SPEC_FILE: &str = "spec.toml";
/// The bootstrap console log.
pub const LOG_FILE: &str = "bootstrap.log";
/// Largest `base.toml` or key read.
const MAX_SMALL_FILE: u64 = 64 << 10;

/// Errors reading a base.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// No base there.
    #[error("No base in {0}: run `vmm bootstrap` first (or pass --base)")]
    Missing(PathBuf),
    /// A file cannot be read.
    #[error("Cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// `base.toml` is damaged or from another version.
    #[error("{0} is not a base description this vmm reads: {1}")]
    Bad(PathBuf, String),
    /// No data folder for the default base.
    #[error("Cannot find a data folder: set HOME or XDG_DATA_HOME, or pass the base path")]
    NoDataDir,
}

/// `base.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BaseInfo {
    /// [`BASE_FORMAT`].
    pub format: u32,
    /// SSH login name.
    pub ssh_user: String,
    /// Guest SSH port.
    pub ssh_port: u16,
    /// Where the guest mounted the shares.
    pub shares: SharesSpec,
    /// Disk files in the base, in the guest's order (the floppy last).
    pub disks: Vec<String>,
}

/// The default base: `$XDG_DATA_HOME/vmm/base`, else
/// `~/.local/share/vmm/base`.
pub fn default_dir() -> Result<PathBuf, BaseError> {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(xdg) = from_env("XDG_DATA_HOME") {
        return Ok(xdg.join("vmm").join("base"));
    }
    from_env("HOME")
        .map(|home| home.join(".local/share/vmm/base"))
        .ok_or(BaseError::NoDataDir)
}

/// Reads a small file, refusing one larger than 64 KiB.
pub fn read_small(path: &Path) -> Result<String, BaseError> {
    let err = |e| BaseError::Read(path.to_owned(), e);
    let len = std::fs::metadata(path).map_err(err)?.len();
    if len > MAX_SMALL_FILE {
        return Err(BaseError::Bad(path.to_owned(), "file too large".into()));
    }
    std::fs::read_to_string(path).map_err(err)
}

impl BaseInfo {
    /// Reads `BASE/base.toml`, checking its format and file names.
    pub fn read(base: &Path) -> Result<BaseInfo, BaseError> {
        if !base.join(INFO_FILE).is_file() {
            return Err(BaseError::Missing(base.to_owned()));
        }
        let path = base.join(INFO_FILE);
        let text = read_small(&path)?;
        let info: BaseInfo =
            toml::from_str(&text).map_err(|e| BaseError::Bad(path.clone(), e.message().into()))?;
        if info.format != BASE_FORMAT {
            return Err(BaseError::Bad(
                path,
                format!(
                    "format {} (this vmm reads {BASE_FORMAT}); bootstrap again",
                    info.format
                ),
            ));
        }
        let plain = |n: &str| {
            !n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.contains('\0')
        };
        if let Some(bad) = info.disks.iter().find(|n| !plain(n)) {
            return Err(BaseError::Bad(path, format!("disk name {bad:?}")));
        }
        Ok(info)
    }

    /// Writes `base.toml` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let text = toml::to_string(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join(INFO_FILE), text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> BaseInfo {
        BaseInfo {
            format: BASE_FORMAT,
            ssh_user: "root".into(),
            ssh_port: 22,
            shares: SharesSpec::default(),
            disks: vec!["disk0.img".into(), "floppy.img".into()],
        }
    }

    #[test]
    fn base_info_round_trips_and_refuses_escaping_disk_names() {
        let dir = std::env::temp_dir().join(format!("vmm-base-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(BaseInfo::read(&dir), Err(BaseError::Missing(_))));
        info().write(&dir).unwrap();
        assert_eq!(BaseInfo::read(&dir).unwrap(), info());

        for bad in ["../etc/passwd", "", "..", "a/b"] {
            let mut i = info();
            i.disks = vec![bad.into()];
            i.write(&dir).unwrap();
            let e = BaseInfo::read(&dir).unwrap_err().to_string();
            assert!(e.contains("disk name"), "{bad}: {e}");
        }
        let mut i = info();
        i.format = 99;
        i.write(&dir).unwrap();
        assert!(BaseInfo::read(&dir)
            .unwrap_err()
            .to_string()
            .contains("bootstrap again"));
        std::fs::write(dir.join(INFO_FILE), "garbage = [").unwrap();
        assert!(BaseInfo::read(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
