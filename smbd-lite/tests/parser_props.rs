//! Randomized property test of the parsers (short, seeded, runs in CI):
//! mutated valid messages never panic the parsers or the connection, and a
//! connection refusing a frame keeps working for the next client.

// Test message builders: every length here is small by construction.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

#[cfg(test)]
mod tests {
    use crate::common::*;
    use smbd_lite::auth::{ntlm::Authenticate, spnego};
    use smbd_lite::wire::negotiate::{parse_smb1_negotiate, NegotiateRequest};
    use smbd_lite::wire::requests::{parse_create_contexts, Request};
    use smbd_lite::wire::{Command, Header};
    use smbd_lite::Server;

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Valid requests to start mutating from.
    fn seeds(session: u64, tree: u32) -> Vec<Vec<u8>> {
        let with = |cmd: Command, body: Vec<u8>| {
            let mut m = header(cmd, 0, session, tree);
            m.extend_from_slice(&body);
            m
        };
        let mut read = vec![49, 0, 80, 0];
        read.extend_from_slice(&100u32.to_le_bytes());
        read.extend_from_slice(&[0u8; 8]);
        read.extend_from_slice(&[0xFF; 16]);
        read.extend_from_slice(&[0u8; 17]);
        let mut qdir = vec![33, 0, 37, 1, 0, 0, 0, 0];
        qdir.extend_from_slice(&[0xFF; 16]);
        qdir.extend_from_slice(&(64u16 + 32).to_le_bytes());
        qdir.extend_from_slice(&2u16.to_le_bytes());
        qdir.extend_from_slice(&65536u32.to_le_bytes());
        qdir.extend_from_slice(&utf16("*"));
        vec![
            with(
                Command::Negotiate,
                negotiate_body(&[0x0202, 0x0210, 0x0311]),
            ),
            with(Command::SessionSetup, session_setup_body(&ntlm_negotiate())),
            with(Command::SessionSetup, session_setup_body(&ntlm_anonymous())),
            with(
                Command::Create,
                create_body("dir\\file.txt", GENERIC_READ | GENERIC_WRITE, OPEN_IF, 0),
            ),
            with(
                Command::Create,
                create_body("", GENERIC_READ, OPEN, DIRECTORY_FILE),
            ),
            with(Command::Read, read),
            with(Command::QueryDirectory, qdir),
        ]
    }

    fn mutate(rng: &mut Rng, msg: &mut Vec<u8>) {
        for _ in 0..1 + rng.below(4) {
            match rng.below(6) {
                0 if !msg.is_empty() => {
                    let i = rng.below(msg.len());
                    msg[i] ^= 1 << rng.below(8);
                }
                1 if !msg.is_empty() => {
                    let i = rng.below(msg.len());
                    msg[i] = rng.next() as u8;
                }
                2 => {
                    let n = rng.below(msg.len() + 1);
                    msg.truncate(n);
                }
                3 if msg.len() >= 4 => {
                    // Interesting values in a random length/offset-sized field.
                    let i = rng.below(msg.len() - 3);
                    let v = [0u32, 1, 0x7FFF, 0xFFFF, 0xFFFF_FFFF, 64, 65536][rng.below(7)];
                    msg[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
                4 => {
                    let extra = rng.below(64);
                    msg.extend((0..extra).map(|_| rng.next() as u8));
                }
                _ if msg.len() > 24 => {
                    // Random NextCommand.
                    let v = (rng.below(msg.len() * 2) as u32) & !7;
                    msg[20..24].copy_from_slice(&v.to_le_bytes());
                }
                _ => {}
            }
        }
    }

    const COMMANDS: [Command; 18] = [
        Command::SessionSetup,
        Command::Logoff,
        Command::TreeConnect,
        Command::TreeDisconnect,
        Command::Create,
        Command::Close,
        Command::Flush,
        Command::Read,
        Command::Write,
        Command::Lock,
        Command::Ioctl,
        Command::Cancel,
        Command::Echo,
        Command::QueryDirectory,
        Command::ChangeNotify,
        Command::QueryInfo,
        Command::SetInfo,
        Command::OplockBreak,
    ];

    #[test]
    fn mutated_messages_never_panic_the_parsers() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let base = seeds(1, 1);
        for _ in 0..20_000 {
            let mut m = base[rng.below(base.len())].clone();
            mutate(&mut rng, &mut m);
            let _ = Header::parse(&m);
            let _ = NegotiateRequest::parse(&m);
            let _ = parse_smb1_negotiate(&m);
            for c in COMMANDS {
                let _ = Request::parse(c, &m);
            }
            let tail = &m[m.len().min(64)..];
            let _ = spnego::unwrap(tail);
            let _ = Authenticate::parse(tail);
            let _ = parse_create_contexts(tail);
        }
    }

    #[test]
    fn mutated_frames_never_panic_a_live_connection() {
        let shares = Shares::new();
        std::fs::create_dir(shares.rw.join("dir")).unwrap();
        let server = Server::new(shares.config()).unwrap();
        let mut rng = Rng(0x0dd_ba11_cafe_f00d);
        let mut c = Client::on(server.clone());
        c.tree_connect("xchg");
        let mut dropped = 0;
        for _ in 0..3_000 {
            let mut m = seeds(c.session, c.tree)[rng.below(7)].clone();
            mutate(&mut rng, &mut m);
            // Keep most messages inside the credit window so they get parsed.
            if m.len() >= 32 && rng.below(4) != 0 {
                let id = c.next_id();
                m[24..32].copy_from_slice(&id.to_le_bytes());
            }
            if c.raw(&m).is_err() {
                // The connection is over; a new client must still be served.
                dropped += 1;
                c = Client::on(server.clone());
                c.tree_connect("xchg");
            }
        }
        assert!(
            dropped > 0,
            "mutations never hit a fatal error; the test is too weak"
        );
        // Nothing escaped the share.
        let outside: Vec<_> = std::fs::read_dir(shares.tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(outside.len(), 2, "{outside:?}");
    }
}
