//! NTLMSSP server side: CHALLENGE, AUTHENTICATE parsing and NTLMv2 checks.

use hmac::{Hmac, Mac};
use md4::{Digest, Md4};
use md5::Md5;
use rc4::{KeyInit, Rc4, StreamCipher};

use crate::wire::{string_to_utf16, u16_len, u32_len, utf16_to_string, Buf, Out, WireError};

type HmacMd5 = Hmac<Md5>;

/// NTLMSSP flag bits used here.
pub mod flags {
    /// UNICODE strings.
    pub const UNICODE: u32 = 0x1;
    /// Target name requested.
    pub const REQUEST_TARGET: u32 = 0x4;
    /// Message signing.
    pub const SIGN: u32 = 0x10;
    /// Message sealing.
    pub const SEAL: u32 = 0x20;
    /// NTLM authentication.
    pub const NTLM: u32 = 0x200;
    /// Anonymous.
    pub const ANONYMOUS: u32 = 0x800;
    /// Always sign.
    pub const ALWAYS_SIGN: u32 = 0x8000;
    /// Target is a server.
    pub const TARGET_TYPE_SERVER: u32 = 0x2_0000;
    /// Extended session security (NTLM2).
    pub const EXTENDED_SESSIONSECURITY: u32 = 0x8_0000;
    /// TargetInfo present.
    pub const TARGET_INFO: u32 = 0x80_0000;
    /// Version present.
    pub const VERSION: u32 = 0x200_0000;
    /// 128-bit keys.
    pub const K128: u32 = 0x2000_0000;
    /// Key exchange.
    pub const KEY_EXCH: u32 = 0x4000_0000;
    /// 56-bit keys.
    pub const K56: u32 = 0x8000_0000;
}

const SIGNATURE: &[u8; 8] = b"NTLMSSP\0";
/// Longest NT response accepted (the NTLMv2 blob holds the AV pairs).
const MAX_NT_RESPONSE: usize = 4096;

/// The NTLMSSP message type in a token.
pub fn message_type(token: &[u8]) -> Result<u32, WireError> {
    let b = Buf(token);
    if b.bytes(0, 8)? != SIGNATURE {
        return Err(WireError::Invalid("NTLMSSP signature"));
    }
    b.u32(8)
}

/// Names the server reports in CHALLENGE.
#[derive(Debug, Clone)]
pub struct ServerNames {
    /// NetBIOS computer name.
    pub computer: String,
    /// NetBIOS domain name.
    pub domain: String,
}

/// Builds a CHALLENGE_MESSAGE answering a NEGOTIATE with `client_flags`.
pub fn challenge(client_flags: u32, challenge: [u8; 8], names: &ServerNames, now: u64) -> Vec<u8> {
    use flags::*;
    let mut f = UNICODE
        | NTLM
        | TARGET_TYPE_SERVER
        | EXTENDED_SESSIONSECURITY
        | TARGET_INFO
        | VERSION
        | REQUEST_TARGET;
    f |= client_flags & (SIGN | SEAL | ALWAYS_SIGN | K128 | KEY_EXCH | K56);
    let target = string_to_utf16(&names.domain);
    let mut info = Out::default();
    let mut av = |id: u16, v: &[u8]| {
        info.u16(id).u16(u16_len(v.len())).bytes(v);
    };
    av(2, &string_to_utf16(&names.domain));
    av(1, &string_to_utf16(&names.computer));
    av(4, &string_to_utf16(&names.domain.to_lowercase()));
    av(3, &string_to_utf16(&names.computer.to_lowercase()));
    av(7, &now.to_le_bytes());
    av(0, &[]);
    let payload = 56;
    let mut o = Out::default();
    o.bytes(SIGNATURE)
        .u32(2)
        .u16(u16_len(target.len()))
        .u16(u16_len(target.len()))
        .u32(payload)
        .u32(f)
        .bytes(&challenge)
        .u64(0)
        .u16(u16_len(info.len()))
        .u16(u16_len(info.len()))
        .u32(payload + u32_len(target.len()))
        .bytes(&[6, 1, 0, 0, 0, 0, 0, 15]) // version 6.1, NTLM revision 15
        .bytes(&target)
        .bytes(&info.0);
    o.0
}

/// A parsed AUTHENTICATE_MESSAGE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticate {
    /// LM response.
    pub lm: Vec<u8>,
    /// NT response (NTProofStr + blob for NTLMv2).
    pub nt: Vec<u8>,
    /// Domain.
    pub domain: String,
    /// User.
    pub user: String,
    /// Encrypted random session key (KEY_EXCH).
    pub enc_session_key: Vec<u8>,
    /// Negotiated flags.
    pub flags: u32,
}

impl Authenticate {
    /// Parses an AUTHENTICATE_MESSAGE with every field bounds-checked.
    pub fn parse(token: &[u8]) -> Result<Self, WireError> {
        if message_type(token)? != 3 {
            return Err(WireError::Invalid("NTLMSSP message type"));
        }
        let b = Buf(token);
        let field = |at: usize| -> Result<&[u8], WireError> {
            let len = usize::from(b.u16(at)?);
            let off = b.u32(at + 4)? as usize;
            b.region(off, len)
        };
        let nt = field(20)?;
        if nt.len() > MAX_NT_RESPONSE {
            return Err(WireError::Invalid("NT response length"));
        }
        let flags = b.u32(60)?;
        let text = |v: &[u8]| -> Result<String, WireError> {
            if flags & flags::UNICODE != 0 {
                utf16_to_string(v)
            } else {
                Ok(v.iter().map(|&c| char::from(c)).collect())
            }
        };
        Ok(Self {
            lm: field(12)?.to_vec(),
            nt: nt.to_vec(),
            domain: text(field(28)?)?,
            user: text(field(36)?)?,
            enc_session_key: field(52)?.to_vec(),
            flags,
        })
    }

    /// True for an anonymous (null) logon.
    pub fn is_anonymous(&self) -> bool {
        self.user.is_empty() && self.nt.is_empty()
    }

    /// Verifies an NTLMv2 response against `password`; returns the exported
    /// session key on success.
    pub fn verify_v2(&self, password: &str, server_challenge: &[u8; 8]) -> Option<[u8; 16]> {
        if self.nt.len() < 16 + 28 {
            return None;
        }
        let nt_hash: [u8; 16] = Md4::digest(string_to_utf16(password)).into();
        let identity = format!("{}{}", self.user.to_uppercase(), self.domain);
        let response_key = hmac_md5(&nt_hash, &[&string_to_utf16(&identity)]);
        let (proof, blob) = self.nt.split_at(16);
        let expect = hmac_md5(&response_key, &[server_challenge, blob]);
        if !constant_time_eq(&expect, proof) {
            return None;
        }
        let base_key = hmac_md5(&response_key, &[proof]);
        if self.flags & flags::KEY_EXCH != 0 && self.enc_session_key.len() == 16 {
            let mut key = [0u8; 16];
            key.copy_from_slice(&self.enc_session_key);
            Rc4::new(&base_key.into()).apply_keystream(&mut key);
            Some(key)
        } else {
            Some(base_key)
        }
    }
}

/// HMAC-MD5 over the concatenation of `parts`.
pub fn hmac_md5(key: &[u8], parts: &[&[u8]]) -> [u8; 16] {
    let Ok(mut mac) = <HmacMd5 as Mac>::new_from_slice(key) else {
        return [0; 16];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Compares two byte strings without an early exit.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// NTLMSSP signature (server to client, sequence 0) over `msg`, as used for
/// the SPNEGO mechListMIC.
pub fn server_mic(session_key: &[u8; 16], flags: u32, msg: &[u8]) -> [u8; 16] {
    let derive = |magic: &[u8]| -> [u8; 16] {
        let mut h = Md5::new();
        h.update(session_key);
        h.update(magic);
        h.finalize().into()
    };
    let sign_key = derive(b"session key to server-to-client signing key magic constant\0");
    let seal_key = derive(b"session key to server-to-client sealing key magic constant\0");
    let seq = 0u32.to_le_bytes();
    let digest = hmac_md5(&sign_key, &[&seq, msg]);
    let mut checksum = [0u8; 8];
    checksum.copy_from_slice(&digest[..8]);
    if flags & flags::KEY_EXCH != 0 {
        Rc4::new(&seal_key.into()).apply_keystream(&mut checksum);
    }
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&1u32.to_le_bytes());
    out[4..12].copy_from_slice(&checksum);
    out[12..].copy_from_slice(&seq);
    out
}

/// Verifies the client's mechListMIC (client to server, sequence 0).
pub fn check_client_mic(session_key: &[u8; 16], flags: u32, msg: &[u8], mic: &[u8]) -> bool {
    let derive = |magic: &[u8]| -> [u8; 16] {
        let mut h = Md5::new();
        h.update(session_key);
        h.update(magic);
        h.finalize().into()
    };
    let sign_key = derive(b"session key to client-to-server signing key magic constant\0");
    let seal_key = derive(b"session key to client-to-server sealing key magic constant\0");
    let seq = 0u32.to_le_bytes();
    let digest = hmac_md5(&sign_key, &[&seq, msg]);
    let mut checksum = [0u8; 8];
    checksum.copy_from_slice(&digest[..8]);
    if flags & flags::KEY_EXCH != 0 {
        Rc4::new(&seal_key.into()).apply_keystream(&mut checksum);
    }
    mic.len() == 16 && constant_time_eq(&mic[4..12], &checksum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an AUTHENTICATE the way a client would, for `password`.
    fn client_auth(user: &str, domain: &str, password: &str, chal: &[u8; 8]) -> Vec<u8> {
        let nt_hash: [u8; 16] = Md4::digest(string_to_utf16(password)).into();
        let id = string_to_utf16(&format!("{}{}", user.to_uppercase(), domain));
        let key = hmac_md5(&nt_hash, &[&id]);
        let blob = [
            1u8, 1, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9, 5, 5, 5, 5, 5, 5, 5, 5,
        ]
        .iter()
        .copied()
        .chain([0u8; 8])
        .collect::<Vec<_>>();
        let proof = hmac_md5(&key, &[chal, &blob]);
        let mut nt = proof.to_vec();
        nt.extend_from_slice(&blob);
        let (u, d) = (string_to_utf16(user), string_to_utf16(domain));
        let mut o = Out::default();
        let base = 88u32;
        let nt_off = base;
        let d_off = nt_off + u32_len(nt.len());
        let u_off = d_off + u32_len(d.len());
        o.bytes(SIGNATURE).u32(3);
        o.u16(0).u16(0).u32(base); // LM
        o.u16(u16_len(nt.len())).u16(u16_len(nt.len())).u32(nt_off);
        o.u16(u16_len(d.len())).u16(u16_len(d.len())).u32(d_off);
        o.u16(u16_len(u.len())).u16(u16_len(u.len())).u32(u_off);
        o.u16(0).u16(0).u32(base); // workstation
        o.u16(0).u16(0).u32(base); // session key
        o.u32(flags::UNICODE | flags::NTLM).zeros(8).zeros(16);
        o.bytes(&nt).bytes(&d).bytes(&u);
        o.0
    }

    #[test]
    fn right_password_verifies_and_wrong_one_does_not() {
        let chal = [1, 2, 3, 4, 5, 6, 7, 8];
        let msg = client_auth("alice", "WORK", "s3cret", &chal);
        let auth = Authenticate::parse(&msg).unwrap();
        assert_eq!(auth.user, "alice");
        assert!(auth.verify_v2("s3cret", &chal).is_some());
        assert!(auth.verify_v2("wrong", &chal).is_none());
    }

    #[test]
    fn truncated_authenticate_never_panics() {
        let msg = client_auth("bob", "", "pw", &[0; 8]);
        for cut in 0..msg.len() {
            let _ = Authenticate::parse(&msg[..cut]);
        }
    }

    #[test]
    fn challenge_carries_extended_session_security_and_target_info() {
        let names = ServerNames {
            computer: "VMM".into(),
            domain: "WORKGROUP".into(),
        };
        let c = challenge(flags::SIGN | flags::KEY_EXCH, [0; 8], &names, 0);
        let f = Buf(&c).u32(20).unwrap();
        assert_ne!(f & flags::EXTENDED_SESSIONSECURITY, 0);
        assert_ne!(f & flags::TARGET_INFO, 0);
        assert_ne!(f & flags::KEY_EXCH, 0);
    }
}
