//! NEGOTIATE request/response, negotiate contexts and the SMB1 upgrade.

use super::{u16_len, u32_len, Buf, Out, WireError, HEADER_LEN};

/// Dialect 2.0.2.
pub const SMB202: u16 = 0x0202;
/// Dialect 2.1.
pub const SMB210: u16 = 0x0210;
/// Dialect 3.0.
pub const SMB300: u16 = 0x0300;
/// Dialect 3.0.2.
pub const SMB302: u16 = 0x0302;
/// Dialect 3.1.1.
pub const SMB311: u16 = 0x0311;
/// The "SMB 2.???" wildcard answer to an SMB1 negotiate.
pub const SMB2_WILDCARD: u16 = 0x02FF;
/// Dialects this server speaks, best last.
pub const SUPPORTED: [u16; 5] = [SMB202, SMB210, SMB300, SMB302, SMB311];

/// Capability: large MTU (multi-credit requests).
pub const CAP_LARGE_MTU: u32 = 0x4;
/// Security mode: signing enabled.
pub const SIGNING_ENABLED: u16 = 0x1;
/// Security mode: signing required.
pub const SIGNING_REQUIRED: u16 = 0x2;

/// Negotiate context: preauth integrity.
pub const CTX_PREAUTH: u16 = 1;
/// Preauth hash algorithm SHA-512.
pub const HASH_SHA512: u16 = 1;
/// Most dialects or contexts accepted in one request.
const MAX_ITEMS: usize = 64;

/// A parsed SMB2 NEGOTIATE request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiateRequest {
    /// Client security mode.
    pub security_mode: u16,
    /// Client capabilities.
    pub capabilities: u32,
    /// Client GUID.
    pub client_guid: [u8; 16],
    /// Offered dialects.
    pub dialects: Vec<u16>,
    /// Whether a preauth context with SHA-512 was offered (3.1.1).
    pub preauth_sha512: bool,
}

impl NegotiateRequest {
    /// Parses a NEGOTIATE request (`msg` starts at the SMB2 header).
    pub fn parse(msg: &[u8]) -> Result<Self, WireError> {
        let b = Buf(msg);
        let body = HEADER_LEN;
        if b.u16(body)? != 36 {
            return Err(WireError::Invalid("negotiate size"));
        }
        let count = usize::from(b.u16(body + 2)?);
        if count == 0 || count > MAX_ITEMS {
            return Err(WireError::Invalid("dialect count"));
        }
        let dialects = (0..count)
            .map(|i| b.u16(body + 36 + 2 * i))
            .collect::<Result<Vec<_>, _>>()?;
        let mut req = Self {
            security_mode: b.u16(body + 4)?,
            capabilities: b.u32(body + 8)?,
            client_guid: b.b16(body + 12)?,
            dialects,
            preauth_sha512: false,
        };
        if req.dialects.contains(&SMB311) {
            let off = b.u32(body + 28)? as usize;
            let n = usize::from(b.u16(body + 32)?);
            req.preauth_sha512 = parse_contexts(b, off, n.min(MAX_ITEMS))?;
        }
        Ok(req)
    }

    /// The best dialect both sides speak.
    pub fn choose(&self) -> Option<u16> {
        SUPPORTED
            .iter()
            .rev()
            .copied()
            .find(|d| self.dialects.contains(d))
    }
}

/// Walks the negotiate contexts; returns whether SHA-512 preauth was offered.
fn parse_contexts(b: Buf<'_>, mut off: usize, n: usize) -> Result<bool, WireError> {
    let mut sha512 = false;
    for i in 0..n {
        if i > 0 {
            off = off.checked_add(7).ok_or(WireError::Truncated(off))? & !7;
        }
        let kind = b.u16(off)?;
        let len = usize::from(b.u16(off + 2)?);
        let data = Buf(b.bytes(off + 8, len)?);
        if kind == CTX_PREAUTH {
            let count = usize::from(data.u16(0)?);
            sha512 |= (0..count.min(MAX_ITEMS)).any(|j| data.u16(4 + 2 * j) == Ok(HASH_SHA512));
        }
        off += 8 + len;
    }
    Ok(sha512)
}

/// The fields of a NEGOTIATE response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiateResponse<'a> {
    /// Server security mode.
    pub security_mode: u16,
    /// Chosen dialect.
    pub dialect: u16,
    /// Server GUID.
    pub server_guid: [u8; 16],
    /// Server capabilities.
    pub capabilities: u32,
    /// Max transact/read/write size.
    pub max_io: u32,
    /// Current time, FILETIME.
    pub system_time: u64,
    /// SPNEGO NegTokenInit.
    pub security_blob: &'a [u8],
    /// 3.1.1 preauth salt, when a preauth context is sent.
    pub preauth_salt: Option<[u8; 32]>,
}

impl NegotiateResponse<'_> {
    /// Appends the response body; offsets assume the 64-byte header
    /// precedes what is appended here.
    pub fn emit(&self, out: &mut Out) {
        let start = out.len();
        let blob_off = HEADER_LEN + 64;
        let ctx_count = u16::from(self.preauth_salt.is_some());
        out.u16(65)
            .u16(self.security_mode)
            .u16(self.dialect)
            .u16(ctx_count)
            .bytes(&self.server_guid)
            .u32(self.capabilities)
            .u32(self.max_io)
            .u32(self.max_io)
            .u32(self.max_io)
            .u64(self.system_time)
            .u64(0)
            .u16(u16_len(blob_off))
            .u16(u16_len(self.security_blob.len()));
        let ctx_off_pos = out.len();
        out.u32(0).bytes(self.security_blob);
        if let Some(salt) = self.preauth_salt {
            out.align(8);
            let ctx_off = HEADER_LEN + out.len() - start;
            out.put_u32(ctx_off_pos, u32_len(ctx_off));
            out.u16(CTX_PREAUTH)
                .u16(u16_len(4 + 2 + salt.len()))
                .u32(0)
                .u16(1)
                .u16(u16_len(salt.len()))
                .u16(HASH_SHA512)
                .bytes(&salt);
        }
    }
}

/// What an SMB1 NEGOTIATE asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Smb1Negotiate {
    /// Offers "SMB 2.???": answer 0x02FF, a real SMB2 NEGOTIATE follows.
    Wildcard,
    /// Offers only "SMB 2.002": answer 0x0202 and use it.
    Smb202,
    /// SMB1 only: drop the connection.
    NoSmb2,
}

/// Parses an SMB1 frame; `None` when it is not an SMB1 NEGOTIATE at all.
pub fn parse_smb1_negotiate(msg: &[u8]) -> Option<Smb1Negotiate> {
    let b = Buf(msg);
    if b.bytes(0, 4).ok()? != [0xFF, b'S', b'M', b'B'] || b.u8(4).ok()? != 0x72 {
        return None;
    }
    let words = usize::from(b.u8(32).ok()?);
    let count_off = 33 + 2 * words;
    let n = usize::from(b.u16(count_off).ok()?);
    let data = b.bytes(count_off + 2, n).ok()?;
    let mut best = Smb1Negotiate::NoSmb2;
    for item in data.split(|&c| c == 0) {
        match item.strip_prefix(&[2]) {
            Some(b"SMB 2.???") => best = Smb1Negotiate::Wildcard,
            Some(b"SMB 2.002") if best == Smb1Negotiate::NoSmb2 => best = Smb1Negotiate::Smb202,
            _ => {}
        }
    }
    Some(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(dialects: &[u16]) -> Vec<u8> {
        let mut o = Out::default();
        o.zeros(HEADER_LEN)
            .u16(36)
            .u16(u16_len(dialects.len()))
            .u16(1)
            .u16(0);
        o.u32(0).zeros(16).u32(0).u16(0).u16(0);
        for d in dialects {
            o.u16(*d);
        }
        o.0
    }

    #[test]
    fn highest_common_dialect_is_chosen() {
        let r = NegotiateRequest::parse(&request(&[SMB202, SMB210, 0x0399])).unwrap();
        assert_eq!(r.choose(), Some(SMB210));
    }

    #[test]
    fn unknown_dialects_only_gives_none() {
        let r = NegotiateRequest::parse(&request(&[0x0100])).unwrap();
        assert_eq!(r.choose(), None);
    }

    #[test]
    fn dialect_count_beyond_message_is_an_error() {
        let mut m = request(&[SMB202]);
        m[HEADER_LEN + 2] = 9;
        assert!(NegotiateRequest::parse(&m).is_err());
    }

    #[test]
    fn smb1_negotiate_with_wildcard_is_recognised() {
        let mut m = vec![0xFF, b'S', b'M', b'B', 0x72];
        m.resize(32, 0);
        let data = b"\x02NT LM 0.12\0\x02SMB 2.002\0\x02SMB 2.???\0";
        m.push(0);
        m.extend_from_slice(&u16_len(data.len()).to_le_bytes());
        m.extend_from_slice(data);
        assert_eq!(parse_smb1_negotiate(&m), Some(Smb1Negotiate::Wildcard));
    }
}
