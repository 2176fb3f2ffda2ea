//! The kit's SSH keys: the client key written to `DIR/key` (OpenSSH
//! format) with its public half in the guest's `authorized_keys`, and the
//! guest's dropbear host key.
//!
//! Both are Ed25519 keys whose 32-byte seeds are SHA-256 hashes of fixed
//! labels, so every build writes the same keys and the initrd's bytes do
//! not change from build to build. The keys are not secret: the guest is a
//! throwaway test machine reachable only through the VMM's own switch.
//!
//! Limitations:
//! - Anyone with this source can log into a kit guest; never expose its SSH
//!   port beyond the host.

use sha2::{Digest, Sha256};
use ssh_key::private::Ed25519Keypair;
use ssh_key::{LineEnding, PrivateKey};

/// Label hashed into the client key's seed.
const CLIENT_LABEL: &str = "vmm guest kit: client key, v1";
/// Label hashed into the host key's seed.
const HOST_LABEL: &str = "vmm guest kit: dropbear host key, v1";
/// Comment on the client key.
const COMMENT: &str = "vmm-guest-kit";

/// Errors from encoding a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The ssh-key crate refused to encode the key.
    #[error("Cannot encode the SSH key")]
    Encode(#[source] ssh_key::Error),
}

/// The kit's key material, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KitKeys {
    /// `DIR/key`: the client's OpenSSH private key (PEM-like text).
    pub client_private: String,
    /// One `authorized_keys` line with the client's public key.
    pub authorized_keys: String,
    /// The guest's host key in dropbear's own key file format.
    pub dropbear_host_key: Vec<u8>,
}

fn seed(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

/// Builds the kit's keys (always the same ones).
pub fn kit_keys() -> Result<KitKeys, KeyError> {
    let mut client = PrivateKey::from(Ed25519Keypair::from_seed(&seed(CLIENT_LABEL)));
    client.set_comment(COMMENT);
    let client_private = client
        .to_openssh(LineEnding::LF)
        .map_err(KeyError::Encode)?
        .to_string();
    let authorized_keys = format!(
        "{}\n",
        client.public_key().to_openssh().map_err(KeyError::Encode)?
    );
    let host = Ed25519Keypair::from_seed(&seed(HOST_LABEL));
    Ok(KitKeys {
        client_private,
        authorized_keys,
        dropbear_host_key: dropbear_ed25519(&host),
    })
}

/// Encodes an Ed25519 key pair as dropbear stores it: SSH string
/// `"ssh-ed25519"`, then one SSH string holding the 32-byte private seed
/// followed by the 32-byte public key.
fn dropbear_ed25519(key: &Ed25519Keypair) -> Vec<u8> {
    fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut secret = key.private.as_ref().to_vec();
    secret.extend_from_slice(key.public.as_ref());
    let mut out = Vec::new();
    put_string(&mut out, b"ssh-ed25519");
    put_string(&mut out, &secret);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_same_on_every_call() {
        assert_eq!(kit_keys().unwrap(), kit_keys().unwrap());
    }

    #[test]
    fn client_key_round_trips_and_matches_authorized_line() {
        let keys = kit_keys().unwrap();
        assert!(keys
            .client_private
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"));
        let parsed = PrivateKey::from_openssh(&keys.client_private).unwrap();
        let line = parsed.public_key().to_openssh().unwrap();
        assert_eq!(format!("{line}\n"), keys.authorized_keys);
        assert!(keys.authorized_keys.starts_with("ssh-ed25519 "));
    }

    #[test]
    fn dropbear_host_key_layout_is_type_then_seed_and_public() {
        let keys = kit_keys().unwrap();
        let k = &keys.dropbear_host_key;
        assert_eq!(k.len(), 4 + 11 + 4 + 64);
        assert_eq!(&k[..4], &11u32.to_be_bytes());
        assert_eq!(&k[4..15], b"ssh-ed25519");
        assert_eq!(&k[15..19], &64u32.to_be_bytes());
        let host = Ed25519Keypair::from_seed(&seed(HOST_LABEL));
        assert_eq!(&k[19..51], host.private.as_ref());
        assert_eq!(&k[51..83], host.public.as_ref());
        assert_ne!(seed(HOST_LABEL), seed(CLIENT_LABEL));
    }
}
