//! QUERY_DIRECTORY, QUERY_INFO, SET_INFO and IOCTL.

use std::fs::FileTimes;

use super::file::DELETE;
use super::session::{Tree, ACCESS_FULL, ACCESS_READ};
use super::{Connection, Ctx, Fail, Reply, Result};
use crate::fs::dir::{encode_entry, matches, DirClass};
use crate::fs::info::{self, encode_file, encode_fs, FileClass, FileStat, OpenInfo, ATTR_READONLY};
use crate::fs::path::SharePath;
use crate::wire::requests::{emit_buffer_reply, FileId};
use crate::wire::{u32_len, utf16_to_string, Buf, NtStatus, Out, MAX_IO};

/// QUERY_DIRECTORY flags.
const RESTART_SCANS: u8 = 0x1;
const RETURN_SINGLE_ENTRY: u8 = 0x2;
const REOPEN: u8 = 0x10;

/// FSCTL codes.
const FSCTL_VALIDATE_NEGOTIATE_INFO: u32 = 0x0014_0204;
const FSCTL_QUERY_NETWORK_INTERFACE_INFO: u32 = 0x0014_01FC;
const FSCTL_DFS_GET_REFERRALS: u32 = 0x0006_0194;
const FSCTL_DFS_GET_REFERRALS_EX: u32 = 0x0006_01B0;
const FSCTL_GET_REPARSE_POINT: u32 = 0x0009_00A8;

/// A directory listing in progress on one handle.
#[derive(Debug)]
pub(crate) struct Listing {
    pattern: String,
    names: Vec<String>,
    next: usize,
}

impl Connection {
    pub(super) fn query_directory(
        &mut self,
        class: u8,
        flags: u8,
        fid: &FileId,
        pattern: &[u8],
        max_output: u32,
        ctx: &Ctx,
    ) -> Result<Reply> {
        let class = DirClass::from_wire(class).ok_or(Fail::Status(NtStatus::InvalidInfoClass))?;
        let pattern =
            utf16_to_string(pattern).map_err(|_| Fail::Status(NtStatus::ObjectNameInvalid))?;
        let open = self.open_mut(fid, ctx)?;
        if !open.is_dir {
            return Err(NtStatus::InvalidParameter.into());
        }
        let restart = flags & (RESTART_SCANS | REOPEN) != 0;
        let pattern = if pattern.is_empty() {
            "*".to_string()
        } else {
            pattern
        };
        if pattern.chars().count() > crate::fs::dir::MAX_PATTERN {
            return Err(NtStatus::ObjectNameInvalid.into());
        }
        let first = open.listing.is_none();
        if first
            || restart
            || open
                .listing
                .as_ref()
                .is_some_and(|l| flags & REOPEN != 0 && l.pattern != pattern)
        {
            let mut names = vec![".".to_string(), "..".to_string()];
            names.extend(
                open.share
                    .list(&open.path)
                    .map_err(|e| Fail::Status(NtStatus::from_io(&e, false)))?,
            );
            names.retain(|n| matches(&pattern, n));
            open.listing = Some(Listing {
                pattern,
                names,
                next: 0,
            });
        }
        let max = (max_output as usize).min(MAX_IO);
        let share = std::sync::Arc::clone(&open.share);
        let path = open.path.clone();
        let listing = open
            .listing
            .as_mut()
            .ok_or(Fail::Status(NtStatus::NoMoreFiles))?;
        let mut out = Out::with_capacity(max.min(64 * 1024));
        let mut last: Option<usize> = None;
        let mut sent = 0usize;
        while listing.next < listing.names.len() {
            let name = &listing.names[listing.next];
            let meta = match name.as_str() {
                "." => share.stat(&path).ok(),
                ".." => share.stat(&path.parent()).ok(),
                n => share.entry_stat(&path, n),
            };
            let Some(meta) = meta else {
                listing.next += 1;
                continue;
            };
            let entry = encode_entry(class, name, &FileStat::from_cap(&meta));
            let aligned = out.len().div_ceil(8) * 8;
            if aligned + entry.len() > max {
                if sent == 0 {
                    return Err(NtStatus::InfoLengthMismatch.into());
                }
                break;
            }
            out.align(8);
            if let Some(prev) = last {
                out.put_u32(prev, u32_len(out.len() - prev));
            }
            last = Some(out.len());
            out.bytes(&entry);
            sent += 1;
            listing.next += 1;
            if flags & RETURN_SINGLE_ENTRY != 0 {
                break;
            }
        }
        if sent == 0 {
            let none = listing.names.is_empty() && (first || restart);
            return Err(if none {
                NtStatus::NoSuchFile
            } else {
                NtStatus::NoMoreFiles
            }
            .into());
        }
        let mut o = Out::with_capacity(out.len() + 8);
        emit_buffer_reply(&mut o, &out.0);
        Ok(Reply::ok(o.0))
    }

    pub(super) fn query_info(
        &mut self,
        info_type: u8,
        class: u8,
        max_output: u32,
        fid: &FileId,
        msg: &[u8],
        ctx: &Ctx,
    ) -> Result<Reply> {
        let open = self.open(fid, ctx)?;
        let max = (max_output as usize).min(MAX_IO);
        let (data, fixed) = match info_type {
            1 => {
                let class = FileClass::from(class);
                if class == FileClass::NormalizedName
                    && self.dialect < Some(crate::wire::negotiate::SMB311)
                {
                    return Err(NtStatus::NotSupported.into());
                }
                let meta = open
                    .file
                    .metadata()
                    .map_err(|e| Fail::Status(NtStatus::from_io(&e, false)))?;
                let st = FileStat::from_metadata(&meta);
                let name = open.path.to_windows();
                let oi = OpenInfo {
                    access: open.access,
                    position: open.position,
                    mode: open.mode,
                    delete_pending: open.delete_on_close,
                    name: &name,
                };
                encode_file(class, &st, &oi).ok_or(Fail::Status(NtStatus::InvalidInfoClass))?
            }
            2 => {
                let created = open
                    .share
                    .stat(&SharePath::default())
                    .map(|m| FileStat::from_cap(&m).created)
                    .unwrap_or(0);
                encode_fs(class, &open.share.space(), open.share.read_only, created)
                    .ok_or(Fail::Status(NtStatus::InvalidInfoClass))?
            }
            3 => {
                let additional = Buf(msg).u32(crate::wire::HEADER_LEN + 16)?;
                let mask = if open.share.read_only {
                    ACCESS_READ
                } else {
                    ACCESS_FULL
                };
                (info::security_descriptor(mask, open.is_dir, additional), 0)
            }
            _ => return Err(NtStatus::NotSupported.into()),
        };
        if fixed > max {
            return Err(NtStatus::InfoLengthMismatch.into());
        }
        let mut o = Out::with_capacity(data.len().min(max) + 8);
        if data.len() > max {
            if info_type == 3 {
                // Security descriptors report the size needed instead.
                let mut need = Out::default();
                need.u32(u32_len(data.len()));
                emit_buffer_reply(&mut o, &need.0);
                return Ok(Reply {
                    status: NtStatus::Unknown(0xC000_0023),
                    body: o.0,
                });
            }
            emit_buffer_reply(&mut o, &data[..max]);
            return Ok(Reply {
                status: NtStatus::BufferOverflow,
                body: o.0,
            });
        }
        emit_buffer_reply(&mut o, &data);
        Ok(Reply::ok(o.0))
    }

    pub(super) fn set_info(
        &mut self,
        info_type: u8,
        class: u8,
        fid: &FileId,
        data: &[u8],
        ctx: &Ctx,
    ) -> Result<Reply> {
        let open = self.open(fid, ctx)?;
        let read_only = open.share.read_only;
        if read_only {
            return Err(NtStatus::AccessDenied.into());
        }
        match info_type {
            1 => {}
            3 => return Ok(Reply::ok(vec![2, 0])), // security: accepted, ignored
            _ => return Err(NtStatus::NotSupported.into()),
        }
        let b = Buf(data);
        match class {
            4 => self.set_basic(fid, b, ctx)?,
            10 => self.rename(fid, b, ctx)?,
            13 => self.set_delete(fid, b.u8(0)? != 0, ctx)?,
            64 => self.set_delete(fid, b.u32(0)? & 1 != 0, ctx)?,
            14 => self.open_mut(fid, ctx)?.position = b.u64(0)?,
            16 => self.open_mut(fid, ctx)?.mode = b.u32(0)?,
            19 | 20 => {
                let size = b.u64(0)?;
                let open = self.open(fid, ctx)?;
                if open.is_dir {
                    return Err(NtStatus::InvalidParameter.into());
                }
                if size > i64::MAX as u64 {
                    return Err(NtStatus::InvalidParameter.into());
                }
                let cur = open
                    .file
                    .metadata()
                    .map_err(|e| Fail::Status(NtStatus::from_io(&e, false)))?
                    .len();
                if class == 20 || size < cur {
                    open.file
                        .set_len(size)
                        .map_err(|e| Fail::Status(NtStatus::from_io(&e, false)))?;
                }
            }
            11 => return Err(NtStatus::NotSupported.into()),
            _ => return Err(NtStatus::InvalidInfoClass.into()),
        }
        Ok(Reply::ok(vec![2, 0]))
    }

    fn set_basic(&mut self, fid: &FileId, b: Buf<'_>, ctx: &Ctx) -> Result<()> {
        let open = self.open(fid, ctx)?;
        let (accessed, written, attrs) = (b.u64(8)?, b.u64(16)?, b.u32(32)?);
        let mut times = FileTimes::new();
        let mut any = false;
        let settable = |t: u64| t != 0 && t != u64::MAX && t != u64::MAX - 1;
        if settable(accessed) {
            if let Some(t) = info::from_filetime(accessed) {
                times = times.set_accessed(t);
                any = true;
            }
        }
        if settable(written) {
            if let Some(t) = info::from_filetime(written) {
                times = times.set_modified(t);
                any = true;
            }
        }
        if any {
            open.file
                .set_times(times)
                .map_err(|e| Fail::Status(NtStatus::from_io(&e, false)))?;
        }
        if attrs != 0 && !open.is_dir {
            let meta = open
                .file
                .metadata()
                .map_err(|e| Fail::Status(NtStatus::from_io(&e, false)))?;
            let mut perm = meta.permissions();
            let want_ro = attrs & ATTR_READONLY != 0;
            if perm.readonly() != want_ro {
                use std::os::unix::fs::PermissionsExt;
                let mode = perm.mode();
                perm.set_mode(if want_ro { mode & !0o222 } else { mode | 0o200 });
                open.file
                    .set_permissions(perm)
                    .map_err(|e| Fail::Status(NtStatus::from_io(&e, false)))?;
            }
        }
        Ok(())
    }

    fn rename(&mut self, fid: &FileId, b: Buf<'_>, ctx: &Ctx) -> Result<()> {
        let replace = b.u8(0)? != 0;
        let len = b.u32(16)? as usize;
        let name = utf16_to_string(b.bytes(20, len)?)
            .map_err(|_| Fail::Status(NtStatus::ObjectNameInvalid))?;
        let open = self.open(fid, ctx)?;
        if open.access & DELETE == 0 {
            return Err(NtStatus::AccessDenied.into());
        }
        let mut target = SharePath::parse(&name)?;
        let share = std::sync::Arc::clone(&open.share);
        share.resolve_case(&mut target, false);
        if target.is_root() {
            return Err(NtStatus::AccessDenied.into());
        }
        let same = target.host().to_string_lossy().to_lowercase()
            == open.path.host().to_string_lossy().to_lowercase();
        if let Ok(meta) = share.stat(&target) {
            if !same {
                if !replace {
                    return Err(NtStatus::ObjectNameCollision.into());
                }
                if meta.is_dir() {
                    return Err(NtStatus::AccessDenied.into());
                }
            }
        }
        if !share.parent_exists(&target) {
            return Err(NtStatus::ObjectPathNotFound.into());
        }
        let from = open.path.clone();
        if open.is_dir {
            let below = self.opens.values().any(|o| {
                std::sync::Arc::ptr_eq(&o.share, &share)
                    && o.path.components().len() > from.components().len()
                    && o.path.components().starts_with(from.components())
            });
            if below {
                return Err(NtStatus::AccessDenied.into());
            }
        }
        share
            .rename(&from, &target)
            .map_err(|e| Fail::Status(NtStatus::from_io(&e, false)))?;
        // Keep open handles below a renamed directory pointing at it.
        let old = from.components().to_vec();
        for o in self.opens.values_mut() {
            if o.path.components().starts_with(&old) && std::sync::Arc::ptr_eq(&o.share, &share) {
                let mut c = target.components().to_vec();
                c.extend_from_slice(&o.path.components()[old.len()..]);
                if let Ok(p) = SharePath::parse(&c.join("\\")) {
                    o.path = p;
                }
            }
        }
        Ok(())
    }

    fn set_delete(&mut self, fid: &FileId, delete: bool, ctx: &Ctx) -> Result<()> {
        let open = self.open(fid, ctx)?;
        if open.access & DELETE == 0 {
            return Err(NtStatus::AccessDenied.into());
        }
        if delete {
            if open.path.is_root() {
                return Err(NtStatus::AccessDenied.into());
            }
            if open.is_dir && open.share.dir_has_entries(&open.path).unwrap_or(false) {
                return Err(NtStatus::DirectoryNotEmpty.into());
            }
            if !open.is_dir
                && open
                    .file
                    .metadata()
                    .is_ok_and(|m| m.permissions().readonly())
            {
                return Err(NtStatus::CannotDelete.into());
            }
        }
        self.open_mut(fid, ctx)?.delete_on_close = delete;
        Ok(())
    }

    pub(super) fn ioctl(
        &mut self,
        code: u32,
        fid: &FileId,
        input: &[u8],
        max_output: u32,
        ctx: &Ctx,
    ) -> Result<Reply> {
        let output = match code {
            FSCTL_VALIDATE_NEGOTIATE_INFO => self.validate_negotiate(input)?,
            FSCTL_QUERY_NETWORK_INTERFACE_INFO => {
                self.session(ctx)?;
                let addr = self
                    .server
                    .config
                    .interface_addr
                    .ok_or(Fail::Status(NtStatus::NotSupported))?;
                let mut o = Out::with_capacity(152);
                o.u32(0).u32(1).u32(0).u32(0).u64(10_000_000_000);
                o.u16(2).u16(0).bytes(&addr.octets()).zeros(120);
                o.0
            }
            FSCTL_DFS_GET_REFERRALS | FSCTL_DFS_GET_REFERRALS_EX => {
                return Err(match self.tree(ctx)? {
                    Tree::Ipc => NtStatus::NotFound,
                    Tree::Disk(_) => NtStatus::Unknown(0xC000_019C), // FS_DRIVER_REQUIRED
                }
                .into());
            }
            FSCTL_GET_REPARSE_POINT => {
                self.open(fid, ctx)?;
                return Err(NtStatus::NotAReparsePoint.into());
            }
            _ => {
                self.tree(ctx)?;
                return Err(NtStatus::NotSupported.into());
            }
        };
        if output.len() > max_output as usize {
            return Err(NtStatus::BufferOverflow.into());
        }
        let mut o = Out::with_capacity(48 + output.len());
        o.u16(49).u16(0).u32(code).bytes(fid);
        o.u32(112)
            .u32(0)
            .u32(112)
            .u32(u32_len(output.len()))
            .u32(0)
            .u32(0);
        o.bytes(&output);
        if output.is_empty() {
            o.u8(0);
        }
        Ok(Reply::ok(o.0))
    }

    fn validate_negotiate(&self, input: &[u8]) -> Result<Vec<u8>> {
        let drop = || {
            Fail::Drop(super::ConnError::Protocol(
                "VALIDATE_NEGOTIATE_INFO mismatch",
            ))
        };
        let b = Buf(input);
        let req = self.neg_request.as_ref().ok_or_else(drop)?;
        let caps = b.u32(0).map_err(|_| drop())?;
        let guid = b.b16(4).map_err(|_| drop())?;
        let mode = b.u16(20).map_err(|_| drop())?;
        let count = usize::from(b.u16(22).map_err(|_| drop())?);
        let dialects = (0..count.min(64))
            .map(|i| b.u16(24 + 2 * i))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| drop())?;
        if caps != req.capabilities
            || guid != req.client_guid
            || mode != req.security_mode
            || dialects != req.dialects
        {
            return Err(drop());
        }
        let mut o = Out::with_capacity(24);
        o.u32(self.neg_capabilities)
            .bytes(&self.server.guid)
            .u16(self.neg_security_mode)
            .u16(self.dialect.unwrap_or(0));
        Ok(o.0)
    }

    /// Closes and forgets every open of a session/tree pair.
    pub(super) fn close_tree_opens(&mut self, sid: u64, tid: Option<u32>) {
        self.close_where(|o| o.session_id == sid && tid.is_none_or(|t| o.tree_id == t));
    }
}
