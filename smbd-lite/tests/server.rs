//! The async glue: frame limits, idle timeout, and a bad client ending only
//! its own connection.

// Test message builders: every length here is small by construction.
#![allow(clippy::cast_possible_truncation)]

mod common;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use smbd_lite::server::{serve, ServeError};
    use smbd_lite::wire::Command;
    use smbd_lite::Server;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::common::*;

    fn negotiate_frame() -> Vec<u8> {
        let mut m = header(Command::Negotiate, 0, 0, 0);
        m.extend_from_slice(&negotiate_body(&[0x0202, 0x0210]));
        let mut f = (m.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&m);
        f
    }

    #[tokio::test]
    async fn frame_over_the_size_limit_ends_the_connection_before_allocating() {
        let shares = Shares::new();
        let server = Server::new(shares.config()).unwrap();
        let (mut client, end) = tokio::io::duplex(1024);
        let task = tokio::spawn(serve(server, end));
        client.write_all(&[0, 0xFF, 0xFF, 0xFF]).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(r, Err(ServeError::TooLarge(0xFF_FFFF))), "{r:?}");
    }

    #[tokio::test]
    async fn idle_connection_is_closed() {
        let shares = Shares::new();
        let mut config = shares.config();
        config.limits.idle_timeout = Duration::from_millis(200);
        let server = Server::new(config).unwrap();
        let (_client, end) = tokio::io::duplex(1024);
        let r = tokio::time::timeout(Duration::from_secs(5), serve(server, end))
            .await
            .unwrap();
        assert!(matches!(r, Err(ServeError::Idle)), "{r:?}");
    }

    #[tokio::test]
    async fn malformed_frame_ends_only_its_own_connection() {
        let shares = Shares::new();
        let server = Server::new(shares.config()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(smbd_lite::server::listen(server, listener));

        let mut good = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut bad = tokio::net::TcpStream::connect(addr).await.unwrap();
        bad.write_all(&[0, 0, 0, 8, 0xFE, b'S', b'M', b'B', 1, 2, 3, 4])
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), bad.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "the bad connection is closed");

        good.write_all(&negotiate_frame()).await.unwrap();
        let mut head = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), good.read_exact(&mut head))
            .await
            .unwrap()
            .unwrap();
        let len = u32::from_be_bytes(head) as usize;
        let mut reply = vec![0u8; len];
        good.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply[..4], b"\xfeSMB");
        assert_eq!(
            le32(&reply, 8),
            0,
            "NEGOTIATE succeeded on the good connection"
        );
    }
}
