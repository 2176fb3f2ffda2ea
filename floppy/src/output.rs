//! Writing an image so that the output file appears only when complete.
//!
//! The bytes go to a hidden temporary file beside the destination, are synced
//! to disk, and the file is then renamed over the destination. On any error
//! the temporary file is removed and the destination is left as it was.
//! Trailing zero bytes (the unused end of a floppy) are not written but left
//! as a hole, like `mkfs.msdos -C` does: the content is the same, the write
//! and sync are shorter.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why an image could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The destination has no file name.
    #[error("Output path {} has no file name", .0.display())]
    NoFileName(PathBuf),
    /// Creating, writing or renaming failed.
    #[error("Cannot write {}", path.display())]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    let name = path
        .file_name()
        .ok_or_else(|| WriteError::NoFileName(path.to_owned()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| WriteError::Io { path, source }
    };
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        file.write_all(&bytes[..used]).map_err(io_err(&tmp))?;
        file.set_len(bytes.len() as u64).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("floppy-out-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn file_appears_complete_and_no_temporary_is_left() {
        let dir = scratch("ok");
        let out = dir.join("a.img");
        write_atomically(&out, &[1, 2, 3]).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), [1, 2, 3]);
        write_atomically(&out, &[0, 5, 0, 0, 0]).unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            [0, 5, 0, 0, 0],
            "trailing zeros kept"
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn failed_write_leaves_nothing_behind() {
        let dir = scratch("fail");
        let out = dir.join("missing-dir").join("a.img");
        assert!(matches!(
            write_atomically(&out, &[1]),
            Err(WriteError::Io { .. })
        ));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
