//! A small SMB2/3 file server over any async byte stream.
//!
//! `smbd-lite` serves shares (a name, a root folder, read-only or
//! read-write) to the SMB clients of Windows 7-11, Linux cifs and Samba's
//! smbclient, over a TCP socket or any other `AsyncRead + AsyncWrite`
//! stream (such as a netswitch host-endpoint connection).
//!
//! Layers, from the bottom:
//! - [`wire`]: checked views over received bytes and typed reprs of every
//!   message; malformed input is an error, never a panic.
//! - [`auth`]: SPNEGO, NTLMSSP/NTLMv2, signing keys.
//! - [`fs`]: name validation and share confinement, information classes.
//! - [`conn`]: one connection as a synchronous state machine (frame in,
//!   frame out): sessions, trees, opens, credits, compounds.
//! - [`server`]: the tokio glue: framing, limits, idle timeout.
//!
//! Access: every user is a guest (or anonymous) with full rights on
//! read-write shares, unless a user and password are configured, in which
//! case that user must prove the password with NTLMv2 and gets a signed
//! session; other names still log in as guest.
//!
//! Limitations:
//! - No encryption, no oplocks or leases, no durable handles, no
//!   multichannel; CHANGE_NOTIFY answers NOT_IMPLEMENTED.
//! - Share modes are not enforced (no SHARING_VIOLATION); byte-range locks
//!   are checked on WRITE but not on READ, and only within one connection.
//! - Named streams, extended attributes, hard links and ACLs are not
//!   supported; security descriptors are synthesised (Everyone).
//! - IPC$ connects but has no pipes, so share listing (`smbclient -L`) is
//!   not available.
//! - File I/O runs on the connection's task (blocking a runtime worker for
//!   the duration of each disk operation).
//! - Names are case-insensitive only through a directory scan when the
//!   exact spelling does not exist.
#![forbid(unsafe_code)]

pub mod auth;
pub mod conn;
pub mod fs;
pub mod server;
pub mod wire;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use auth::ntlm::ServerNames;
use fs::share::Share;

/// One share to export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareConfig {
    /// Name clients connect to (matched case-insensitively).
    pub name: String,
    /// Root folder on the host.
    pub path: PathBuf,
    /// Refuse every change.
    pub read_only: bool,
}

/// A user that must authenticate with NTLMv2.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    /// User name (matched case-insensitively).
    pub name: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Per-connection limits against hostile or broken clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open files per connection.
    pub max_opens: usize,
    /// Sessions per connection.
    pub max_sessions: usize,
    /// Tree connects per session.
    pub max_trees: usize,
    /// Members in one compound.
    pub max_compound: usize,
    /// Largest credit window granted.
    pub max_credits: u16,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once by [`server::listen`].
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_opens: 4096,
            max_sessions: 16,
            max_trees: 64,
            max_compound: 32,
            max_credits: 8192,
            idle_timeout: Duration::from_secs(600),
            max_connections: 256,
        }
    }
}

/// Server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Shares.
    pub shares: Vec<ShareConfig>,
    /// Optional authenticated user.
    pub user: Option<User>,
    /// NetBIOS-style server name reported in NTLMSSP.
    pub server_name: String,
    /// Limits.
    pub limits: Limits,
    /// Address reported by FSCTL_QUERY_NETWORK_INTERFACE_INFO (none: NOT_SUPPORTED).
    pub interface_addr: Option<Ipv4Addr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shares: Vec::new(),
            user: None,
            server_name: "VMM".into(),
            limits: Limits::default(),
            interface_addr: None,
        }
    }
}

/// Errors setting up a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A share root cannot be opened.
    #[error("Cannot open share {name} at {path}")]
    ShareRoot {
        /// Share name.
        name: String,
        /// Root folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A share name is empty, reserved or has bad characters.
    #[error("Invalid share name {0:?}")]
    ShareName(String),
    /// Two shares have the same name.
    #[error("Share {0} defined twice")]
    DuplicateShare(String),
}

/// A configured server shared by all its connections.
#[derive(Debug)]
pub struct Server {
    config: Config,
    shares: Vec<Arc<Share>>,
    guid: [u8; 16],
    names: ServerNames,
}

impl Server {
    /// Opens every share root and builds the server.
    pub fn new(config: Config) -> Result<Arc<Self>, ServerError> {
        let mut shares: Vec<Arc<Share>> = Vec::new();
        for s in &config.shares {
            let bad = |c: char| c.is_control() || "\\/:*?\"<>|".contains(c);
            if s.name.is_empty()
                || s.name.len() > 80
                || s.name.chars().any(bad)
                || s.name.eq_ignore_ascii_case("IPC$")
            {
                return Err(ServerError::ShareName(s.name.clone()));
            }
            if shares.iter().any(|x| x.name.eq_ignore_ascii_case(&s.name)) {
                return Err(ServerError::DuplicateShare(s.name.clone()));
            }
            let share = Share::open(&s.name, &s.path, s.read_only).map_err(|source| {
                ServerError::ShareRoot {
                    name: s.name.clone(),
                    path: s.path.clone(),
                    source,
                }
            })?;
            shares.push(Arc::new(share));
        }
        let digest = Sha256::digest(format!("smbd-lite {}", config.server_name));
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&digest[..16]);
        let names = ServerNames {
            computer: config.server_name.to_uppercase(),
            domain: "WORKGROUP".into(),
        };
        Ok(Arc::new(Self {
            config,
            shares,
            guid,
            names,
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }
}
