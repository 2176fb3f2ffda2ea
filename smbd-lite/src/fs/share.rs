//! A share: a root directory and every file-system operation beneath it.
//!
//! All access goes through a `cap_std::fs::Dir` opened on the share root,
//! which resolves names beneath it only (openat2 `RESOLVE_BENEATH` where
//! the kernel has it, a checked per-component walk otherwise): a symlink
//! that leads out of the share is refused when the file is opened, so the
//! check applies to the descriptor actually used, not to an earlier look at
//! the name.

use std::fs::File;
use std::io;
use std::path::Path;

use cap_std::fs::{Dir, Metadata, OpenOptions};

use super::info::FsSpace;
use super::path::SharePath;

/// Most entries read from one directory for one listing.
pub const MAX_DIR_ENTRIES: usize = 1 << 20;

/// A configured share opened on its root.
#[derive(Debug)]
pub struct Share {
    /// Share name as configured.
    pub name: String,
    /// Refuse every change.
    pub read_only: bool,
    root: Dir,
}

/// How to open a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Open an existing file.
    Existing,
    /// Create a new file; fail if it exists.
    CreateNew,
    /// Open an existing file and truncate it.
    Truncate,
}

impl Share {
    /// Opens the share root directory.
    pub fn open(name: &str, path: &Path, read_only: bool) -> io::Result<Self> {
        let root = Dir::open_ambient_dir(path, cap_std::ambient_authority())?;
        Ok(Self {
            name: name.to_string(),
            read_only,
            root,
        })
    }

    /// Metadata of `p`, following links that stay inside the share.
    pub fn stat(&self, p: &SharePath) -> io::Result<Metadata> {
        if p.is_root() {
            return self.root.dir_metadata();
        }
        self.root.metadata(p.host())
    }

    fn root_file(&self) -> io::Result<File> {
        Ok(self.root.try_clone()?.into_std_file())
    }

    /// Whether the parent directory of `p` exists (for NAME vs PATH not found).
    pub fn parent_exists(&self, p: &SharePath) -> bool {
        self.stat(&p.parent()).map(|m| m.is_dir()).unwrap_or(false)
    }

    /// Rewrites components that exist on the host only in another case.
    ///
    /// An exact match always wins, so two host names differing in case are
    /// each reachable by their own spelling. A name matching several
    /// entries case-insensitively (and none exactly) is left unchanged.
    /// With `leaf` false the last component is taken as spelled (creating
    /// names must not cost a directory scan each).
    pub fn resolve_case(&self, p: &mut SharePath, leaf: bool) {
        let n = p.components().len() - usize::from(!leaf && !p.is_root());
        for i in 0..n {
            let prefix: std::path::PathBuf = p.components()[..=i].iter().collect();
            if self.root.symlink_metadata(&prefix).is_ok() {
                continue;
            }
            let parent: std::path::PathBuf = p.components()[..i].iter().collect();
            let parent = if i == 0 {
                Path::new(".").to_path_buf()
            } else {
                parent
            };
            let Ok(entries) = self.root.read_dir(&parent) else {
                return;
            };
            let want = p.components()[i].to_lowercase();
            let mut found = None;
            for e in entries.take(MAX_DIR_ENTRIES).flatten() {
                let name = e.file_name();
                if let Some(n) = name.to_str() {
                    if n.to_lowercase() == want {
                        if found.is_some() {
                            return;
                        }
                        found = Some(n.to_string());
                    }
                }
            }
            match found {
                Some(n) => p.set_component(i, n),
                None => return,
            }
        }
    }

    /// Opens a file (or directory, read-only) beneath the root.
    pub fn open_file(&self, p: &SharePath, write: bool, mode: OpenMode) -> io::Result<File> {
        if p.is_root() {
            return self.root_file();
        }
        let mut o = OpenOptions::new();
        o.read(true);
        match mode {
            OpenMode::Existing => {
                o.write(write);
            }
            OpenMode::CreateNew => {
                o.write(true).create_new(true);
            }
            OpenMode::Truncate => {
                o.write(true).truncate(true);
            }
        }
        match self.root.open_with(p.host(), &o) {
            Err(e) if e.kind() == io::ErrorKind::IsADirectory && mode == OpenMode::Existing => {
                self.open_dir(p)
            }
            other => other.map(cap_std::fs::File::into_std),
        }
    }

    /// Opens a directory beneath the root.
    pub fn open_dir(&self, p: &SharePath) -> io::Result<File> {
        if p.is_root() {
            return self.root_file();
        }
        Ok(self.root.open_dir(p.host())?.into_std_file())
    }

    /// Creates a directory.
    pub fn create_dir(&self, p: &SharePath) -> io::Result<()> {
        self.root.create_dir(p.host())
    }

    /// Removes a file or an empty directory.
    pub fn remove(&self, p: &SharePath, is_dir: bool) -> io::Result<()> {
        if p.is_root() {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        if is_dir {
            self.root.remove_dir(p.host())
        } else {
            self.root.remove_file(p.host())
        }
    }

    /// True if the directory has entries.
    pub fn dir_has_entries(&self, p: &SharePath) -> io::Result<bool> {
        Ok(self.root.read_dir(p.host())?.next().is_some())
    }

    /// Renames `from` to `to`, both beneath the root.
    pub fn rename(&self, from: &SharePath, to: &SharePath) -> io::Result<()> {
        if from.is_root() || to.is_root() {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        self.root.rename(from.host(), &self.root, to.host())
    }

    /// Names in a directory (without `.` and `..`), capped.
    pub fn list(&self, p: &SharePath) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in self.root.read_dir(p.host())?.take(MAX_DIR_ENTRIES) {
            let name = e?.file_name();
            // Host names that are not valid Unicode cannot be sent.
            if let Some(n) = name.to_str() {
                names.push(n.to_string());
            }
        }
        Ok(names)
    }

    /// Metadata of an entry in a listing; `None` for entries a client may
    /// not reach (links leading out, vanished files).
    pub fn entry_stat(&self, dir: &SharePath, name: &str) -> Option<Metadata> {
        self.root.metadata(dir.host().join(name)).ok()
    }

    /// Space on the file system holding the share.
    pub fn space(&self) -> FsSpace {
        match rustix::fs::fstatvfs(&self.root) {
            Ok(s) => FsSpace {
                unit: s.f_frsize.max(512),
                total: s.f_blocks,
                avail: s.f_bavail,
                free: s.f_bfree,
            },
            Err(_) => FsSpace::default(),
        }
    }
}
