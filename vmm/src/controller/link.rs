//! Reaching a guest's SSH server through the host endpoint: wait for its
//! port while watching that the guest still runs, log in, and run a
//! command under a deadline.
//!
//! The guest's liveness is asked of a callback (`stopped`), polled every
//! [`POLL`], so that a guest that powers off or crashes ends the wait at
//! once instead of at the timeout.

use std::future::Future;
use std::time::{Duration, Instant};

use netswitch::endpoint::{EndpointError, HostEndpoint};
use russh::keys::PrivateKey;
use tokio::io::AsyncWrite;

use super::ssh::{RemoteExit, Session, SshError};
use crate::net::GUEST_ADDR;

/// How often the guest's liveness is checked while waiting.
pub const POLL: Duration = Duration::from_millis(100);
/// Longest wait for one TCP connection attempt (no answer while the guest
/// has no network yet).
const ATTEMPT: Duration = Duration::from_secs(2);
/// Pause after a refused attempt (the guest is up, its server not yet).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Why the guest could not be reached or the command did not finish.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The guest stopped; the text says how.
    #[error("{0}")]
    Stopped(String),
    /// The wait ran out.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// The host endpoint failed.
    #[error("host endpoint failed")]
    Endpoint(#[source] EndpointError),
    /// SSH failed.
    #[error(transparent)]
    Ssh(#[from] SshError),
}

/// Runs `work` until it ends, `stopped` reports the guest gone, or
/// `timeout` passes.
pub async fn watch<T, F>(
    work: F,
    timeout: Duration,
    stopped: &dyn Fn() -> Option<String>,
) -> Result<T, LinkError>
where
    F: Future<Output = Result<T, LinkError>>,
{
    let watcher = async {
        loop {
            if let Some(why) = stopped() {
                return LinkError::Stopped(why);
            }
            tokio::time::sleep(POLL).await;
        }
    };
    tokio::select! {
        r = work => r,
        e = watcher => Err(e),
        () = tokio::time::sleep(timeout) => Err(LinkError::TimedOut(timeout)),
    }
}

/// Waits until the guest's `port` accepts a connection (calling
/// `progress` with the time waited, every [`POLL`] or so), then logs in as
/// `user` with `key`. Gives up when `stopped` reports the guest gone, or
/// after `timeout` for the port and again for the login.
pub async fn login(
    endpoint: &HostEndpoint,
    port: u16,
    user: &str,
    key: PrivateKey,
    timeout: Duration,
    stopped: &dyn Fn() -> Option<String>,
    progress: &mut dyn FnMut(Duration),
) -> Result<Session, LinkError> {
    let started = Instant::now();
    let connect = async {
        loop {
            progress(started.elapsed());
            match tokio::time::timeout(ATTEMPT, endpoint.connect(GUEST_ADDR, port)).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(EndpointError::Refused(..))) => {
                    tracing::debug!(elapsed = ?started.elapsed(), "guest port {port} refused");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Ok(Err(e)) => return Err(LinkError::Endpoint(e)),
                Err(_no_answer) => {
                    tracing::debug!(elapsed = ?started.elapsed(), "guest port {port}: no answer");
                }
            }
        }
    };
    let stream = watch(connect, timeout, stopped).await?;
    tracing::debug!(elapsed = ?started.elapsed(), "guest port {port} open; logging in");
    progress(started.elapsed());
    let session = watch(
        async { Ok(Session::connect(stream, user, key).await?) },
        timeout,
        stopped,
    )
    .await?;
    tracing::debug!(elapsed = ?started.elapsed(), "logged in as {user}");
    Ok(session)
}

/// Runs `command` in the guest, streaming its output, under `timeout`.
pub async fn run<O, E>(
    session: &Session,
    command: &str,
    stdout: &mut O,
    stderr: &mut E,
    timeout: Duration,
    stopped: &dyn Fn() -> Option<String>,
) -> Result<RemoteExit, LinkError>
where
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    watch(
        async { Ok(session.run(command, stdout, stderr).await?) },
        timeout,
        stopped,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watch_ends_on_stop_or_timeout_and_passes_results_through() {
        let alive = || None;
        let r = watch(async { Ok(7) }, Duration::from_secs(5), &alive).await;
        assert_eq!(r.unwrap(), 7);

        let t0 = Instant::now();
        let r: Result<(), _> =
            watch(std::future::pending(), Duration::from_millis(300), &alive).await;
        assert!(matches!(r, Err(LinkError::TimedOut(_))));
        assert!(t0.elapsed() >= Duration::from_millis(300));

        let dead = || Some("the guest powered off".to_owned());
        let t0 = Instant::now();
        let r: Result<(), _> = watch(std::future::pending(), Duration::from_secs(30), &dead).await;
        match r {
            Err(LinkError::Stopped(why)) => assert_eq!(why, "the guest powered off"),
            other => panic!("{other:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
