//! The minimal SPNEGO (RFC 4178) DER needed to carry NTLMSSP.

use crate::wire::WireError;

/// DER of the NTLMSSP mechanism OID 1.3.6.1.4.1.311.2.2.10 (tag included).
pub const NTLMSSP_OID: [u8; 12] = [
    0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x02, 0x02, 0x0a,
];
/// DER of the SPNEGO OID 1.3.6.1.5.5.2.
const SPNEGO_OID: [u8; 8] = [0x06, 0x06, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x02];

/// negState values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NegState {
    /// accept-completed
    Completed = 0,
    /// accept-incomplete
    Incomplete = 1,
    /// reject
    Reject = 2,
}

/// How the client wrapped its NTLMSSP token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token<'a> {
    /// A bare NTLMSSP message.
    Raw(&'a [u8]),
    /// Inside SPNEGO; `mech_types` is the raw DER of the client's mechTypes
    /// list (needed for mechListMIC), present in NegTokenInit only.
    Spnego {
        /// The NTLMSSP message.
        token: &'a [u8],
        /// The client's mechTypes SEQUENCE, tag included.
        mech_types: Option<&'a [u8]>,
        /// The client's mechListMIC, if any.
        mic: Option<&'a [u8]>,
    },
}

/// One DER TLV split off a buffer: (tag, content, whole TLV, rest).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// Splits one DER TLV off `b`.
fn tlv(b: &[u8]) -> Result<Tlv<'_>, WireError> {
    let tag = *b.first().ok_or(WireError::Truncated(0))?;
    let first = *b.get(1).ok_or(WireError::Truncated(1))?;
    let (len, hdr) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(WireError::Invalid("DER length"));
        }
        let bytes = b.get(2..2 + n).ok_or(WireError::Truncated(2))?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (len, 2 + n)
    };
    let end = hdr.checked_add(len).ok_or(WireError::Truncated(hdr))?;
    let content = b.get(hdr..end).ok_or(WireError::Truncated(hdr))?;
    Ok((tag, content, &b[..end], &b[end..]))
}

/// Returns the [n] fields of a SEQUENCE of context-tagged fields.
fn fields(seq: &[u8]) -> Result<[Option<&[u8]>; 4], WireError> {
    let (tag, mut body, _, _) = tlv(seq)?;
    if tag != 0x30 {
        return Err(WireError::Invalid("SPNEGO sequence"));
    }
    let mut out = [None; 4];
    while !body.is_empty() {
        let (tag, content, _, rest) = tlv(body)?;
        if let Some(slot) = tag
            .checked_sub(0xa0)
            .and_then(|i| out.get_mut(usize::from(i)))
        {
            *slot = Some(content);
        }
        body = rest;
    }
    Ok(out)
}

/// The content of an OCTET STRING field.
fn octets(field: Option<&[u8]>) -> Result<Option<&[u8]>, WireError> {
    field
        .map(|f| {
            let (tag, content, _, _) = tlv(f)?;
            if tag == 0x04 {
                Ok(content)
            } else {
                Err(WireError::Invalid("SPNEGO octet string"))
            }
        })
        .transpose()
}

/// Finds the NTLMSSP token in a SESSION_SETUP security blob.
pub fn unwrap(blob: &[u8]) -> Result<Token<'_>, WireError> {
    if blob.starts_with(b"NTLMSSP\0") {
        return Ok(Token::Raw(blob));
    }
    let (tag, content, _, _) = tlv(blob)?;
    let (seq, init) = match tag {
        0x60 => {
            let (_, _, _, rest) = tlv(content)?; // the SPNEGO OID
            let (tag, inner, _, _) = tlv(rest)?;
            if tag != 0xa0 {
                return Err(WireError::Invalid("NegTokenInit"));
            }
            (inner, true)
        }
        0xa1 => (content, false),
        _ => return Err(WireError::Invalid("SPNEGO token")),
    };
    let f = fields(seq)?;
    let mech_types = if init {
        f[0].map(|m| tlv(m).map(|(_, _, whole, _)| whole))
            .transpose()?
    } else {
        None
    };
    let token = octets(f[2])?.unwrap_or(&[]);
    let mic = if init { None } else { octets(f[3])? };
    Ok(Token::Spnego {
        token,
        mech_types,
        mic,
    })
}

/// Encodes one DER TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let len = content.len();
    if len < 0x80 {
        v.push(u8::try_from(len).unwrap_or(0x7f));
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&x| x == 0).count();
        v.push(0x80 | u8::try_from(bytes.len() - skip).unwrap_or(8));
        v.extend_from_slice(&bytes[skip..]);
    }
    v.extend_from_slice(content);
    v
}

/// The NegTokenInit sent in the NEGOTIATE response (NTLMSSP only).
pub fn neg_token_init() -> Vec<u8> {
    let mech_list = der(0x30, &NTLMSSP_OID);
    let seq = der(0x30, &der(0xa0, &mech_list));
    let mut inner = SPNEGO_OID.to_vec();
    inner.extend_from_slice(&der(0xa0, &seq));
    der(0x60, &inner)
}

/// A NegTokenResp carrying `token` and optionally a mechListMIC.
pub fn neg_token_resp(state: NegState, token: &[u8], mic: Option<&[u8]>, first: bool) -> Vec<u8> {
    let mut seq = der(0xa0, &der(0x0a, &[state as u8]));
    if first {
        seq.extend_from_slice(&der(0xa1, &NTLMSSP_OID));
    }
    if !token.is_empty() {
        seq.extend_from_slice(&der(0xa2, &der(0x04, token)));
    }
    if let Some(mic) = mic {
        seq.extend_from_slice(&der(0xa3, &der(0x04, mic)));
    }
    der(0xa1, &der(0x30, &seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ntlmssp_is_passed_through() {
        let blob = b"NTLMSSP\0\x01\0\0\0";
        assert_eq!(unwrap(blob).unwrap(), Token::Raw(blob));
    }

    #[test]
    fn neg_token_resp_round_trips_its_token() {
        let token = vec![7u8; 300];
        let resp = neg_token_resp(NegState::Incomplete, &token, Some(b"mic"), true);
        match unwrap(&resp).unwrap() {
            Token::Spnego { token: t, mic, .. } => {
                assert_eq!(t, &token[..]);
                assert_eq!(mic, Some(&b"mic"[..]));
            }
            Token::Raw(_) => panic!("expected SPNEGO"),
        }
    }

    #[test]
    fn truncated_der_is_an_error_not_a_panic() {
        let resp = neg_token_resp(NegState::Completed, b"abc", None, false);
        for cut in 0..resp.len() {
            let _ = unwrap(&resp[..cut]);
        }
        assert!(unwrap(&[0xa1, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
