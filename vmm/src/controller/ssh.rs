//! Runs one command in a guest over SSH (russh), over any byte stream.
//!
//! The stream is normally a TCP connection through the in-process switch's
//! host endpoint, so no host networking is involved. The guest's output is
//! streamed to the caller's sinks as it arrives; the result is the command's
//! exit status, or the signal that ended it.
//!
//! The guest's host key is not checked: the guest is throwaway and reached
//! only through the process's own switch, where nobody else can answer.
//!
//! Limitations:
//! - public-key authentication only (the guest kit's ed25519 key);
//! - no pseudo-terminal, no stdin (the command sees an empty stdin).

use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use russh::ChannelMsg;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteExit {
    /// It exited with this status.
    Code(u32),
    /// A signal ended it (name as the server sent it, e.g. "KILL").
    Signal(String),
}

impl RemoteExit {
    /// The status a shell would report: the code, or 128 + a signal number
    /// when the name is a known one (else 255).
    pub fn shell_status(&self) -> u8 {
        match self {
            RemoteExit::Code(c) => u8::try_from(*c & 0xff).unwrap_or(u8::MAX),
            RemoteExit::Signal(name) => signal_number(name).map_or(255, |n| 128 + n),
        }
    }
}

fn signal_number(name: &str) -> Option<u8> {
    const NAMES: [&str; 15] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM",
    ];
    let pos = NAMES.iter().position(|n| *n == name)?;
    u8::try_from(pos + 1).ok()
}

/// Errors while running a command over SSH.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The private key file does not parse.
    #[error("Cannot read the SSH private key")]
    Key(#[source] russh::keys::Error),
    /// The SSH handshake or a channel operation failed.
    #[error("SSH protocol error")]
    Protocol(#[source] russh::Error),
    /// The guest refused the key.
    #[error("The guest refused SSH login as {0} with the given key")]
    AuthRejected(String),
    /// The connection ended before the command reported how it ended.
    #[error("The SSH connection closed before the command finished")]
    NoExitStatus,
    /// Writing the command's output to the local sinks failed.
    #[error("Cannot write the command's output")]
    Output(#[source] std::io::Error),
}

impl From<russh::Error> for SshError {
    fn from(e: russh::Error) -> Self {
        SshError::Protocol(e)
    }
}

/// Parses an OpenSSH private key (as the guest kit writes to `DIR/key`).
pub fn parse_key(text: &str) -> Result<PrivateKey, SshError> {
    russh::keys::decode_secret_key(text, None).map_err(SshError::Key)
}

struct AcceptGuest;

impl client::Handler for AcceptGuest {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // The only peer on the switch is our own throwaway guest.
        Ok(true)
    }
}

/// An authenticated SSH session with a guest.
pub struct Session {
    handle: Handle<AcceptGuest>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl Session {
    /// Handshakes over `stream` and logs in as `user` with `key`.
    pub async fn connect<S>(stream: S, user: &str, key: PrivateKey) -> Result<Self, SshError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = client::Config {
            // Keepalives notice a guest that died under a long command.
            keepalive_interval: Some(Duration::from_secs(5)),
            keepalive_max: 6,
            nodelay: true,
            ..Default::default()
        };
        let mut handle = client::connect_stream(Arc::new(config), stream, AcceptGuest).await?;
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), None);
        let auth = handle.authenticate_publickey(user, key).await?;
        if !auth.success() {
            return Err(SshError::AuthRejected(user.to_string()));
        }
        Ok(Self { handle })
    }

    /// Runs `command` (a shell command line), copying its stdout and stderr
    /// to the given sinks as they arrive, and returns how it ended.
    pub async fn run<O, E>(
        &self,
        command: &str,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<RemoteExit, SshError>
    where
        O: AsyncWrite + Unpin,
        E: AsyncWrite + Unpin,
    {
        let mut channel = self.handle.channel_open_session().await?;
        channel.exec(true, command).await?;
        channel.eof().await?;
        let mut exit = None;
        while let Some(msg) = channel.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    stdout.write_all(&data).await.map_err(SshError::Output)?;
                    stdout.flush().await.map_err(SshError::Output)?;
                }
                ChannelMsg::ExtendedData { data, .. } => {
                    stderr.write_all(&data).await.map_err(SshError::Output)?;
                    stderr.flush().await.map_err(SshError::Output)?;
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    exit = Some(RemoteExit::Code(exit_status))
                }
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    exit = Some(RemoteExit::Signal(format!("{signal_name:?}")));
                }
                _ => {}
            }
        }
        exit.ok_or(SshError::NoExitStatus)
    }

    /// Ends the session politely.
    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::server::{self, Auth, Msg, Session as ServerSession};
    use russh::{Channel, ChannelId};

    /// A tiny SSH server: accepts one key, and for `exec CMD` writes
    /// "out:CMD" to stdout, "err" to stderr and exits with CMD's length.
    #[derive(Clone)]
    struct FakeGuest {
        allowed: russh::keys::ssh_key::PublicKey,
    }

    impl server::Handler for FakeGuest {
        type Error = russh::Error;

        async fn auth_publickey(
            &mut self,
            _user: &str,
            key: server::VerifiedPublicKey<'_>,
        ) -> Result<Auth, Self::Error> {
            if key.public_key.key_data() == self.allowed.key_data() {
                Ok(Auth::Accept)
            } else {
                Ok(Auth::reject())
            }
        }

        async fn channel_open_session(
            &mut self,
            _channel: Channel<Msg>,
            reply: server::ChannelOpenHandle,
            _session: &mut ServerSession,
        ) -> Result<(), Self::Error> {
            reply.accept().await;
            Ok(())
        }

        async fn exec_request(
            &mut self,
            channel: ChannelId,
            data: &[u8],
            session: &mut ServerSession,
        ) -> Result<(), Self::Error> {
            session.channel_success(channel)?;
            let mut out = b"out:".to_vec();
            out.extend_from_slice(data);
            session.data(channel, out)?;
            session.extended_data(channel, 1, b"err".to_vec())?;
            let code = u32::try_from(data.len()).unwrap_or(u32::MAX);
            session.exit_status_request(channel, code)?;
            session.eof(channel)?;
            session.close(channel)?;
            Ok(())
        }
    }

    fn ed25519(seed: u8) -> PrivateKey {
        let kp = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]);
        PrivateKey::from(kp)
    }

    async fn serve(allowed: &PrivateKey) -> tokio::io::DuplexStream {
        let (client, server_end) = tokio::io::duplex(64 * 1024);
        let config = Arc::new(server::Config {
            keys: vec![ed25519(9)],
            auth_rejection_time: Duration::from_millis(1),
            auth_rejection_time_initial: Some(Duration::ZERO),
            ..Default::default()
        });
        let handler = FakeGuest {
            allowed: allowed.public_key().clone(),
        };
        tokio::spawn(async move {
            if let Ok(running) = server::run_stream(config, server_end, handler).await {
                let _ = running.await;
            }
        });
        client
    }

    #[tokio::test]
    async fn command_output_and_status_come_back() {
        let key = ed25519(1);
        let stream = serve(&key).await;
        let session = Session::connect(stream, "root", key).await.unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit = session.run("exit 3", &mut out, &mut err).await.unwrap();
        assert_eq!(out, b"out:exit 3");
        assert_eq!(err, b"err");
        assert_eq!(exit, RemoteExit::Code(6));
        // A second command on the same session works too.
        let exit = session.run("x", &mut out, &mut err).await.unwrap();
        assert_eq!(exit.shell_status(), 1);
        session.close().await;
    }

    #[tokio::test]
    async fn wrong_key_is_rejected_with_the_user_named() {
        let stream = serve(&ed25519(1)).await;
        let err = Session::connect(stream, "root", ed25519(2))
            .await
            .unwrap_err();
        assert!(
            matches!(err, SshError::AuthRejected(ref u) if u == "root"),
            "{err}"
        );
    }

    #[test]
    fn key_parse_errors_are_reported_not_panicked() {
        assert!(matches!(parse_key("not a key"), Err(SshError::Key(_))));
        let text = ed25519(3)
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .unwrap();
        assert!(parse_key(&text).is_ok());
    }

    #[test]
    fn signals_map_to_shell_statuses() {
        assert_eq!(RemoteExit::Signal("KILL".into()).shell_status(), 137);
        assert_eq!(RemoteExit::Signal("WEIRD".into()).shell_status(), 255);
        assert_eq!(RemoteExit::Code(256 + 4).shell_status(), 4);
    }
}
