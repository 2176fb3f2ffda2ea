//! SMB2/3 message signing and the SP800-108 key derivation.

use aes::Aes128;
use cmac::Cmac;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

use crate::wire::negotiate::{SMB300, SMB311};

type HmacSha256 = Hmac<Sha256>;

/// How a session signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningKey {
    /// 2.0.2 / 2.1: HMAC-SHA256 with the session key.
    HmacSha256([u8; 16]),
    /// 3.x: AES-128-CMAC with a derived key.
    AesCmac([u8; 16]),
}

/// KDF in counter mode, HMAC-SHA256, one block, 128-bit output.
pub fn kdf(key: &[u8; 16], label: &[u8], context: &[u8]) -> [u8; 16] {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; 16];
    };
    mac.update(&1u32.to_be_bytes());
    mac.update(label);
    mac.update(&[0]);
    mac.update(context);
    mac.update(&128u32.to_be_bytes());
    let out = mac.finalize().into_bytes();
    let mut k = [0u8; 16];
    k.copy_from_slice(&out[..16]);
    k
}

impl SigningKey {
    /// Derives the signing key for `dialect`; `preauth` is the session's
    /// preauth integrity hash (3.1.1 only).
    pub fn derive(dialect: u16, session_key: [u8; 16], preauth: &[u8; 64]) -> Self {
        if dialect >= SMB311 {
            Self::AesCmac(kdf(&session_key, b"SMBSigningKey\0", preauth))
        } else if dialect >= SMB300 {
            Self::AesCmac(kdf(&session_key, b"SMB2AESCMAC\0", b"SmbSign\0"))
        } else {
            Self::HmacSha256(session_key)
        }
    }

    /// The signature of one message whose signature field is zero.
    fn compute(&self, msg: &[u8]) -> [u8; 16] {
        let mut sig = [0u8; 16];
        match self {
            Self::HmacSha256(k) => {
                if let Ok(mut mac) = HmacSha256::new_from_slice(k) {
                    mac.update(msg);
                    sig.copy_from_slice(&mac.finalize().into_bytes()[..16]);
                }
            }
            Self::AesCmac(k) => {
                if let Ok(mut mac) = <Cmac<Aes128> as Mac>::new_from_slice(k) {
                    mac.update(msg);
                    sig.copy_from_slice(&mac.finalize().into_bytes());
                }
            }
        }
        sig
    }

    /// Sets the SIGNED flag and fills the signature of one message in place.
    pub fn sign(&self, msg: &mut [u8]) {
        if msg.len() < 64 {
            return;
        }
        msg[16] |= 0x08;
        msg[48..64].fill(0);
        let sig = self.compute(msg);
        msg[48..64].copy_from_slice(&sig);
    }

    /// Checks the signature of one received message.
    pub fn verify(&self, msg: &[u8]) -> bool {
        if msg.len() < 64 {
            return false;
        }
        let mut copy = msg.to_vec();
        copy[48..64].fill(0);
        crate::auth::ntlm::constant_time_eq(&self.compute(&copy), &msg[48..64])
    }
}

/// Extends a preauth integrity hash with one message.
pub fn preauth_update(hash: &mut [u8; 64], msg: &[u8]) {
    let mut h = Sha512::new();
    h.update(&hash[..]);
    h.update(msg);
    hash.copy_from_slice(&h.finalize());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_message_verifies_and_tampered_one_does_not() {
        for key in [
            SigningKey::HmacSha256([3; 16]),
            SigningKey::derive(SMB311, [4; 16], &[5; 64]),
        ] {
            let mut msg = vec![0u8; 100];
            msg[..4].copy_from_slice(&[0xFE, b'S', b'M', b'B']);
            key.sign(&mut msg);
            assert!(key.verify(&msg));
            msg[80] ^= 1;
            assert!(!key.verify(&msg));
        }
    }

    #[test]
    fn kdf_depends_on_label_and_context() {
        let a = kdf(&[1; 16], b"SMB2AESCMAC\0", b"SmbSign\0");
        let b = kdf(&[1; 16], b"SMBSigningKey\0", &[0; 64]);
        assert_ne!(a, b);
    }
}
