//! CREATE, CLOSE, FLUSH, READ, WRITE and LOCK.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::session::{Tree, ACCESS_FULL, ACCESS_READ};
use super::{Connection, Ctx, Fail, Reply, Result};
use crate::fs::info::{FileStat, ATTR_READONLY};
use crate::fs::path::SharePath;
use crate::fs::share::{OpenMode, Share};
use crate::wire::requests::{emit_create_context, CreateRequest, FileId, LockElement};
use crate::wire::{u32_len, utf16_to_string, NtStatus, Out, HEADER_LEN, MAX_IO};

/// Access bits that change something.
pub(crate) const WRITE_ACCESS: u32 = 0x2 // FILE_WRITE_DATA
    | 0x4 // FILE_APPEND_DATA
    | 0x10 // FILE_WRITE_EA
    | 0x40 // FILE_DELETE_CHILD
    | 0x100 // FILE_WRITE_ATTRIBUTES
    | 0x1_0000 // DELETE
    | 0x4_0000 // WRITE_DAC
    | 0x8_0000 // WRITE_OWNER
    | 0x1000_0000 // GENERIC_ALL
    | 0x4000_0000; // GENERIC_WRITE
/// DELETE access.
pub(crate) const DELETE: u32 = 0x1_0000;
const FILE_READ_DATA: u32 = 0x1;
const FILE_WRITE_DATA: u32 = 0x2;
const FILE_APPEND_DATA: u32 = 0x4;
const MAXIMUM_ALLOWED: u32 = 0x0200_0000;

/// CreateOptions bits.
const OPT_DIRECTORY: u32 = 0x1;
const OPT_NON_DIRECTORY: u32 = 0x40;
const OPT_DELETE_ON_CLOSE: u32 = 0x1000;

/// Dispositions.
const SUPERSEDE: u32 = 0;
const OPEN: u32 = 1;
const CREATE: u32 = 2;
const OVERWRITE: u32 = 4;
const OVERWRITE_IF: u32 = 5;

/// CreateAction values.
const ACTION_SUPERSEDED: u32 = 0;
const ACTION_OPENED: u32 = 1;
const ACTION_CREATED: u32 = 2;
const ACTION_OVERWRITTEN: u32 = 3;

/// A byte-range lock held by an open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lock {
    pub(crate) offset: u64,
    pub(crate) length: u64,
    pub(crate) exclusive: bool,
}

/// An open file or directory.
#[derive(Debug)]
pub(crate) struct Open {
    pub(crate) session_id: u64,
    pub(crate) tree_id: u32,
    pub(crate) share: Arc<Share>,
    pub(crate) file: File,
    pub(crate) path: SharePath,
    pub(crate) is_dir: bool,
    pub(crate) access: u32,
    pub(crate) delete_on_close: bool,
    pub(crate) position: u64,
    pub(crate) mode: u32,
    pub(crate) inode: (u64, u64),
    pub(crate) share_access: u32,
    pub(crate) locks: Vec<Lock>,
    pub(crate) listing: Option<super::query::Listing>,
}

/// Maps GENERIC_* and MAXIMUM_ALLOWED bits onto specific rights.
fn map_generic(access: u32, share_max: u32) -> u32 {
    let mut a = access & 0x01FF_FFFF & !MAXIMUM_ALLOWED;
    if access & 0x8000_0000 != 0 {
        a |= 0x0012_0089;
    }
    if access & 0x4000_0000 != 0 {
        a |= 0x0012_0116;
    }
    if access & 0x2000_0000 != 0 {
        a |= 0x0012_00A0;
    }
    if access & 0x1000_0000 != 0 || access & MAXIMUM_ALLOWED != 0 {
        a |= share_max;
    }
    a
}

fn file_id_bytes(id: u64) -> FileId {
    let mut f = [0u8; 16];
    f[..8].copy_from_slice(&id.to_le_bytes());
    f[8..].copy_from_slice(&id.to_le_bytes());
    f
}

fn io_status(e: &std::io::Error) -> NtStatus {
    NtStatus::from_io(e, false)
}

impl Connection {
    /// Looks up an open by FileId for the session and tree of `ctx`.
    pub(super) fn open(&self, fid: &FileId, ctx: &Ctx) -> Result<&Open> {
        self.tree(ctx)?;
        let mut v = [0u8; 8];
        v.copy_from_slice(&fid[8..]);
        let id = u64::from_le_bytes(v);
        match self.opens.get(&id) {
            Some(o)
                if o.session_id == ctx.session_id
                    && o.tree_id == ctx.tree_id
                    && file_id_bytes(id) == *fid =>
            {
                Ok(o)
            }
            _ => Err(NtStatus::FileClosed.into()),
        }
    }

    /// Mutable variant of [`Connection::open`].
    pub(super) fn open_mut(&mut self, fid: &FileId, ctx: &Ctx) -> Result<&mut Open> {
        self.open(fid, ctx)?;
        let mut v = [0u8; 8];
        v.copy_from_slice(&fid[8..]);
        self.opens
            .get_mut(&u64::from_le_bytes(v))
            .ok_or(Fail::Status(NtStatus::FileClosed))
    }

    pub(super) fn create(&mut self, req: &CreateRequest<'_>, ctx: &mut Ctx) -> Result<Reply> {
        let share = match self.tree(ctx)? {
            Tree::Ipc => return Err(NtStatus::ObjectNameNotFound.into()),
            Tree::Disk(s) => Arc::clone(s),
        };
        if self.opens.len() >= self.server.config.limits.max_opens {
            return Err(NtStatus::TooManyOpenedFiles.into());
        }
        let name =
            utf16_to_string(req.name).map_err(|_| Fail::Status(NtStatus::ObjectNameInvalid))?;
        let mut path = SharePath::parse(&name)?;
        share.resolve_case(&mut path, matches!(req.disposition, OPEN | OVERWRITE));
        let share_max = if share.read_only {
            ACCESS_READ
        } else {
            ACCESS_FULL
        };
        let access = map_generic(req.desired_access, share_max);
        let creates = matches!(
            req.disposition,
            SUPERSEDE | CREATE | OVERWRITE | OVERWRITE_IF
        );
        let delete_on_close = req.options & OPT_DELETE_ON_CLOSE != 0;
        if share.read_only && (access & WRITE_ACCESS != 0 || creates || delete_on_close) {
            return Err(NtStatus::AccessDenied.into());
        }
        if req.disposition > OVERWRITE_IF {
            return Err(NtStatus::InvalidParameter.into());
        }
        if delete_on_close && access & DELETE == 0 {
            return Err(NtStatus::AccessDenied.into());
        }
        let existing = share.stat(&path);
        if let Err(e) = &existing {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(NtStatus::from_io(e, false).into());
            }
        }
        let want_dir = req.options & OPT_DIRECTORY != 0;
        if want_dir && req.options & OPT_NON_DIRECTORY != 0 {
            return Err(NtStatus::InvalidParameter.into());
        }
        let (file, action) = if let Ok(meta) = existing {
            if req.disposition == CREATE {
                return Err(NtStatus::ObjectNameCollision.into());
            }
            {
                use cap_std::fs::MetadataExt as _;
                self.check_share_modes((meta.dev(), meta.ino()), access, req.share_access)?;
            }
            if meta.is_dir() && req.options & OPT_NON_DIRECTORY != 0 {
                return Err(NtStatus::FileIsADirectory.into());
            }
            if !meta.is_dir() && want_dir {
                return Err(NtStatus::NotADirectory.into());
            }
            match req.disposition {
                CREATE => return Err(NtStatus::ObjectNameCollision.into()),
                _ if meta.is_dir()
                    && matches!(req.disposition, SUPERSEDE | OVERWRITE | OVERWRITE_IF) =>
                {
                    return Err(NtStatus::InvalidParameter.into())
                }
                SUPERSEDE | OVERWRITE | OVERWRITE_IF => {
                    if share.read_only {
                        return Err(NtStatus::AccessDenied.into());
                    }
                    let f = share
                        .open_file(&path, true, OpenMode::Truncate)
                        .map_err(|e| Fail::Status(io_status(&e)))?;
                    let action = if req.disposition == SUPERSEDE {
                        ACTION_SUPERSEDED
                    } else {
                        ACTION_OVERWRITTEN
                    };
                    (f, action)
                }
                _ => {
                    if delete_on_close && !meta.is_dir() && meta.permissions().readonly() {
                        return Err(NtStatus::CannotDelete.into());
                    }
                    let write =
                        access & (FILE_WRITE_DATA | FILE_APPEND_DATA) != 0 && !meta.is_dir();
                    let f = if meta.is_dir() {
                        share.open_dir(&path)
                    } else {
                        share.open_file(&path, write, OpenMode::Existing)
                    }
                    .map_err(|e| Fail::Status(io_status(&e)))?;
                    (f, ACTION_OPENED)
                }
            }
        } else {
            if matches!(req.disposition, OPEN | OVERWRITE) {
                let parent = share.parent_exists(&path);
                return Err(if parent {
                    NtStatus::ObjectNameNotFound
                } else {
                    NtStatus::ObjectPathNotFound
                }
                .into());
            }
            if share.read_only {
                return Err(NtStatus::AccessDenied.into());
            }
            if path.is_root() {
                return Err(NtStatus::AccessDenied.into());
            }
            let parent_missing = !share.parent_exists(&path);
            if delete_on_close && req.attributes & ATTR_READONLY != 0 {
                return Err(NtStatus::CannotDelete.into());
            }
            let f = if want_dir {
                share.create_dir(&path).and_then(|()| share.open_dir(&path))
            } else {
                share.open_file(&path, true, OpenMode::CreateNew)
            }
            .map_err(|e| Fail::Status(NtStatus::from_io(&e, parent_missing)))?;
            if req.attributes & ATTR_READONLY != 0 && !want_dir {
                let mut perm = f
                    .metadata()
                    .map_err(|e| Fail::Status(io_status(&e)))?
                    .permissions();
                perm.set_readonly(true);
                let _ = f.set_permissions(perm);
            }
            (f, ACTION_CREATED)
        };
        let meta = file.metadata().map_err(|e| Fail::Status(io_status(&e)))?;
        let st = FileStat::from_metadata(&meta);
        let id = self.next_file;
        self.next_file += 1;
        let fid = file_id_bytes(id);
        {
            use std::os::unix::fs::MetadataExt;
            self.opens.insert(
                id,
                Open {
                    session_id: ctx.session_id,
                    tree_id: ctx.tree_id,
                    share: Arc::clone(&share),
                    file,
                    path,
                    is_dir: st.is_dir,
                    access,
                    delete_on_close,
                    position: 0,
                    mode: 0,
                    inode: (meta.dev(), meta.ino()),
                    share_access: req.share_access,
                    locks: Vec::new(),
                    listing: None,
                },
            );
        }
        ctx.file_id = Some(fid);
        Ok(Reply::ok(create_body(
            &st,
            action,
            &fid,
            &req.contexts,
            share_max,
        )))
    }

    pub(super) fn close(&mut self, flags: u16, fid: &FileId, ctx: &Ctx) -> Result<Reply> {
        self.open(fid, ctx)?;
        let mut v = [0u8; 8];
        v.copy_from_slice(&fid[8..]);
        let open = self
            .opens
            .remove(&u64::from_le_bytes(v))
            .ok_or(Fail::Status(NtStatus::FileClosed))?;
        let st = if flags & 1 != 0 {
            open.file
                .metadata()
                .ok()
                .map(|m| FileStat::from_metadata(&m))
        } else {
            None
        };
        finish_close(open);
        let mut o = Out::with_capacity(60);
        o.u16(60).u16(flags & 1).u32(0);
        match st {
            Some(st) => {
                st.emit_times(&mut o);
                o.u64(st.alloc).u64(st.size).u32(st.attributes);
            }
            None => {
                o.zeros(52);
            }
        }
        Ok(Reply::ok(o.0))
    }

    /// Closes every open matching `pred` (logoff, tree disconnect).
    pub(super) fn close_where(&mut self, pred: impl Fn(&Open) -> bool) {
        let ids: Vec<u64> = self
            .opens
            .iter()
            .filter(|(_, o)| pred(o))
            .map(|(&k, _)| k)
            .collect();
        for id in ids {
            if let Some(o) = self.opens.remove(&id) {
                finish_close(o);
            }
        }
    }

    pub(super) fn flush(&mut self, fid: &FileId, ctx: &Ctx) -> Result<Reply> {
        let open = self.open(fid, ctx)?;
        if open.share.read_only {
            return Err(NtStatus::AccessDenied.into());
        }
        open.file
            .sync_all()
            .map_err(|e| Fail::Status(io_status(&e)))?;
        Ok(Reply::empty4())
    }

    pub(super) fn read(
        &mut self,
        length: u32,
        offset: u64,
        fid: &FileId,
        minimum: u32,
        ctx: &Ctx,
    ) -> Result<Reply> {
        let open = self.open(fid, ctx)?;
        if open.is_dir {
            return Err(NtStatus::InvalidDeviceRequest.into());
        }
        if open.access & (FILE_READ_DATA | 0x20) == 0 {
            return Err(NtStatus::AccessDenied.into());
        }
        let length = length as usize;
        if length > MAX_IO {
            return Err(NtStatus::InvalidParameter.into());
        }
        if offset > i64::MAX as u64 {
            return Err(NtStatus::InvalidParameter.into());
        }
        if self.io_conflicts(open, offset, length as u64, false) {
            return Err(NtStatus::FileLockConflict.into());
        }
        let mut body = Vec::with_capacity(16 + length);
        body.extend_from_slice(&[17, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        body.resize(16 + length, 0);
        let mut got = 0usize;
        while got < length {
            match open
                .file
                .read_at(&mut body[16 + got..], offset + got as u64)
            {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_status(&e).into()),
            }
        }
        if (got == 0 && length > 0) || got < minimum as usize {
            return Err(NtStatus::EndOfFile.into());
        }
        body.truncate(16 + got);
        let end = offset + got as u64;
        self.open_mut(fid, ctx)?.position = end;
        body[4..8].copy_from_slice(&u32_len(got).to_le_bytes());
        if got == 0 {
            body.push(0);
        }
        Ok(Reply::ok(body))
    }

    pub(super) fn write(
        &mut self,
        offset: u64,
        fid: &FileId,
        data: &[u8],
        ctx: &Ctx,
    ) -> Result<Reply> {
        let open = self.open(fid, ctx)?;
        if open.share.read_only {
            return Err(NtStatus::AccessDenied.into());
        }
        if open.is_dir {
            return Err(NtStatus::InvalidDeviceRequest.into());
        }
        if open.access & (FILE_WRITE_DATA | FILE_APPEND_DATA) == 0 {
            return Err(NtStatus::AccessDenied.into());
        }
        let offset = if offset == u64::MAX {
            open.file
                .metadata()
                .map_err(|e| Fail::Status(io_status(&e)))?
                .len()
        } else {
            offset
        };
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(Fail::Status(NtStatus::InvalidParameter))?;
        if end > i64::MAX as u64 {
            return Err(NtStatus::InvalidParameter.into());
        }
        if self.io_conflicts(open, offset, data.len() as u64, true) {
            return Err(NtStatus::FileLockConflict.into());
        }
        open.file
            .write_all_at(data, offset)
            .map_err(|e| Fail::Status(io_status(&e)))?;
        self.open_mut(fid, ctx)?.position = end;
        let mut o = Out::with_capacity(17);
        o.u16(17)
            .u16(0)
            .u32(u32_len(data.len()))
            .u32(0)
            .u16(0)
            .u16(0)
            .u8(0);
        Ok(Reply::ok(o.0))
    }

    /// SHARING_VIOLATION when this open and an existing one of the same
    /// file do not allow each other's access.
    fn check_share_modes(&self, inode: (u64, u64), access: u32, share: u32) -> Result<()> {
        const SHARE_READ: u32 = 1;
        const SHARE_WRITE: u32 = 2;
        const SHARE_DELETE: u32 = 4;
        let needs = |a: u32| {
            let mut n = 0;
            if a & (FILE_READ_DATA | 0x20) != 0 {
                n |= SHARE_READ;
            }
            if a & (FILE_WRITE_DATA | FILE_APPEND_DATA) != 0 {
                n |= SHARE_WRITE;
            }
            if a & DELETE != 0 {
                n |= SHARE_DELETE;
            }
            n
        };
        let mine = needs(access);
        let clash = self.opens.values().any(|o| {
            o.inode == inode && (mine & !o.share_access != 0 || needs(o.access) & !share != 0)
        });
        if clash {
            Err(NtStatus::SharingViolation.into())
        } else {
            Ok(())
        }
    }

    /// Whether I/O on a range meets a lock: any lock of another open for a
    /// write, or a shared lock of this open; an exclusive lock of another
    /// open for a read.
    fn io_conflicts(&self, me: &Open, offset: u64, length: u64, write: bool) -> bool {
        self.opens.values().any(|o| {
            let mine = std::ptr::eq(o, me);
            o.inode == me.inode
                && o.locks.iter().any(|l| {
                    overlaps(l, offset, length)
                        && if mine {
                            write && !l.exclusive
                        } else {
                            write || l.exclusive
                        }
                })
        })
    }

    /// Whether a new lock conflicts: an exclusive one with any overlapping
    /// lock, a shared one with another open's exclusive lock.
    fn lock_conflicts(&self, me: &Open, l: &Lock) -> bool {
        self.opens.values().any(|o| {
            let mine = std::ptr::eq(o, me);
            o.inode == me.inode
                && o.locks.iter().any(|h| {
                    overlaps(h, l.offset, l.length) && (l.exclusive || (h.exclusive && !mine))
                })
        })
    }

    pub(super) fn lock(&mut self, fid: &FileId, locks: &[LockElement], ctx: &Ctx) -> Result<Reply> {
        const SHARED: u32 = 1;
        const EXCLUSIVE: u32 = 2;
        const UNLOCK: u32 = 4;
        const FAIL_IMMEDIATELY: u32 = 0x10;
        let open = self.open(fid, ctx)?;
        let Some(first) = locks.first() else {
            return Err(NtStatus::InvalidParameter.into());
        };
        if first.flags & UNLOCK != 0 {
            for l in locks {
                if l.flags != UNLOCK {
                    return Err(NtStatus::InvalidParameter.into());
                }
                let open = self.open_mut(fid, ctx)?;
                let pos = open
                    .locks
                    .iter()
                    .rposition(|h| h.offset == l.offset && h.length == l.length)
                    .ok_or(Fail::Status(NtStatus::RangeNotLocked))?;
                open.locks.remove(pos);
            }
            return Ok(Reply::empty4());
        }
        let mut granted: Vec<Lock> = Vec::new();
        for l in locks {
            let kind = l.flags & !FAIL_IMMEDIATELY;
            if kind != SHARED && kind != EXCLUSIVE {
                return Err(NtStatus::InvalidParameter.into());
            }
            if l.length > 0 && l.offset.checked_add(l.length - 1).is_none() {
                return Err(NtStatus::Unknown(0xC000_01A1).into()); // INVALID_LOCK_RANGE
            }
            let new = Lock {
                offset: l.offset,
                length: l.length,
                exclusive: kind == EXCLUSIVE,
            };
            let clash_batch = granted
                .iter()
                .any(|h| overlaps(h, new.offset, new.length) && (h.exclusive || new.exclusive));
            if clash_batch || self.lock_conflicts(open, &new) {
                // Blocking locks would wait; without async replies they fail now.
                return Err(NtStatus::LockNotGranted.into());
            }
            granted.push(new);
        }
        let open = self.open_mut(fid, ctx)?;
        if open.locks.len() + granted.len() > crate::wire::requests::MAX_LOCKS * 16 {
            return Err(NtStatus::InsufficientResources.into());
        }
        open.locks.extend(granted);
        Ok(Reply::empty4())
    }
}

/// Whether a held lock overlaps a range (zero-length ranges overlap nothing).
fn overlaps(l: &Lock, offset: u64, length: u64) -> bool {
    if l.length == 0 || length == 0 {
        return false;
    }
    let l_end = l.offset.saturating_add(l.length);
    let end = offset.saturating_add(length);
    offset < l_end && l.offset < end
}

/// Drops an open, applying delete-on-close.
pub(super) fn finish_close(open: Open) {
    if open.delete_on_close && !open.share.read_only {
        drop(open.file);
        if let Err(e) = open.share.remove(&open.path, open.is_dir) {
            tracing::debug!("delete on close of {:?} failed: {e}", open.path.host());
        }
    }
}

/// The CREATE response body with the replies to MxAc and QFid.
fn create_body(
    st: &FileStat,
    action: u32,
    fid: &FileId,
    contexts: &[&[u8]],
    max_access: u32,
) -> Vec<u8> {
    let mut o = Out::with_capacity(160);
    o.u16(89).u8(0).u8(0).u32(action);
    st.emit_times(&mut o);
    o.u64(st.alloc)
        .u64(st.size)
        .u32(st.attributes)
        .u32(0)
        .bytes(fid);
    let ctx_pos = o.len();
    o.u32(0).u32(0);
    let mut chain = Out::default();
    let mut prev = None;
    for name in contexts {
        match *name {
            b"MxAc" => {
                let mut d = Out::default();
                d.u32(0).u32(max_access);
                prev = Some(emit_create_context(&mut chain, prev, b"MxAc", &d.0));
            }
            b"QFid" => {
                let mut d = Out::default();
                d.u64(st.inode).u64(0).zeros(16);
                prev = Some(emit_create_context(&mut chain, prev, b"QFid", &d.0));
            }
            _ => {}
        }
    }
    if chain.is_empty() {
        o.u8(0);
    } else {
        let off = HEADER_LEN + o.len();
        o.put_u32(ctx_pos, u32_len(off));
        o.put_u32(ctx_pos + 4, u32_len(chain.len()));
        o.bytes(&chain.0);
    }
    o.0
}
