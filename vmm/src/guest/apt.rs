//! Package metadata from `apt-cache show` and downloads with
//! `apt-get download` into the kit's cache, each checked against the
//! SHA-256 that apt's package index gives.
//!
//! A package already in the cache with the right checksum is not fetched
//! again, so a second build works without network access.
//!
//! Limitations:
//! - Needs a Debian system with apt and current package lists
//!   (`apt-get update`); the kit targets Debian 12 (bookworm) on amd64.
//! - Dependency alternatives (`a | b`) take the first; version constraints
//!   are not checked: apt's candidate version of each name is used.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Cap on a downloaded package (the cloud kernel is about 27 MB).
pub const MAX_DEB: u64 = 512 << 20;

/// Errors from apt look-ups and downloads.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    /// An apt program could not be started.
    #[error("Cannot run {0} (is this a Debian system with apt?)")]
    Spawn(&'static str, #[source] std::io::Error),
    /// apt knows no candidate for the package.
    #[error("apt knows no package {0}: run `apt-get update` (Debian 12 package lists needed)")]
    Unknown(String),
    /// A field the kit needs is missing from apt's record.
    #[error("apt's record for {package} lacks the {field} field")]
    MissingField {
        /// Package name.
        package: String,
        /// Field name.
        field: &'static str,
    },
    /// `apt-get download` failed.
    #[error("apt-get download {package} failed: {stderr}")]
    Download {
        /// Package name.
        package: String,
        /// Last line apt printed on stderr.
        stderr: String,
    },
    /// The downloaded file's checksum differs from apt's index.
    #[error("{0} does not match the SHA-256 in apt's index")]
    Checksum(PathBuf),
    /// A cache file could not be read or written.
    #[error("Cannot use the package cache at {0}")]
    Cache(PathBuf, #[source] std::io::Error),
}

/// What apt's index says about one package's candidate version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    /// Package name.
    pub name: String,
    /// Candidate version.
    pub version: String,
    /// Names from `Pre-Depends` and `Depends` (first alternative of each).
    pub depends: Vec<String>,
    /// Pool path of the `.deb` (its file name is the cache name).
    pub filename: String,
    /// Expected SHA-256, lowercase hex.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

impl PackageInfo {
    /// Parses the first stanza of `apt-cache show` output.
    pub fn parse(text: &str) -> Result<PackageInfo, AptError> {
        let stanza = text.split("\n\n").next().unwrap_or("");
        let field = |name: &str| -> Option<String> {
            let prefix = format!("{name}: ");
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .map(|v| v.trim().to_string())
        };
        let name = field("Package").ok_or(AptError::Unknown(String::new()))?;
        let need = |f: &'static str| {
            field(f).ok_or_else(|| AptError::MissingField {
                package: name.clone(),
                field: f,
            })
        };
        let mut depends = Vec::new();
        for f in ["Pre-Depends", "Depends"] {
            if let Some(list) = field(f) {
                depends.extend(parse_depends(&list));
            }
        }
        Ok(PackageInfo {
            version: need("Version")?,
            filename: need("Filename")?,
            sha256: need("SHA256")?.to_ascii_lowercase(),
            size: need("Size")?.parse().map_err(|_| AptError::MissingField {
                package: name.clone(),
                field: "Size",
            })?,
            depends,
            name,
        })
    }

    /// The name the `.deb` has in the cache.
    pub fn cache_name(&self) -> &str {
        self.filename.rsplit('/').next().unwrap_or(&self.filename)
    }
}

/// Package names in a `Depends` value: first alternative, no versions,
/// no architecture qualifiers.
pub fn parse_depends(list: &str) -> Vec<String> {
    list.split(',')
        .filter_map(|dep| {
            let first = dep.split('|').next()?.trim();
            let name = first.split([' ', '(', ':']).next()?.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// Asks apt for the candidate version of `name`.
pub fn show(name: &str) -> Result<PackageInfo, AptError> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", name])
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| AptError::Spawn("apt-cache", e))?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(AptError::Unknown(name.to_string()));
    }
    PackageInfo::parse(&String::from_utf8_lossy(&out.stdout)).map_err(|e| match e {
        AptError::Unknown(_) => AptError::Unknown(name.to_string()),
        e => e,
    })
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The package's bytes: from `cache` when present with the right checksum,
/// otherwise fetched with `apt-get download` into it first. Returns the
/// bytes and whether a download happened.
pub fn fetch(info: &PackageInfo, cache: &Path) -> Result<(Vec<u8>, bool), AptError> {
    let path = cache.join(info.cache_name());
    if let Ok(data) = std::fs::read(&path) {
        if sha256_hex(&data) == info.sha256 {
            return Ok((data, false));
        }
        tracing::info!(
            "cached {} has a stale checksum, fetching again",
            path.display()
        );
    }
    let cache_err = |e| AptError::Cache(cache.to_path_buf(), e);
    std::fs::create_dir_all(cache).map_err(cache_err)?;
    let work = cache.join(format!(".download-{}-{}", info.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(cache_err)?;
    let result = download_into(info, &work, &path);
    let _ = std::fs::remove_dir_all(&work);
    result.map(|data| (data, true))
}

fn download_into(info: &PackageInfo, work: &Path, dest: &Path) -> Result<Vec<u8>, AptError> {
    let out = Command::new("apt-get")
        .arg("download")
        .arg(format!("{}={}", info.name, info.version))
        .current_dir(work)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| AptError::Spawn("apt-get", e))?;
    let downloaded = std::fs::read_dir(work)
        .map_err(|e| AptError::Cache(work.to_path_buf(), e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"));
    let Some(file) = downloaded.filter(|_| out.status.success()) else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(AptError::Download {
            package: info.name.clone(),
            stderr: last.to_string(),
        });
    };
    let len = std::fs::metadata(&file)
        .map_err(|e| AptError::Cache(file.clone(), e))?
        .len();
    if len > MAX_DEB {
        return Err(AptError::Checksum(file));
    }
    let data = std::fs::read(&file).map_err(|e| AptError::Cache(file.clone(), e))?;
    if sha256_hex(&data) != info.sha256 {
        return Err(AptError::Checksum(file));
    }
    std::fs::rename(&file, dest).map_err(|e| AptError::Cache(dest.to_path_buf(), e))?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = "Package: libtomcrypt1\n\
Source: libtomcrypt\n\
Version: 1.18.2-6\n\
Pre-Depends: libc6 (>= 2.1)\n\
Depends: libc6 (>= 2.14), libgmp10 (>= 2:6.2.1+dfsg1) | libgmp-dev, libtommath1:amd64 (>= 1.1.0)\n\
Filename: pool/main/libt/libtomcrypt/libtomcrypt1_1.18.2-6_amd64.deb\n\
Size: 403032\n\
SHA256: ABCDEF\n\
Description-en: cryptographic toolkit\n\
 more text\n\
\n\
Package: libtomcrypt1\n\
Version: 1.0\n";

    #[test]
    fn parse_reads_first_stanza_fields() {
        let info = PackageInfo::parse(RECORD).unwrap();
        assert_eq!(info.name, "libtomcrypt1");
        assert_eq!(info.version, "1.18.2-6");
        assert_eq!(info.depends, ["libc6", "libc6", "libgmp10", "libtommath1"]);
        assert_eq!(info.size, 403_032);
        assert_eq!(info.sha256, "abcdef");
        assert_eq!(info.cache_name(), "libtomcrypt1_1.18.2-6_amd64.deb");
    }

    #[test]
    fn parse_reports_missing_fields_by_name() {
        let err = PackageInfo::parse("Package: x\nVersion: 1\n").unwrap_err();
        assert!(matches!(
            err,
            AptError::MissingField {
                field: "Filename",
                ..
            }
        ));
        assert!(matches!(PackageInfo::parse(""), Err(AptError::Unknown(_))));
    }

    #[test]
    fn cached_file_with_matching_checksum_is_used_without_apt() {
        let dir = std::env::temp_dir().join(format!("vmm-apt-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut info = PackageInfo::parse(RECORD).unwrap();
        info.sha256 = sha256_hex(b"package bytes");
        std::fs::write(dir.join(info.cache_name()), b"package bytes").unwrap();
        let (data, downloaded) = fetch(&info, &dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(data, b"package bytes");
        assert!(!downloaded);
    }
}
