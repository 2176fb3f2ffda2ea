//! One client connection as a synchronous state machine: a frame in, a
//! frame (or nothing) out. No I/O on the socket happens here, so tests drive
//! it with byte arrays; [`crate::server`] is the async glue.

mod credits;
mod file;
mod query;
mod session;

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::signing::{preauth_update, SigningKey};
use crate::wire::header::{FLAG_RELATED, FLAG_SIGNED};
use crate::wire::negotiate::{self, parse_smb1_negotiate, Smb1Negotiate, SMB311};
use crate::wire::requests::{emit_error_body, FileId, Request, FILE_ID_LAST};
use crate::wire::{Command, Header, NtStatus, Out, WireError, HEADER_LEN};
use crate::Server;

pub use credits::CreditError;
use file::Open;
use session::{Session, Tree};

/// Why a connection must end.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The client sent something malformed.
    #[error("Malformed message")]
    Wire(#[from] WireError),
    /// The client broke the credit rules.
    #[error("Credit violation")]
    Credits(#[from] CreditError),
    /// The protocol requires dropping the connection.
    #[error("Protocol violation: {0}")]
    Protocol(&'static str),
}

/// A failed request: an NT status reply, or the end of the connection.
#[derive(Debug)]
pub(crate) enum Fail {
    Status(NtStatus),
    Drop(ConnError),
}

impl From<NtStatus> for Fail {
    fn from(s: NtStatus) -> Self {
        Self::Status(s)
    }
}

impl From<WireError> for Fail {
    fn from(e: WireError) -> Self {
        Self::Drop(ConnError::Wire(e))
    }
}

/// A successful reply: status (success or a warning) and body.
#[derive(Debug)]
pub(crate) struct Reply {
    status: NtStatus,
    body: Vec<u8>,
}

impl Reply {
    fn ok(body: Vec<u8>) -> Self {
        Self {
            status: NtStatus::Success,
            body,
        }
    }
    /// The 4-byte body of LOGOFF, ECHO, FLUSH, LOCK and friends.
    fn empty4() -> Self {
        Self::ok(vec![4, 0, 0, 0])
    }
}

type Result<T> = std::result::Result<T, Fail>;

/// One compound member's reply bytes and the key to sign them with.
type MemberReply = (Vec<u8>, Option<SigningKey>);

/// Per-member context of a compound chain.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ctx {
    session_id: u64,
    tree_id: u32,
    /// FileId of the last CREATE in the chain.
    file_id: Option<FileId>,
    /// Status of a failed CREATE earlier in a related chain.
    failed: Option<NtStatus>,
    signed: bool,
}

/// Connection state.
#[derive(Debug)]
pub struct Connection {
    server: Arc<Server>,
    dialect: Option<u16>,
    preauth: [u8; 64],
    neg_request: Option<negotiate::NegotiateRequest>,
    neg_security_mode: u16,
    neg_capabilities: u32,
    credits: credits::Credits,
    sessions: HashMap<u64, Session>,
    next_session: u64,
    opens: HashMap<u64, Open>,
    next_file: u64,
}

impl Connection {
    /// A new connection on `server`.
    pub fn new(server: Arc<Server>) -> Self {
        let max = usize::from(server.config.limits.max_credits);
        Self {
            server,
            dialect: None,
            preauth: [0; 64],
            neg_request: None,
            neg_security_mode: 0,
            neg_capabilities: 0,
            credits: credits::Credits::new(0, max),
            sessions: HashMap::new(),
            next_session: 1,
            opens: HashMap::new(),
            next_file: 1,
        }
    }

    /// Number of open files (for limits and tests).
    pub fn open_count(&self) -> usize {
        self.opens.len()
    }

    /// Handles one frame (without the 4-byte transport header); returns the
    /// reply frame, or `None` when nothing is to be sent.
    pub fn handle_frame(
        &mut self,
        frame: &[u8],
    ) -> std::result::Result<Option<Vec<u8>>, ConnError> {
        if frame.first() == Some(&0xFF) {
            return self.handle_smb1(frame).map(Some);
        }
        let mut replies: Vec<MemberReply> = Vec::new();
        let mut ctx = Ctx::default();
        let mut off = 0usize;
        loop {
            let rest = frame.get(off..).ok_or(WireError::Truncated(off))?;
            let hdr = Header::parse(rest)?;
            let len = match hdr.next_command as usize {
                0 => rest.len(),
                n if n % 8 == 0 && n >= HEADER_LEN && n <= rest.len() => n,
                _ => return Err(ConnError::Protocol("bad NextCommand")),
            };
            if replies.len() >= self.server.config.limits.max_compound {
                return Err(ConnError::Protocol("compound too long"));
            }
            if let Some(r) = self.handle_member(&hdr, &rest[..len], &mut ctx)? {
                replies.push(r);
            }
            if hdr.next_command == 0 {
                break;
            }
            off += len;
        }
        if replies.is_empty() {
            return Ok(None);
        }
        let last = replies.len() - 1;
        let mut out = Out::with_capacity(replies.iter().map(|r| r.0.len() + 8).sum());
        for (i, (mut bytes, key)) in replies.into_iter().enumerate() {
            if i != last {
                let padded = bytes.len().div_ceil(8) * 8;
                bytes.resize(padded, 0);
                bytes[20..24].copy_from_slice(&crate::wire::u32_len(padded).to_le_bytes());
            }
            if let Some(key) = key {
                key.sign(&mut bytes);
            }
            out.bytes(&bytes);
        }
        Ok(Some(out.0))
    }

    /// Handles one compound member; returns its reply (unpadded) and the
    /// key to sign it with, or `None` when it gets no reply.
    fn handle_member(
        &mut self,
        hdr: &Header,
        msg: &[u8],
        ctx: &mut Ctx,
    ) -> std::result::Result<Option<MemberReply>, ConnError> {
        if hdr.flags & 0x1 != 0 {
            return Err(ConnError::Protocol("response sent to server"));
        }
        if hdr.command == Command::Cancel {
            // CANCEL takes no credit and gets no reply (nothing is async).
            return Ok(None);
        }
        let charge = if self.dialect.unwrap_or(0) >= negotiate::SMB210 {
            hdr.credit_charge
        } else {
            1
        };
        self.credits.consume(hdr.message_id, charge)?;
        let related = hdr.flags & FLAG_RELATED != 0;
        if related {
            if hdr.session_id != u64::MAX && hdr.session_id != 0 && hdr.session_id != ctx.session_id
            {
                ctx.session_id = hdr.session_id;
            }
            if hdr.tree_id != u32::MAX && hdr.tree_id != 0 {
                ctx.tree_id = hdr.tree_id;
            }
        } else {
            *ctx = Ctx {
                session_id: hdr.session_id,
                tree_id: hdr.tree_id,
                ..Ctx::default()
            };
        }
        ctx.signed = hdr.flags & FLAG_SIGNED != 0;
        let result = if related && ctx.failed.is_some() {
            Err(Fail::Status(
                ctx.failed.unwrap_or(NtStatus::InvalidParameter),
            ))
        } else {
            self.check_signature(hdr, msg, ctx)
                .and_then(|()| self.dispatch(hdr, msg, ctx))
        };
        let (status, body) = match result {
            Ok(r) => (r.status, r.body),
            Err(Fail::Drop(e)) => return Err(e),
            Err(Fail::Status(s)) => {
                if hdr.command == Command::Create {
                    ctx.failed = Some(s);
                }
                let mut b = Out::default();
                emit_error_body(&mut b);
                (s, b.0)
            }
        };
        let granted = self.credits.grant(hdr.credits.max(1));
        let mut out = Out::with_capacity(HEADER_LEN + body.len());
        let mut rh = hdr.response(status, granted);
        rh.session_id = ctx.session_id;
        rh.tree_id = if hdr.command == Command::TreeConnect && !status.is_error() {
            ctx.tree_id
        } else {
            hdr.tree_id
        };
        if related && hdr.command != Command::TreeConnect {
            rh.tree_id = ctx.tree_id;
        }
        rh.emit(&mut out);
        out.bytes(&body);
        self.preauth_reply(hdr, msg, status, ctx, &out.0);
        let key = self.signing_key_for_reply(hdr, status, ctx);
        Ok(Some((out.0, key)))
    }

    /// Preauth hashing of NEGOTIATE and SESSION_SETUP replies (3.1.1).
    fn preauth_reply(
        &mut self,
        hdr: &Header,
        msg: &[u8],
        status: NtStatus,
        ctx: &Ctx,
        reply: &[u8],
    ) {
        if hdr.command == Command::SessionSetup
            && self.dialect == Some(SMB311)
            && status == NtStatus::MoreProcessingRequired
        {
            if let Some(s) = self.sessions.get_mut(&ctx.session_id) {
                preauth_update(&mut s.preauth, reply);
            }
        }
        if hdr.command == Command::Negotiate && self.dialect == Some(SMB311) {
            preauth_update(&mut self.preauth, msg);
            preauth_update(&mut self.preauth, reply);
        }
    }

    fn signing_key_for_reply(
        &self,
        hdr: &Header,
        status: NtStatus,
        ctx: &Ctx,
    ) -> Option<SigningKey> {
        let s = self.sessions.get(&ctx.session_id)?;
        let key = s.signing.clone()?;
        let final_setup = hdr.command == Command::SessionSetup && status == NtStatus::Success;
        if ctx.signed
            || (final_setup && self.dialect >= Some(negotiate::SMB300))
            || s.signing_required
        {
            Some(key)
        } else {
            None
        }
    }

    fn check_signature(&self, hdr: &Header, msg: &[u8], ctx: &Ctx) -> Result<()> {
        if !ctx.signed || hdr.command == Command::SessionSetup {
            return Ok(());
        }
        let Some(s) = self.sessions.get(&ctx.session_id) else {
            return Ok(());
        };
        match &s.signing {
            Some(key) if !key.verify(msg) => Err(Fail::Status(NtStatus::AccessDenied)),
            _ => Ok(()),
        }
    }

    fn dispatch(&mut self, hdr: &Header, msg: &[u8], ctx: &mut Ctx) -> Result<Reply> {
        if hdr.command == Command::Negotiate {
            return self.negotiate(msg);
        }
        if self.dialect.is_none() || self.dialect == Some(negotiate::SMB2_WILDCARD) {
            return Err(Fail::Drop(ConnError::Protocol("request before NEGOTIATE")));
        }
        let mut req = Request::parse(hdr.command, msg)?;
        // All-ones names the handle a related CREATE before this request
        // opened. Without one it stays as it is: FSCTLs that need no handle
        // (interface list, DFS referral, validate negotiate) carry it, and
        // requests that do need one then find no such handle (FILE_CLOSED).
        if let Some(fid) = req.file_id_mut() {
            if *fid == FILE_ID_LAST {
                if let Some(id) = ctx.file_id {
                    *fid = id;
                }
            }
        }
        match req {
            Request::SessionSetup { blob } => self.session_setup(hdr, msg, blob, ctx),
            Request::Echo => Ok(Reply::empty4()),
            Request::Logoff => self.logoff(ctx),
            Request::TreeConnect { path } => self.tree_connect(path, ctx),
            Request::TreeDisconnect => self.tree_disconnect(ctx),
            Request::Create(c) => self.create(&c, ctx),
            Request::Close { flags, file_id } => self.close(flags, &file_id, ctx),
            Request::Flush { file_id } => self.flush(&file_id, ctx),
            Request::Read {
                length,
                offset,
                file_id,
                minimum,
            } => self.read(length, offset, &file_id, minimum, ctx),
            Request::Write {
                offset,
                file_id,
                data,
            } => self.write(offset, &file_id, data, ctx),
            Request::Lock { file_id, locks } => self.lock(&file_id, &locks, ctx),
            Request::Ioctl {
                ctl_code,
                file_id,
                input,
                max_output,
                ..
            } => self.ioctl(ctl_code, &file_id, input, max_output, ctx),
            Request::QueryDirectory {
                class,
                flags,
                file_id,
                pattern,
                max_output,
            } => self.query_directory(class, flags, &file_id, pattern, max_output, ctx),
            Request::ChangeNotify { file_id } => {
                self.open(&file_id, ctx)?;
                Err(NtStatus::NotImplemented.into())
            }
            Request::QueryInfo {
                info_type,
                class,
                max_output,
                file_id,
            } => self.query_info(info_type, class, max_output, &file_id, msg, ctx),
            Request::SetInfo {
                info_type,
                class,
                file_id,
                data,
            } => self.set_info(info_type, class, &file_id, data, ctx),
            Request::OplockBreak => Err(NtStatus::InvalidOplockProtocol.into()),
            Request::Cancel => Err(NtStatus::InvalidParameter.into()),
            Request::Unknown(_) => Err(NtStatus::InvalidParameter.into()),
        }
    }

    /// The SMB1 NEGOTIATE that old clients open with.
    fn handle_smb1(&mut self, frame: &[u8]) -> std::result::Result<Vec<u8>, ConnError> {
        if self.dialect.is_some() {
            return Err(ConnError::Protocol("SMB1 after NEGOTIATE"));
        }
        let dialect = match parse_smb1_negotiate(frame) {
            Some(Smb1Negotiate::Wildcard) => negotiate::SMB2_WILDCARD,
            Some(Smb1Negotiate::Smb202) => negotiate::SMB202,
            _ => return Err(ConnError::Protocol("SMB1 without SMB2 dialects")),
        };
        self.credits.consume(0, 1)?;
        let granted = self.credits.grant(1);
        let hdr = Header {
            credit_charge: 0,
            status: 0,
            command: Command::Negotiate,
            credits: granted,
            flags: 0x1,
            next_command: 0,
            message_id: 0,
            async_id: 0,
            tree_id: 0,
            session_id: 0,
            signature: [0; 16],
        };
        let mut out = Out::with_capacity(256);
        hdr.emit(&mut out);
        self.negotiate_reply(dialect, None, &mut out);
        self.dialect = Some(dialect);
        Ok(out.0)
    }

    /// Looks up the session of `ctx`.
    fn session(&self, ctx: &Ctx) -> Result<&Session> {
        match self.sessions.get(&ctx.session_id) {
            Some(s) if s.ready => Ok(s),
            _ => Err(NtStatus::UserSessionDeleted.into()),
        }
    }

    /// Looks up the tree of `ctx`.
    fn tree(&self, ctx: &Ctx) -> Result<&Tree> {
        self.session(ctx)?
            .trees
            .get(&ctx.tree_id)
            .ok_or(Fail::Status(NtStatus::NetworkNameDeleted))
    }
}
