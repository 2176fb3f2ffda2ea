//! Debian package (`.deb`) unpacking: the `ar` container, the compressed
//! `data.tar` inside it, and the files of that tarball as an in-memory tree.
//!
//! A `.deb` is an `ar` archive holding `debian-binary`, `control.tar.*` and
//! `data.tar.*`; the data tarball is compressed with xz (Debian's default),
//! zstd or gzip, or not at all. Only the paths a caller asks for are kept.
//!
//! Limitations:
//! - Whole packages are read into memory (the largest one the kit uses, the
//!   cloud kernel, is about 27 MB); unpacked data is capped at
//!   [`MAX_UNPACKED`].
//! - Tar entry kinds other than files, directories, symlinks and hard links
//!   (devices, FIFOs) are skipped: Debian packages do not ship them.

use std::collections::BTreeMap;
use std::io::Read;

/// Cap on the bytes kept from one package's data tarball.
pub const MAX_UNPACKED: u64 = 1 << 30;

/// Errors from reading a `.deb`.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    /// The file does not start with the `ar` magic.
    #[error("Not an ar archive")]
    NotAr,
    /// An `ar` member header is cut short or malformed.
    #[error("Malformed ar member header at byte {0}")]
    BadMember(usize),
    /// No `data.tar*` member.
    #[error("No data.tar member in the package")]
    NoData,
    /// The data member uses a compression this code does not know.
    #[error("Unsupported data member {0}")]
    UnsupportedCompression(String),
    /// Decompressing or reading the tarball failed.
    #[error("Cannot read the data tarball")]
    Tar(#[source] std::io::Error),
    /// The kept files exceed [`MAX_UNPACKED`].
    #[error("Package unpacks to more than {MAX_UNPACKED} bytes")]
    TooLarge,
    /// A hard link names a file not seen before it in the tarball.
    #[error("Hard link {link} to unknown file {target}")]
    DanglingHardLink {
        /// The link's path.
        link: String,
        /// The missing target.
        target: String,
    },
}

/// One node of an unpacked package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file with its permission bits and contents.
    File {
        /// Permission bits (e.g. 0o755).
        mode: u32,
        /// File contents.
        data: Vec<u8>,
    },
    /// A symbolic link and its target as written in the package.
    Symlink(String),
    /// A directory.
    Dir,
}

/// Files of one or more unpacked packages, keyed by path without a leading
/// `/` or `./` (e.g. `usr/sbin/dropbear`).
#[derive(Debug, Default, Clone)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

/// Longest chain of symlinks [`Tree::resolve`] follows.
const MAX_SYMLINK_HOPS: usize = 16;

impl Tree {
    /// The node at `path` (no symlink following).
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(normalize(path).as_str())
    }

    /// Every node, sorted by path.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(p, n)| (p.as_str(), n))
    }

    /// Every node, by path, taking ownership.
    pub fn into_nodes(self) -> BTreeMap<String, Node> {
        self.nodes
    }

    /// Adds every node of `other`, replacing nodes at the same paths.
    pub fn merge(&mut self, other: Tree) {
        self.nodes.extend(other.nodes);
    }

    /// Follows symlinks (in every path component) from `path` to a regular
    /// file: returns its resolved path, mode and contents.
    pub fn resolve(&self, path: &str) -> Option<(String, u32, &[u8])> {
        let mut current = normalize(path);
        for _ in 0..MAX_SYMLINK_HOPS {
            match self.resolve_dirs(&current)? {
                (p, Node::File { mode, data }) => return Some((p, *mode, data)),
                (p, Node::Symlink(target)) => current = join_link(&p, target),
                (_, Node::Dir) => return None,
            }
        }
        None
    }

    /// Finds the node for `path`, following symlinks met in its directory
    /// components; returns the path it was found at.
    fn resolve_dirs(&self, path: &str) -> Option<(String, &Node)> {
        let mut resolved = String::new();
        let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            let candidate = if resolved.is_empty() {
                (*part).to_string()
            } else {
                format!("{resolved}/{part}")
            };
            if i + 1 == parts.len() {
                let node = self.nodes.get(&candidate)?;
                return Some((candidate, node));
            }
            resolved = self.follow_dir(candidate)?;
        }
        None
    }

    /// Follows symlinks from a directory path until it is not a symlink.
    fn follow_dir(&self, mut dir: String) -> Option<String> {
        for _ in 0..MAX_SYMLINK_HOPS {
            match self.nodes.get(&dir) {
                Some(Node::Symlink(target)) => dir = join_link(&dir, target),
                _ => return Some(dir),
            }
        }
        None
    }
}

/// Strips a leading `./` or `/` and collapses `.`, `..` and empty
/// components (never above the root).
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// The path a symlink at `link` with `target` points to.
fn join_link(link: &str, target: &str) -> String {
    if target.starts_with('/') {
        return normalize(target);
    }
    let dir = link.rsplit_once('/').map_or("", |(d, _)| d);
    normalize(&format!("{dir}/{target}"))
}

/// Splits an `ar` archive into `(name, contents)` members.
pub fn ar_members(data: &[u8]) -> Result<Vec<(String, &[u8])>, DebError> {
    const MAGIC: &[u8] = b"!<arch>\n";
    const HEADER: usize = 60;
    let mut rest = data.strip_prefix(MAGIC).ok_or(DebError::NotAr)?;
    let mut offset = MAGIC.len();
    let mut members = Vec::new();
    while !rest.is_empty() {
        let header = rest.get(..HEADER).ok_or(DebError::BadMember(offset))?;
        if &header[58..60] != b"`\n" {
            return Err(DebError::BadMember(offset));
        }
        let name = String::from_utf8_lossy(&header[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: usize = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(DebError::BadMember(offset))?;
        let body = rest
            .get(
                HEADER
                    ..HEADER
                        .checked_add(size)
                        .ok_or(DebError::BadMember(offset))?,
            )
            .ok_or(DebError::BadMember(offset))?;
        members.push((name, body));
        let advance = (HEADER + size + (size & 1)).min(rest.len());
        rest = &rest[advance..];
        offset += advance;
    }
    Ok(members)
}

/// A reader that decompresses `data` according to the file name's suffix
/// (`.xz`, `.zst`, `.gz`, or none).
pub fn decompressor<'a>(name: &str, data: &'a [u8]) -> Result<Box<dyn Read + 'a>, DebError> {
    if name.ends_with(".xz") {
        Ok(Box::new(liblzma::read::XzDecoder::new(data)))
    } else if name.ends_with(".zst") {
        let decoder = ruzstd::decoding::StreamingDecoder::new(data)
            .map_err(|e| DebError::Tar(std::io::Error::other(e.to_string())))?;
        Ok(Box::new(decoder))
    } else if name.ends_with(".gz") {
        Ok(Box::new(flate2::read::GzDecoder::new(data)))
    } else if name.ends_with(".tar") || name.ends_with(".ko") {
        Ok(Box::new(data))
    } else {
        Err(DebError::UnsupportedCompression(name.to_string()))
    }
}

/// Decompresses a whole buffer named `name` (see [`decompressor`]), reading
/// at most `cap` bytes.
pub fn decompress(name: &str, data: &[u8], cap: u64) -> Result<Vec<u8>, DebError> {
    let mut out = Vec::new();
    decompressor(name, data)?
        .take(cap.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(DebError::Tar)?;
    if out.len() as u64 > cap {
        return Err(DebError::TooLarge);
    }
    Ok(out)
}

/// Unpacks the data tarball of the `.deb` in `deb`, keeping the paths for
/// which `keep` returns true (paths as [`Tree`] keys them).
pub fn unpack(deb: &[u8], keep: impl Fn(&str) -> bool) -> Result<Tree, DebError> {
    let members = ar_members(deb)?;
    let (name, data) = members
        .iter()
        .find(|(n, _)| n.starts_with("data.tar"))
        .ok_or(DebError::NoData)?;
    let mut archive = tar::Archive::new(decompressor(name, data)?);
    let mut tree = Tree::default();
    let mut total: u64 = 0;
    for entry in archive.entries().map_err(DebError::Tar)? {
        let mut entry = entry.map_err(DebError::Tar)?;
        let path = normalize(&entry.path().map_err(DebError::Tar)?.to_string_lossy());
        if path.is_empty() || !keep(&path) {
            continue;
        }
        let kind = entry.header().entry_type();
        let node = if kind.is_dir() {
            Node::Dir
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(DebError::Tar)?
                .unwrap_or_default();
            Node::Symlink(target.to_string_lossy().into_owned())
        } else if kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(DebError::Tar)?
                .unwrap_or_default();
            let target = normalize(&target.to_string_lossy());
            let Some(node) = tree.nodes.get(&target) else {
                return Err(DebError::DanglingHardLink { link: path, target });
            };
            if let Node::File { data, .. } = node {
                // A hard link is stored as a copy: count it against the cap.
                total = total.saturating_add(data.len() as u64);
                if total > MAX_UNPACKED {
                    return Err(DebError::TooLarge);
                }
            }
            node.clone()
        } else if kind.is_file() {
            let mode = entry.header().mode().map_err(DebError::Tar)? & 0o7777;
            let size = entry.size();
            total = total.saturating_add(size);
            if total > MAX_UNPACKED {
                return Err(DebError::TooLarge);
            }
            let mut data = Vec::new();
            entry
                .by_ref()
                .take(size)
                .read_to_end(&mut data)
                .map_err(DebError::Tar)?;
            Node::File { mode, data }
        } else {
            continue;
        };
        tree.nodes.insert(path, node);
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = b"!<arch>\n".to_vec();
        for (name, data) in members {
            let header = format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                name,
                0,
                0,
                0,
                100644,
                data.len()
            );
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    fn tarball() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(
            &mut h,
            "./usr/lib/x86_64-linux-gnu/libz.so.1.2.13",
            &b"hello"[..],
        )
        .unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_size(0);
        l.set_entry_type(tar::EntryType::Symlink);
        b.append_link(
            &mut l,
            "./usr/lib/x86_64-linux-gnu/libz.so.1",
            "libz.so.1.2.13",
        )
        .unwrap();
        let mut d = tar::Header::new_gnu();
        d.set_size(0);
        d.set_entry_type(tar::EntryType::Symlink);
        b.append_link(&mut d, "./lib", "usr/lib").unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn ar_members_splits_odd_sized_members_with_padding() {
        let archive = ar(&[
            ("debian-binary", b"2.0\n"),
            ("odd/", b"abc"),
            ("next", b"z"),
        ]);
        let members = ar_members(&archive).unwrap();
        let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["debian-binary", "odd", "next"]);
        assert_eq!(members[1].1, b"abc");
        assert_eq!(members[2].1, b"z");
    }

    #[test]
    fn ar_members_rejects_truncated_and_foreign_input() {
        let archive = ar(&[("data.tar", b"0123456789")]);
        assert!(matches!(
            ar_members(&archive[..archive.len() - 3]),
            Err(DebError::BadMember(_))
        ));
        assert!(matches!(ar_members(b"PK\x03\x04"), Err(DebError::NotAr)));
        assert!(ar_members(&archive[..20]).is_err());
    }

    #[test]
    fn unpack_reads_plain_and_gzip_data_and_follows_symlinks() {
        let tar = tarball();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        for (name, data) in [("data.tar", tar.clone()), ("data.tar.gz", gz)] {
            let deb = ar(&[("debian-binary", b"2.0\n"), (name, &data)]);
            let tree = unpack(&deb, |_| true).unwrap();
            let (path, mode, bytes) = tree.resolve("/lib/x86_64-linux-gnu/libz.so.1").unwrap();
            assert_eq!(path, "usr/lib/x86_64-linux-gnu/libz.so.1.2.13");
            assert_eq!(mode, 0o755);
            assert_eq!(bytes, b"hello");
        }
    }

    #[test]
    fn unpack_keeps_only_selected_paths() {
        let deb = ar(&[("data.tar", &tarball())]);
        let tree = unpack(&deb, |p| p == "lib").unwrap();
        assert_eq!(tree.iter().count(), 1);
        assert!(tree.resolve("lib/x86_64-linux-gnu/libz.so.1").is_none());
    }

    #[test]
    fn resolve_gives_up_on_symlink_loops() {
        let mut tree = Tree::default();
        tree.nodes.insert("a".into(), Node::Symlink("b".into()));
        tree.nodes.insert("b".into(), Node::Symlink("a".into()));
        assert!(tree.resolve("a").is_none());
        assert!(tree.resolve("a/x").is_none());
    }

    #[test]
    fn unknown_data_compression_is_refused() {
        let deb = ar(&[("data.tar.lz", b"x")]);
        assert!(matches!(
            unpack(&deb, |_| true),
            Err(DebError::UnsupportedCompression(_))
        ));
    }
}
