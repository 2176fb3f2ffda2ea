//! The 64-byte SMB2 header.

use super::{Buf, NtStatus, Out, WireError, HEADER_LEN};

/// SMB2 protocol id, `0xFE 'S' 'M' 'B'`.
pub const PROTOCOL_ID: [u8; 4] = [0xFE, b'S', b'M', b'B'];

/// Header flag: this is a response.
pub const FLAG_RESPONSE: u32 = 0x1;
/// Header flag: async header layout (AsyncId instead of TreeId).
pub const FLAG_ASYNC: u32 = 0x2;
/// Header flag: related compound member.
pub const FLAG_RELATED: u32 = 0x4;
/// Header flag: signed.
pub const FLAG_SIGNED: u32 = 0x8;

/// SMB2 command codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// NEGOTIATE
    Negotiate,
    /// SESSION_SETUP
    SessionSetup,
    /// LOGOFF
    Logoff,
    /// TREE_CONNECT
    TreeConnect,
    /// TREE_DISCONNECT
    TreeDisconnect,
    /// CREATE
    Create,
    /// CLOSE
    Close,
    /// FLUSH
    Flush,
    /// READ
    Read,
    /// WRITE
    Write,
    /// LOCK
    Lock,
    /// IOCTL
    Ioctl,
    /// CANCEL
    Cancel,
    /// ECHO
    Echo,
    /// QUERY_DIRECTORY
    QueryDirectory,
    /// CHANGE_NOTIFY
    ChangeNotify,
    /// QUERY_INFO
    QueryInfo,
    /// SET_INFO
    SetInfo,
    /// OPLOCK_BREAK
    OplockBreak,
    /// Anything else.
    Unknown(u16),
}

impl From<u16> for Command {
    fn from(v: u16) -> Self {
        match v {
            0 => Self::Negotiate,
            1 => Self::SessionSetup,
            2 => Self::Logoff,
            3 => Self::TreeConnect,
            4 => Self::TreeDisconnect,
            5 => Self::Create,
            6 => Self::Close,
            7 => Self::Flush,
            8 => Self::Read,
            9 => Self::Write,
            10 => Self::Lock,
            11 => Self::Ioctl,
            12 => Self::Cancel,
            13 => Self::Echo,
            14 => Self::QueryDirectory,
            15 => Self::ChangeNotify,
            16 => Self::QueryInfo,
            17 => Self::SetInfo,
            18 => Self::OplockBreak,
            other => Self::Unknown(other),
        }
    }
}

impl From<Command> for u16 {
    fn from(c: Command) -> u16 {
        match c {
            Command::Negotiate => 0,
            Command::SessionSetup => 1,
            Command::Logoff => 2,
            Command::TreeConnect => 3,
            Command::TreeDisconnect => 4,
            Command::Create => 5,
            Command::Close => 6,
            Command::Flush => 7,
            Command::Read => 8,
            Command::Write => 9,
            Command::Lock => 10,
            Command::Ioctl => 11,
            Command::Cancel => 12,
            Command::Echo => 13,
            Command::QueryDirectory => 14,
            Command::ChangeNotify => 15,
            Command::QueryInfo => 16,
            Command::SetInfo => 17,
            Command::OplockBreak => 18,
            Command::Unknown(v) => v,
        }
    }
}

/// A parsed SMB2 header (sync or async layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Credits this request costs.
    pub credit_charge: u16,
    /// Status (responses) or channel sequence (requests).
    pub status: u32,
    /// The command.
    pub command: Command,
    /// Credits requested or granted.
    pub credits: u16,
    /// Header flags.
    pub flags: u32,
    /// Offset of the next compound member, 0 if last.
    pub next_command: u32,
    /// Message id.
    pub message_id: u64,
    /// Async id (only with [`FLAG_ASYNC`]).
    pub async_id: u64,
    /// Tree id (sync layout).
    pub tree_id: u32,
    /// Session id.
    pub session_id: u64,
    /// Signature.
    pub signature: [u8; 16],
}

impl Header {
    /// Parses and validates the header at the start of `msg`.
    pub fn parse(msg: &[u8]) -> Result<Self, WireError> {
        let b = Buf(msg);
        if b.bytes(0, 4)? != PROTOCOL_ID {
            return Err(WireError::Invalid("protocol id"));
        }
        if b.u16(4)? != 64 {
            return Err(WireError::Invalid("header size"));
        }
        let flags = b.u32(16)?;
        let async_ = flags & FLAG_ASYNC != 0;
        Ok(Self {
            credit_charge: b.u16(6)?,
            status: b.u32(8)?,
            command: Command::from(b.u16(12)?),
            credits: b.u16(14)?,
            flags,
            next_command: b.u32(20)?,
            message_id: b.u64(24)?,
            async_id: if async_ { b.u64(32)? } else { 0 },
            tree_id: if async_ { 0 } else { b.u32(36)? },
            session_id: b.u64(40)?,
            signature: b.b16(48)?,
        })
    }

    /// The response header for this request.
    pub fn response(&self, status: NtStatus, credits: u16) -> Self {
        Self {
            status: status.code(),
            credits,
            flags: (self.flags & (FLAG_ASYNC | FLAG_RELATED)) | FLAG_RESPONSE,
            next_command: 0,
            signature: [0; 16],
            ..*self
        }
    }

    /// Writes the 64 header bytes.
    pub fn emit(&self, out: &mut Out) {
        let start = out.len();
        out.bytes(&PROTOCOL_ID)
            .u16(64)
            .u16(self.credit_charge)
            .u32(self.status)
            .u16(u16::from(self.command))
            .u16(self.credits)
            .u32(self.flags)
            .u32(self.next_command)
            .u64(self.message_id);
        if self.flags & FLAG_ASYNC != 0 {
            out.u64(self.async_id);
        } else {
            out.u32(0xFEFF).u32(self.tree_id);
        }
        out.u64(self.session_id).bytes(&self.signature);
        debug_assert_eq!(out.len() - start, HEADER_LEN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_emit_and_parse() {
        let h = Header {
            credit_charge: 2,
            status: 0,
            command: Command::Read,
            credits: 31,
            flags: FLAG_RELATED,
            next_command: 0,
            message_id: 77,
            async_id: 0,
            tree_id: 5,
            session_id: 0x1122_3344_5566_7788,
            signature: [0; 16],
        };
        let mut out = Out::default();
        h.emit(&mut out);
        assert_eq!(Header::parse(&out.0).unwrap(), h);
    }

    #[test]
    fn short_or_foreign_header_is_rejected() {
        assert!(Header::parse(&[0xFE, b'S', b'M']).is_err());
        assert!(Header::parse(&[0u8; 64]).is_err());
    }
}
