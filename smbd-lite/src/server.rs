//! The async glue: SMB2 direct-TCP framing, idle timeout, connection limit.
//!
//! Each frame is a zero byte and a 24-bit big-endian length; the length is
//! checked against [`MAX_FRAME`] before any buffer is sized. A malformed
//! frame ends its own connection only.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::conn::{ConnError, Connection};
use crate::wire::MAX_FRAME;
use crate::Server;

/// Read buffers larger than this are released after use, keeping idle
/// connections small.
const KEEP_BUFFER: usize = 64 * 1024;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Socket error.
    #[error("Connection I/O failed")]
    Io(#[from] std::io::Error),
    /// The frame header is not a direct-TCP SMB2 header.
    #[error("Bad frame header {0:#04x}")]
    Framing(u8),
    /// The frame is larger than allowed.
    #[error("Frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// No request for the idle timeout.
    #[error("Idle timeout")]
    Idle,
    /// Protocol error from the client.
    #[error("Protocol error")]
    Protocol(#[from] ConnError),
}

/// Serves one client on `stream` until it disconnects or misbehaves.
pub async fn serve<S>(server: Arc<Server>, mut stream: S) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let idle = server.config.limits.idle_timeout;
    let mut conn = Connection::new(server);
    let mut buf = Vec::new();
    loop {
        let mut head = [0u8; 4];
        match tokio::time::timeout(idle, stream.read_exact(&mut head)).await {
            Err(_) => return Err(ServeError::Idle),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        if head[0] != 0 {
            return Err(ServeError::Framing(head[0]));
        }
        let len = usize::from(head[1]) << 16 | usize::from(head[2]) << 8 | usize::from(head[3]);
        if len > MAX_FRAME {
            return Err(ServeError::TooLarge(len));
        }
        buf.resize(len, 0);
        match tokio::time::timeout(idle, stream.read_exact(&mut buf)).await {
            Err(_) => return Err(ServeError::Idle),
            Ok(r) => r?,
        };
        let reply = conn.handle_frame(&buf)?;
        if buf.capacity() > KEEP_BUFFER {
            buf = Vec::new();
        }
        if let Some(reply) = reply {
            let n = u32::try_from(reply.len()).unwrap_or(u32::MAX);
            let mut frame = Vec::with_capacity(4 + reply.len());
            frame.extend_from_slice(&n.to_be_bytes());
            frame.extend_from_slice(&reply);
            stream.write_all(&frame).await?;
        }
    }
}

/// Accepts connections on `listener` forever, each served by its own task,
/// at most `limits.max_connections` at once.
pub async fn listen(server: Arc<Server>, listener: TcpListener) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(server.config.limits.max_connections));
    loop {
        let permit = Arc::clone(&slots)
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            match serve(server, stream).await {
                Ok(()) => tracing::debug!("{peer}: closed"),
                Err(e) => tracing::debug!("{peer}: {e}"),
            }
            drop(permit);
        });
    }
}
