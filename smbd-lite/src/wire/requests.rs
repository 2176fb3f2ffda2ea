//! Request bodies after the header, one typed repr per command, and the
//! fixed-layout response bodies.
//!
//! All offsets in SMB2 bodies count from the start of the SMB2 header, so
//! each parser gets the whole message (header included).

use super::{u16_len, u32_len, Buf, Command, Out, WireError, HEADER_LEN};

/// A FileId (persistent + volatile halves).
pub type FileId = [u8; 16];
/// The FileId meaning "the handle created earlier in this compound".
pub const FILE_ID_LAST: FileId = [0xFF; 16];

/// Most byte-range locks accepted in one LOCK request.
pub const MAX_LOCKS: usize = 64;

/// A parsed request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// SESSION_SETUP with its security blob.
    SessionSetup {
        /// The SPNEGO or raw NTLMSSP blob.
        blob: &'a [u8],
    },
    /// LOGOFF
    Logoff,
    /// TREE_CONNECT to `\\server\share` (UTF-16LE).
    TreeConnect {
        /// The UNC path bytes.
        path: &'a [u8],
    },
    /// TREE_DISCONNECT
    TreeDisconnect,
    /// CREATE
    Create(CreateRequest<'a>),
    /// CLOSE
    Close {
        /// CLOSE flags (POSTQUERY_ATTRIB = 1).
        flags: u16,
        /// The handle.
        file_id: FileId,
    },
    /// FLUSH
    Flush {
        /// The handle.
        file_id: FileId,
    },
    /// READ
    Read {
        /// Bytes wanted.
        length: u32,
        /// File offset.
        offset: u64,
        /// The handle.
        file_id: FileId,
        /// Fewer bytes than this is END_OF_FILE.
        minimum: u32,
    },
    /// WRITE
    Write {
        /// File offset.
        offset: u64,
        /// The handle.
        file_id: FileId,
        /// The data.
        data: &'a [u8],
    },
    /// LOCK
    Lock {
        /// The handle.
        file_id: FileId,
        /// The ranges.
        locks: Vec<LockElement>,
    },
    /// IOCTL / FSCTL
    Ioctl {
        /// Control code.
        ctl_code: u32,
        /// The handle (all ones for none).
        file_id: FileId,
        /// Input data.
        input: &'a [u8],
        /// Largest output wanted.
        max_output: u32,
        /// 1 = FSCTL.
        flags: u32,
    },
    /// CANCEL
    Cancel,
    /// ECHO
    Echo,
    /// QUERY_DIRECTORY
    QueryDirectory {
        /// Information class.
        class: u8,
        /// RESTART_SCANS etc.
        flags: u8,
        /// The directory handle.
        file_id: FileId,
        /// Search pattern (UTF-16LE).
        pattern: &'a [u8],
        /// Output buffer size.
        max_output: u32,
    },
    /// CHANGE_NOTIFY
    ChangeNotify {
        /// The directory handle.
        file_id: FileId,
    },
    /// QUERY_INFO
    QueryInfo {
        /// 1 file, 2 filesystem, 3 security, 4 quota.
        info_type: u8,
        /// Information class.
        class: u8,
        /// Output buffer size.
        max_output: u32,
        /// The handle.
        file_id: FileId,
    },
    /// SET_INFO
    SetInfo {
        /// 1 file, 2 filesystem, 3 security, 4 quota.
        info_type: u8,
        /// Information class.
        class: u8,
        /// The handle.
        file_id: FileId,
        /// The new information.
        data: &'a [u8],
    },
    /// OPLOCK_BREAK acknowledgement.
    OplockBreak,
    /// A command this server does not know.
    Unknown(u16),
}

/// One LOCK element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockElement {
    /// Start of the range.
    pub offset: u64,
    /// Length of the range.
    pub length: u64,
    /// SHARED 1, EXCLUSIVE 2, UNLOCK 4, FAIL_IMMEDIATELY 0x10.
    pub flags: u32,
}

/// A CREATE request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest<'a> {
    /// Requested oplock level.
    pub oplock: u8,
    /// Desired access mask.
    pub desired_access: u32,
    /// Attributes for a new file.
    pub attributes: u32,
    /// Share access.
    pub share_access: u32,
    /// Create disposition.
    pub disposition: u32,
    /// Create options.
    pub options: u32,
    /// Name relative to the share (UTF-16LE).
    pub name: &'a [u8],
    /// Create context names present (each at most 16 bytes, e.g. `MxAc`).
    pub contexts: Vec<&'a [u8]>,
}

/// Most create contexts walked in one CREATE.
const MAX_CONTEXTS: usize = 32;

/// Reads the 16-byte FileId at `off`.
fn file_id(b: Buf<'_>, off: usize) -> Result<FileId, WireError> {
    b.b16(off)
}

/// Checks the body's StructureSize.
fn expect_size(b: Buf<'_>, size: u16) -> Result<(), WireError> {
    if b.u16(HEADER_LEN)? == size {
        Ok(())
    } else {
        Err(WireError::Invalid("structure size"))
    }
}

impl<'a> Request<'a> {
    /// Parses the body of `msg` (one compound member, header included).
    pub fn parse(command: Command, msg: &'a [u8]) -> Result<Self, WireError> {
        let b = Buf(msg);
        let o = HEADER_LEN;
        let req = match command {
            Command::SessionSetup => {
                expect_size(b, 25)?;
                let off = usize::from(b.u16(o + 12)?);
                let len = usize::from(b.u16(o + 14)?);
                Self::SessionSetup {
                    blob: b.region(off, len)?,
                }
            }
            Command::Logoff => Self::Logoff,
            Command::TreeConnect => {
                expect_size(b, 9)?;
                let off = usize::from(b.u16(o + 4)?);
                let len = usize::from(b.u16(o + 6)?);
                Self::TreeConnect {
                    path: b.region(off, len)?,
                }
            }
            Command::TreeDisconnect => Self::TreeDisconnect,
            Command::Create => Self::Create(CreateRequest::parse(b)?),
            Command::Close => {
                expect_size(b, 24)?;
                Self::Close {
                    flags: b.u16(o + 2)?,
                    file_id: file_id(b, o + 8)?,
                }
            }
            Command::Flush => {
                expect_size(b, 24)?;
                Self::Flush {
                    file_id: file_id(b, o + 8)?,
                }
            }
            Command::Read => {
                expect_size(b, 49)?;
                Self::Read {
                    length: b.u32(o + 4)?,
                    offset: b.u64(o + 8)?,
                    file_id: file_id(b, o + 16)?,
                    minimum: b.u32(o + 32)?,
                }
            }
            Command::Write => {
                expect_size(b, 49)?;
                let off = usize::from(b.u16(o + 2)?);
                let len = b.u32(o + 4)? as usize;
                Self::Write {
                    offset: b.u64(o + 8)?,
                    file_id: file_id(b, o + 16)?,
                    data: b.region(off, len)?,
                }
            }
            Command::Lock => {
                expect_size(b, 48)?;
                // An empty list (or one over the cap) is answered with
                // INVALID_PARAMETER by the handler, not a dropped connection.
                let mut count = usize::from(b.u16(o + 2)?);
                if count > MAX_LOCKS {
                    count = 0;
                }
                let locks = (0..count)
                    .map(|i| {
                        let e = o + 24 + 24 * i;
                        Ok(LockElement {
                            offset: b.u64(e)?,
                            length: b.u64(e + 8)?,
                            flags: b.u32(e + 16)?,
                        })
                    })
                    .collect::<Result<Vec<_>, WireError>>()?;
                Self::Lock {
                    file_id: file_id(b, o + 8)?,
                    locks,
                }
            }
            Command::Ioctl => {
                expect_size(b, 57)?;
                let off = b.u32(o + 24)? as usize;
                let len = b.u32(o + 28)? as usize;
                Self::Ioctl {
                    ctl_code: b.u32(o + 4)?,
                    file_id: file_id(b, o + 8)?,
                    input: b.region(off, len)?,
                    max_output: b.u32(o + 44)?,
                    flags: b.u32(o + 48)?,
                }
            }
            Command::Cancel => Self::Cancel,
            Command::Echo => Self::Echo,
            Command::QueryDirectory => {
                expect_size(b, 33)?;
                let off = usize::from(b.u16(o + 24)?);
                let len = usize::from(b.u16(o + 26)?);
                Self::QueryDirectory {
                    class: b.u8(o + 2)?,
                    flags: b.u8(o + 3)?,
                    file_id: file_id(b, o + 8)?,
                    pattern: b.region(off, len)?,
                    max_output: b.u32(o + 28)?,
                }
            }
            Command::ChangeNotify => {
                expect_size(b, 32)?;
                Self::ChangeNotify {
                    file_id: file_id(b, o + 8)?,
                }
            }
            Command::QueryInfo => {
                expect_size(b, 41)?;
                Self::QueryInfo {
                    info_type: b.u8(o + 2)?,
                    class: b.u8(o + 3)?,
                    max_output: b.u32(o + 4)?,
                    file_id: file_id(b, o + 24)?,
                }
            }
            Command::SetInfo => {
                expect_size(b, 33)?;
                let len = b.u32(o + 4)? as usize;
                let off = usize::from(b.u16(o + 8)?);
                Self::SetInfo {
                    info_type: b.u8(o + 2)?,
                    class: b.u8(o + 3)?,
                    file_id: file_id(b, o + 16)?,
                    data: b.region(off, len)?,
                }
            }
            Command::OplockBreak => Self::OplockBreak,
            Command::Negotiate => return Err(WireError::Invalid("second negotiate")),
            Command::Unknown(c) => Self::Unknown(c),
        };
        Ok(req)
    }

    /// The FileId this request names, if any (for compound substitution).
    pub fn file_id_mut(&mut self) -> Option<&mut FileId> {
        match self {
            Self::Create(_)
            | Self::SessionSetup { .. }
            | Self::Logoff
            | Self::TreeConnect { .. }
            | Self::TreeDisconnect
            | Self::Cancel
            | Self::Echo
            | Self::OplockBreak
            | Self::Unknown(_) => None,
            Self::Close { file_id, .. }
            | Self::Flush { file_id }
            | Self::Read { file_id, .. }
            | Self::Write { file_id, .. }
            | Self::Lock { file_id, .. }
            | Self::Ioctl { file_id, .. }
            | Self::QueryDirectory { file_id, .. }
            | Self::ChangeNotify { file_id }
            | Self::QueryInfo { file_id, .. }
            | Self::SetInfo { file_id, .. } => Some(file_id),
        }
    }
}

impl<'a> CreateRequest<'a> {
    fn parse(b: Buf<'a>) -> Result<Self, WireError> {
        expect_size(b, 57)?;
        let o = HEADER_LEN;
        let name_off = usize::from(b.u16(o + 44)?);
        let name_len = usize::from(b.u16(o + 46)?);
        let ctx_off = b.u32(o + 48)? as usize;
        let ctx_len = b.u32(o + 52)? as usize;
        let ctx = b.region(ctx_off, ctx_len)?;
        Ok(Self {
            oplock: b.u8(o + 3)?,
            desired_access: b.u32(o + 24)?,
            attributes: b.u32(o + 28)?,
            share_access: b.u32(o + 32)?,
            disposition: b.u32(o + 36)?,
            options: b.u32(o + 40)?,
            name: b.region(name_off, name_len)?,
            contexts: parse_create_contexts(ctx)?,
        })
    }
}

/// Walks a create-context chain, returning each context's name.
pub fn parse_create_contexts(chain: &[u8]) -> Result<Vec<&[u8]>, WireError> {
    let mut names = Vec::new();
    let mut off = 0usize;
    while off < chain.len() {
        if names.len() >= MAX_CONTEXTS {
            return Err(WireError::Invalid("too many create contexts"));
        }
        let c = Buf(chain.get(off..).ok_or(WireError::Truncated(off))?);
        let next = c.u32(0)? as usize;
        let name_off = usize::from(c.u16(4)?);
        let name_len = usize::from(c.u16(6)?);
        let data_off = usize::from(c.u16(10)?);
        let data_len = c.u32(12)? as usize;
        names.push(c.bytes(name_off, name_len)?);
        c.region(data_off, data_len)?;
        if next == 0 {
            break;
        }
        if next % 8 != 0 || next < 16 {
            return Err(WireError::Invalid("create context chain"));
        }
        off = off.checked_add(next).ok_or(WireError::Truncated(off))?;
    }
    Ok(names)
}

/// Appends one create context (name and data) to a reply chain, linking
/// the previous one at `prev` if given; returns this context's start.
pub fn emit_create_context(out: &mut Out, prev: Option<usize>, name: &[u8], data: &[u8]) -> usize {
    out.align(8);
    let start = out.len();
    if let Some(p) = prev {
        out.put_u32(p, u32_len(start - p));
    }
    let data_off = (16 + name.len()).div_ceil(8) * 8;
    out.u32(0)
        .u16(16)
        .u16(u16_len(name.len()))
        .u16(0)
        .u16(u16_len(data_off))
        .u32(u32_len(data.len()))
        .bytes(name);
    out.zeros(data_off - 16 - name.len()).bytes(data);
    start
}

/// Appends a 9-byte-structure reply carrying a buffer at offset 72
/// (QUERY_INFO, QUERY_DIRECTORY).
pub fn emit_buffer_reply(out: &mut Out, data: &[u8]) {
    out.u16(9)
        .u16(u16_len(HEADER_LEN + 8))
        .u32(u32_len(data.len()));
    if data.is_empty() {
        out.u8(0);
    } else {
        out.bytes(data);
    }
}

/// Appends the error reply body.
pub fn emit_error_body(out: &mut Out) {
    out.u16(9).u16(0).u32(0).u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(body: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN];
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn write_whose_data_runs_past_the_message_is_rejected() {
        let mut o = Out::default();
        o.u16(49)
            .u16(112)
            .u32(1000)
            .u64(0)
            .zeros(16)
            .zeros(16)
            .u8(0);
        let m = with_header(&o.0);
        assert!(Request::parse(Command::Write, &m).is_err());
    }

    #[test]
    fn create_context_chain_with_bad_next_is_rejected() {
        let mut o = Out::default();
        o.u32(3).u16(16).u16(4).u16(0).u16(0).u32(0).bytes(b"MxAc");
        assert!(parse_create_contexts(&o.0).is_err());
    }

    #[test]
    fn create_context_names_are_listed() {
        let mut o = Out::default();
        let first = emit_create_context(&mut o, None, b"MxAc", &[]);
        emit_create_context(&mut o, Some(first), b"QFid", &[]);
        let names = parse_create_contexts(&o.0).unwrap();
        assert_eq!(names, vec![&b"MxAc"[..], &b"QFid"[..]]);
    }

    #[test]
    fn lock_count_zero_parses_to_an_empty_list() {
        let mut o = Out::default();
        o.u16(48).u16(0).u32(0).zeros(16);
        match Request::parse(Command::Lock, &with_header(&o.0)) {
            Ok(Request::Lock { locks, .. }) => assert!(locks.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}
