//! NEGOTIATE, SESSION_SETUP, LOGOFF, TREE_CONNECT and TREE_DISCONNECT.

use std::collections::HashMap;
use std::sync::Arc;

use super::{ConnError, Connection, Ctx, Fail, Reply, Result};
use crate::auth::ntlm::{self, Authenticate};
use crate::auth::signing::{preauth_update, SigningKey};
use crate::auth::spnego::{self, NegState, Token};
use crate::fs::info::now;
use crate::fs::share::Share;
use crate::wire::negotiate::{
    self, NegotiateRequest, NegotiateResponse, CAP_LARGE_MTU, SIGNING_ENABLED, SIGNING_REQUIRED,
    SMB210, SMB311,
};
use crate::wire::{u16_len, u32_len, utf16_to_string, Header, NtStatus, Out, MAX_IO};

/// SessionFlags: guest.
const SESSION_FLAG_IS_GUEST: u16 = 0x1;
/// SessionFlags: anonymous.
const SESSION_FLAG_IS_NULL: u16 = 0x2;

/// Maximal access on a read-write share.
pub(crate) const ACCESS_FULL: u32 = 0x001F_01FF;
/// Maximal access on a read-only share.
pub(crate) const ACCESS_READ: u32 = 0x0012_00A9;

/// A connected tree.
#[derive(Debug)]
pub(crate) enum Tree {
    /// A disk share.
    Disk(Arc<Share>),
    /// IPC$.
    Ipc,
}

/// Where NTLMSSP stands for a session.
#[derive(Debug)]
struct Pending {
    challenge: [u8; 8],
    spnego: bool,
    mech_types: Option<Vec<u8>>,
}

/// A session on this connection.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) ready: bool,
    pending: Option<Pending>,
    pub(crate) guest: bool,
    pub(crate) signing: Option<SigningKey>,
    pub(crate) signing_required: bool,
    pub(crate) preauth: [u8; 64],
    pub(crate) trees: HashMap<u32, Tree>,
    next_tree: u32,
}

impl Connection {
    pub(super) fn negotiate(&mut self, msg: &[u8]) -> Result<Reply> {
        if self.dialect.is_some() && self.dialect != Some(negotiate::SMB2_WILDCARD) {
            return Err(Fail::Drop(ConnError::Protocol("second NEGOTIATE")));
        }
        let req = NegotiateRequest::parse(msg)?;
        let Some(dialect) = req.choose() else {
            return Err(NtStatus::NotSupported.into());
        };
        if dialect == SMB311 && !req.preauth_sha512 {
            return Err(NtStatus::InvalidParameter.into());
        }
        let mut out = Out::with_capacity(256);
        self.negotiate_reply(dialect, Some(&req), &mut out);
        self.dialect = Some(dialect);
        self.neg_request = Some(req);
        Ok(Reply::ok(out.0))
    }

    /// Appends a NEGOTIATE response body for `dialect`.
    pub(super) fn negotiate_reply(
        &mut self,
        dialect: u16,
        req: Option<&NegotiateRequest>,
        out: &mut Out,
    ) {
        let caps = if dialect >= SMB210 && dialect != negotiate::SMB2_WILDCARD {
            CAP_LARGE_MTU
        } else {
            0
        };
        let max_io = if caps & CAP_LARGE_MTU != 0 {
            MAX_IO
        } else {
            65536
        };
        let salt = if dialect == SMB311 && req.is_some() {
            let mut s = [0u8; 32];
            // A fixed salt would only weaken the preauth hash, not break it.
            let _ = getrandom::getrandom(&mut s);
            Some(s)
        } else {
            None
        };
        self.neg_security_mode = SIGNING_ENABLED;
        self.neg_capabilities = caps;
        let blob = spnego::neg_token_init();
        NegotiateResponse {
            security_mode: SIGNING_ENABLED,
            dialect,
            server_guid: self.server.guid,
            capabilities: caps,
            max_io: u32_len(max_io),
            system_time: now(),
            security_blob: &blob,
            preauth_salt: salt,
        }
        .emit(out);
    }

    pub(super) fn session_setup(
        &mut self,
        hdr: &Header,
        msg: &[u8],
        blob: &[u8],
        ctx: &mut Ctx,
    ) -> Result<Reply> {
        let token = spnego::unwrap(blob).map_err(|_| Fail::Status(NtStatus::InvalidParameter))?;
        let (ntlm_msg, spnego_wrapped, mech_types, client_mic) = match token {
            Token::Raw(t) => (t, false, None, None),
            Token::Spnego {
                token,
                mech_types,
                mic,
            } => (token, true, mech_types, mic),
        };
        let kind =
            ntlm::message_type(ntlm_msg).map_err(|_| Fail::Status(NtStatus::InvalidParameter))?;
        let dialect = self.dialect.unwrap_or(0);
        match kind {
            1 => {
                if hdr.session_id != 0 && !self.sessions.contains_key(&hdr.session_id) {
                    return Err(NtStatus::UserSessionDeleted.into());
                }
                if hdr.session_id == 0
                    && self.sessions.len() >= self.server.config.limits.max_sessions
                {
                    return Err(NtStatus::RequestNotAccepted.into());
                }
                let client_flags = crate::wire::Buf(ntlm_msg).u32(12).unwrap_or(0);
                let mut challenge = [0u8; 8];
                getrandom::getrandom(&mut challenge)
                    .map_err(|_| Fail::Status(NtStatus::InsufficientResources))?;
                let id = if hdr.session_id != 0 {
                    hdr.session_id
                } else {
                    self.new_session_id()
                };
                let mut preauth = self.preauth;
                if dialect == SMB311 {
                    preauth_update(&mut preauth, msg);
                }
                self.sessions.insert(
                    id,
                    Session {
                        ready: false,
                        pending: Some(Pending {
                            challenge,
                            spnego: spnego_wrapped,
                            mech_types: mech_types.map(<[u8]>::to_vec),
                        }),
                        guest: false,
                        signing: None,
                        signing_required: false,
                        preauth,
                        trees: HashMap::new(),
                        next_tree: 1,
                    },
                );
                ctx.session_id = id;
                let names = &self.server.names;
                let chal = ntlm::challenge(client_flags, challenge, names, now());
                let body = if spnego_wrapped {
                    spnego::neg_token_resp(NegState::Incomplete, &chal, None, true)
                } else {
                    chal
                };
                Ok(Reply {
                    status: NtStatus::MoreProcessingRequired,
                    body: setup_body(0, &body),
                })
            }
            3 => self.authenticate(msg, ntlm_msg, client_mic, hdr, ctx),
            _ => Err(NtStatus::InvalidParameter.into()),
        }
    }

    fn new_session_id(&mut self) -> u64 {
        let id = self.next_session;
        self.next_session += 1;
        id
    }

    fn authenticate(
        &mut self,
        msg: &[u8],
        token: &[u8],
        client_mic: Option<&[u8]>,
        hdr: &Header,
        ctx: &mut Ctx,
    ) -> Result<Reply> {
        let dialect = self.dialect.unwrap_or(0);
        let session = self
            .sessions
            .get_mut(&hdr.session_id)
            .ok_or(Fail::Status(NtStatus::UserSessionDeleted))?;
        let pending = session
            .pending
            .take()
            .ok_or(Fail::Status(NtStatus::InvalidParameter))?;
        ctx.session_id = hdr.session_id;
        let auth =
            Authenticate::parse(token).map_err(|_| Fail::Status(NtStatus::InvalidParameter))?;
        if dialect == SMB311 {
            preauth_update(&mut session.preauth, msg);
        }
        let configured = self.server.config.user.as_ref();
        let real_user =
            configured.filter(|u| !auth.is_anonymous() && u.name.eq_ignore_ascii_case(&auth.user));
        let mut flags = 0u16;
        let mut mic = None;
        if let Some(user) = real_user {
            let Some(key) = auth.verify_v2(&user.password, &pending.challenge) else {
                self.sessions.remove(&hdr.session_id);
                tracing::debug!("logon failure for {}", auth.user);
                return Err(NtStatus::LogonFailure.into());
            };
            let session = self
                .sessions
                .get_mut(&hdr.session_id)
                .ok_or(Fail::Status(NtStatus::UserSessionDeleted))?;
            session.signing = Some(SigningKey::derive(dialect, key, &session.preauth));
            session.signing_required = self
                .neg_request
                .as_ref()
                .is_some_and(|r| r.security_mode & SIGNING_REQUIRED != 0);
            if let (Some(types), Some(cmic)) = (&pending.mech_types, client_mic) {
                if !ntlm::check_client_mic(&key, auth.flags, types, cmic) {
                    self.sessions.remove(&hdr.session_id);
                    return Err(NtStatus::LogonFailure.into());
                }
                mic = Some(ntlm::server_mic(&key, auth.flags, types));
            }
            session.ready = true;
        } else {
            flags = if auth.is_anonymous() {
                SESSION_FLAG_IS_NULL
            } else {
                SESSION_FLAG_IS_GUEST
            };
            let session = self
                .sessions
                .get_mut(&hdr.session_id)
                .ok_or(Fail::Status(NtStatus::UserSessionDeleted))?;
            session.guest = true;
            session.ready = true;
        }
        let body = if pending.spnego {
            spnego::neg_token_resp(
                NegState::Completed,
                &[],
                mic.as_ref().map(|m| &m[..]),
                false,
            )
        } else {
            Vec::new()
        };
        Ok(Reply::ok(setup_body(flags, &body)))
    }

    pub(super) fn logoff(&mut self, ctx: &Ctx) -> Result<Reply> {
        self.session(ctx)?;
        self.sessions.remove(&ctx.session_id);
        self.close_tree_opens(ctx.session_id, None);
        Ok(Reply::empty4())
    }

    pub(super) fn tree_connect(&mut self, path: &[u8], ctx: &mut Ctx) -> Result<Reply> {
        self.session(ctx)?;
        let path = utf16_to_string(path).map_err(|_| Fail::Status(NtStatus::BadNetworkName))?;
        let name = path.rsplit('\\').next().unwrap_or("");
        let tree = if name.eq_ignore_ascii_case("IPC$") {
            Tree::Ipc
        } else {
            let share = self
                .server
                .shares
                .iter()
                .find(|s| s.name.eq_ignore_ascii_case(name))
                .ok_or(Fail::Status(NtStatus::BadNetworkName))?;
            Tree::Disk(Arc::clone(share))
        };
        let max_trees = self.server.config.limits.max_trees;
        let session = self
            .sessions
            .get_mut(&ctx.session_id)
            .ok_or(Fail::Status(NtStatus::UserSessionDeleted))?;
        if session.trees.len() >= max_trees {
            return Err(NtStatus::InsufficientResources.into());
        }
        let id = session.next_tree;
        session.next_tree = session.next_tree.wrapping_add(1).max(1);
        let (kind, access) = match &tree {
            Tree::Ipc => (2u8, ACCESS_READ),
            Tree::Disk(s) if s.read_only => (1, ACCESS_READ),
            Tree::Disk(_) => (1, ACCESS_FULL),
        };
        session.trees.insert(id, tree);
        ctx.tree_id = id;
        let mut o = Out::with_capacity(16);
        // ShareFlags: manual caching (0); capabilities none.
        o.u16(16).u8(kind).u8(0).u32(0).u32(0).u32(access);
        Ok(Reply::ok(o.0))
    }

    pub(super) fn tree_disconnect(&mut self, ctx: &Ctx) -> Result<Reply> {
        self.tree(ctx)?;
        if let Some(s) = self.sessions.get_mut(&ctx.session_id) {
            s.trees.remove(&ctx.tree_id);
        }
        self.close_tree_opens(ctx.session_id, Some(ctx.tree_id));
        Ok(Reply::empty4())
    }
}

/// The SESSION_SETUP response body.
fn setup_body(flags: u16, blob: &[u8]) -> Vec<u8> {
    let mut o = Out::with_capacity(8 + blob.len());
    o.u16(9)
        .u16(flags)
        .u16(72)
        .u16(u16_len(blob.len()))
        .bytes(blob);
    if blob.is_empty() {
        o.u8(0);
    }
    o.0
}
