//! Test helpers: a raw SMB2 client driving `Connection` directly, and
//! helpers to run the server on loopback for external tools.
#![allow(dead_code)]
// Test message builders: every length here is small by construction.
#![allow(clippy::cast_possible_truncation)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use smbd_lite::conn::Connection;
use smbd_lite::wire::{Command, Header};
use smbd_lite::{Config, Server, ShareConfig};

/// NT status values used by the tests.
pub mod status {
    pub const SUCCESS: u32 = 0;
    pub const MORE_PROCESSING: u32 = 0xC000_0016;
    pub const ACCESS_DENIED: u32 = 0xC000_0022;
    pub const OBJECT_NAME_INVALID: u32 = 0xC000_0033;
    pub const OBJECT_NAME_NOT_FOUND: u32 = 0xC000_0034;
    pub const OBJECT_NAME_COLLISION: u32 = 0xC000_0035;
    pub const OBJECT_PATH_NOT_FOUND: u32 = 0xC000_003A;
    pub const INVALID_PARAMETER: u32 = 0xC000_000D;
    pub const END_OF_FILE: u32 = 0xC000_0011;
    pub const TOO_MANY_OPENED_FILES: u32 = 0xC000_011F;
    pub const BAD_NETWORK_NAME: u32 = 0xC000_00CC;
    pub const FILE_CLOSED: u32 = 0xC000_0128;
    pub const NO_MORE_FILES: u32 = 0x8000_0006;
    pub const DIRECTORY_NOT_EMPTY: u32 = 0xC000_0101;
    pub const REQUEST_NOT_ACCEPTED: u32 = 0xC000_00D0;
}

/// Access masks and dispositions.
pub const GENERIC_READ: u32 = 0x8000_0000;
pub const GENERIC_WRITE: u32 = 0x4000_0000;
pub const DELETE: u32 = 0x1_0000;
pub const FILE_READ_ATTRIBUTES: u32 = 0x80;
pub const OPEN: u32 = 1;
pub const CREATE: u32 = 2;
pub const OPEN_IF: u32 = 3;
pub const OVERWRITE_IF: u32 = 5;
pub const DIRECTORY_FILE: u32 = 0x1;
pub const DELETE_ON_CLOSE: u32 = 0x1000;

/// Two share folders (read-write `xchg`, read-only `store`) in a temp dir.
pub struct Shares {
    pub tmp: tempfile::TempDir,
    pub rw: PathBuf,
    pub ro: PathBuf,
}

impl Shares {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let rw = tmp.path().join("xchg");
        let ro = tmp.path().join("store");
        std::fs::create_dir(&rw).unwrap();
        std::fs::create_dir(&ro).unwrap();
        std::fs::write(ro.join("hello.txt"), b"hello from the store\n").unwrap();
        Self { tmp, rw, ro }
    }

    pub fn config(&self) -> Config {
        Config {
            shares: vec![
                ShareConfig {
                    name: "xchg".into(),
                    path: self.rw.clone(),
                    read_only: false,
                },
                ShareConfig {
                    name: "store".into(),
                    path: self.ro.clone(),
                    read_only: true,
                },
            ],
            ..Config::default()
        }
    }
}

/// A synchronous SMB2 client talking to a `Connection` in memory.
pub struct Client {
    pub conn: Connection,
    msg_id: u64,
    pub session: u64,
    pub tree: u32,
}

/// A parsed reply.
#[derive(Debug)]
pub struct Resp {
    pub status: u32,
    pub header: Header,
    pub body: Vec<u8>,
}

pub fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
pub fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
pub fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
pub fn utf16(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// Builds a request header.
pub fn header(cmd: Command, msg_id: u64, session: u64, tree: u32) -> Vec<u8> {
    let h = Header {
        credit_charge: 1,
        status: 0,
        command: cmd,
        credits: 64,
        flags: 0,
        next_command: 0,
        message_id: msg_id,
        async_id: 0,
        tree_id: tree,
        session_id: session,
        signature: [0; 16],
    };
    let mut out = smbd_lite::wire::Out::default();
    h.emit(&mut out);
    out.0
}

/// Builds a NEGOTIATE request for the given dialects.
pub fn negotiate_body(dialects: &[u16]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&36u16.to_le_bytes());
    b.extend_from_slice(&(dialects.len() as u16).to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&[7u8; 16]);
    let ctx_off = 64 + 36 + 2 * dialects.len();
    let ctx_off = ctx_off.div_ceil(8) * 8;
    let has311 = dialects.contains(&0x0311);
    b.extend_from_slice(&(if has311 { ctx_off as u32 } else { 0 }).to_le_bytes());
    b.extend_from_slice(&(if has311 { 1u16 } else { 0 }).to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    for d in dialects {
        b.extend_from_slice(&d.to_le_bytes());
    }
    if has311 {
        while (64 + b.len()) % 8 != 0 {
            b.push(0);
        }
        // PREAUTH_INTEGRITY: 1 algorithm (SHA-512), 32-byte salt.
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&38u16.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&32u16.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&[9u8; 32]);
    }
    b
}

/// A raw NTLMSSP NEGOTIATE message.
pub fn ntlm_negotiate() -> Vec<u8> {
    let mut m = b"NTLMSSP\0".to_vec();
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&0x6208_8215u32.to_le_bytes());
    m.extend_from_slice(&[0u8; 16]);
    m
}

/// A raw anonymous NTLMSSP AUTHENTICATE message.
pub fn ntlm_anonymous() -> Vec<u8> {
    let mut m = b"NTLMSSP\0".to_vec();
    m.extend_from_slice(&3u32.to_le_bytes());
    for _ in 0..6 {
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&72u32.to_le_bytes());
    }
    m.extend_from_slice(&0x0000_0a01u32.to_le_bytes());
    m.extend_from_slice(&[0u8; 8]);
    m
}

pub fn session_setup_body(blob: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&25u16.to_le_bytes());
    b.push(0);
    b.push(1);
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&(64u16 + 24).to_le_bytes());
    b.extend_from_slice(&(blob.len() as u16).to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(blob);
    b
}

pub fn create_body(name: &str, access: u32, disposition: u32, options: u32) -> Vec<u8> {
    let n = utf16(name);
    let mut b = Vec::new();
    b.extend_from_slice(&57u16.to_le_bytes());
    b.push(0);
    b.push(0);
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&[0u8; 16]);
    b.extend_from_slice(&access.to_le_bytes());
    b.extend_from_slice(&0x80u32.to_le_bytes());
    b.extend_from_slice(&7u32.to_le_bytes());
    b.extend_from_slice(&disposition.to_le_bytes());
    b.extend_from_slice(&options.to_le_bytes());
    b.extend_from_slice(&(64u16 + 56).to_le_bytes());
    b.extend_from_slice(&(n.len() as u16).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&n);
    if n.is_empty() {
        b.push(0);
    }
    b
}

impl Client {
    /// A connection with a negotiated dialect and an anonymous session.
    pub fn new(config: Config) -> Self {
        let server = Server::new(config).expect("server");
        Self::on(server)
    }

    pub fn on(server: Arc<Server>) -> Self {
        let mut c = Self {
            conn: Connection::new(server),
            msg_id: 0,
            session: 0,
            tree: 0,
        };
        let r = c.call(
            Command::Negotiate,
            &negotiate_body(&[0x0202, 0x0210, 0x0300, 0x0311]),
        );
        assert_eq!(r.status, status::SUCCESS);
        c.login();
        c
    }

    pub fn login(&mut self) -> u64 {
        self.session = 0;
        let r = self.call(
            Command::SessionSetup,
            &session_setup_body(&ntlm_negotiate()),
        );
        assert_eq!(r.status, status::MORE_PROCESSING);
        self.session = r.header.session_id;
        let r = self.call(
            Command::SessionSetup,
            &session_setup_body(&ntlm_anonymous()),
        );
        assert_eq!(r.status, status::SUCCESS);
        self.session
    }

    /// Sends one request; returns the reply.
    pub fn call(&mut self, cmd: Command, body: &[u8]) -> Resp {
        let mut m = header(cmd, self.msg_id, self.session, self.tree);
        self.msg_id += 1;
        m.extend_from_slice(body);
        let reply = self
            .conn
            .handle_frame(&m)
            .expect("connection kept")
            .expect("a reply");
        let header = Header::parse(&reply).unwrap();
        Resp {
            status: header.status,
            header,
            body: reply[64..].to_vec(),
        }
    }

    /// Sends raw bytes as one frame.
    pub fn raw(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, smbd_lite::conn::ConnError> {
        self.conn.handle_frame(frame)
    }

    pub fn next_id(&mut self) -> u64 {
        let id = self.msg_id;
        self.msg_id += 1;
        id
    }

    pub fn tree_connect(&mut self, share: &str) -> u32 {
        let st = self.try_tree_connect(share);
        assert_eq!(st, status::SUCCESS, "tree connect {share}");
        self.tree
    }

    pub fn try_tree_connect(&mut self, share: &str) -> u32 {
        let path = utf16(&format!("\\\\127.0.0.1\\{share}"));
        let mut b = Vec::new();
        b.extend_from_slice(&9u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&(64u16 + 8).to_le_bytes());
        b.extend_from_slice(&(path.len() as u16).to_le_bytes());
        b.extend_from_slice(&path);
        let r = self.call(Command::TreeConnect, &b);
        if r.status == 0 {
            self.tree = r.header.tree_id;
        }
        r.status
    }

    /// CREATE; returns status and FileId.
    pub fn create(
        &mut self,
        name: &str,
        access: u32,
        disposition: u32,
        options: u32,
    ) -> (u32, [u8; 16]) {
        let r = self.call(
            Command::Create,
            &create_body(name, access, disposition, options),
        );
        let mut fid = [0u8; 16];
        if r.status == 0 {
            fid.copy_from_slice(&r.body[64..80]);
        }
        (r.status, fid)
    }

    pub fn close(&mut self, fid: &[u8; 16]) -> u32 {
        let mut b = Vec::new();
        b.extend_from_slice(&24u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(fid);
        self.call(Command::Close, &b).status
    }

    pub fn write(&mut self, fid: &[u8; 16], offset: u64, data: &[u8]) -> u32 {
        let mut b = Vec::new();
        b.extend_from_slice(&49u16.to_le_bytes());
        b.extend_from_slice(&(64u16 + 48).to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(fid);
        b.extend_from_slice(&[0u8; 16]);
        b.extend_from_slice(data);
        if data.is_empty() {
            b.push(0);
        }
        self.call(Command::Write, &b).status
    }

    pub fn read(&mut self, fid: &[u8; 16], offset: u64, len: u32) -> (u32, Vec<u8>) {
        let mut b = Vec::new();
        b.extend_from_slice(&49u16.to_le_bytes());
        b.push(80);
        b.push(0);
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&offset.to_le_bytes());
        b.extend_from_slice(fid);
        b.extend_from_slice(&[0u8; 17]);
        let r = self.call(Command::Read, &b);
        if r.status != 0 {
            return (r.status, Vec::new());
        }
        let n = le32(&r.body, 4) as usize;
        (0, r.body[16..16 + n].to_vec())
    }

    pub fn set_info(&mut self, fid: &[u8; 16], class: u8, data: &[u8]) -> u32 {
        let mut b = Vec::new();
        b.extend_from_slice(&33u16.to_le_bytes());
        b.push(1);
        b.push(class);
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&(64u16 + 32).to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(fid);
        b.extend_from_slice(data);
        self.call(Command::SetInfo, &b).status
    }

    pub fn rename(&mut self, fid: &[u8; 16], to: &str, replace: bool) -> u32 {
        let n = utf16(to);
        let mut d = vec![u8::from(replace)];
        d.extend_from_slice(&[0u8; 7]);
        d.extend_from_slice(&0u64.to_le_bytes());
        d.extend_from_slice(&(n.len() as u32).to_le_bytes());
        d.extend_from_slice(&n);
        self.set_info(fid, 10, &d)
    }

    pub fn query_info(&mut self, fid: &[u8; 16], info_type: u8, class: u8, max: u32) -> Resp {
        let mut b = Vec::new();
        b.extend_from_slice(&41u16.to_le_bytes());
        b.push(info_type);
        b.push(class);
        b.extend_from_slice(&max.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(fid);
        b.push(0);
        self.call(Command::QueryInfo, &b)
    }

    /// Lists a directory handle: names from FileNamesInformation.
    pub fn list(&mut self, fid: &[u8; 16], pattern: &str) -> (u32, Vec<String>) {
        let mut names = Vec::new();
        let mut first = true;
        loop {
            let p = utf16(pattern);
            let mut b = Vec::new();
            b.extend_from_slice(&33u16.to_le_bytes());
            b.push(12);
            b.push(if first { 1 } else { 0 });
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(fid);
            b.extend_from_slice(&(64u16 + 32).to_le_bytes());
            b.extend_from_slice(&(p.len() as u16).to_le_bytes());
            b.extend_from_slice(&65536u32.to_le_bytes());
            b.extend_from_slice(&p);
            let r = self.call(Command::QueryDirectory, &b);
            if r.status != 0 {
                return (if names.is_empty() { r.status } else { 0 }, names);
            }
            first = false;
            let data = &r.body[8..8 + le32(&r.body, 4) as usize];
            let mut off = 0;
            loop {
                let next = le32(data, off) as usize;
                let len = le32(data, off + 8) as usize;
                let raw = &data[off + 12..off + 12 + len];
                let units: Vec<u16> = raw
                    .chunks(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                names.push(String::from_utf16(&units).unwrap());
                if next == 0 {
                    break;
                }
                off += next;
            }
        }
    }
}

/// Finds an external tool; `None` (after printing `skipped: ...`) when it
/// is missing outside CI; panics under CI=true.
pub fn require_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let reason = format!("{name} is not installed (apt-get install smbclient samba-testsuite)");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{reason}");
        }
        println!("skipped: {reason}");
    }
    found
}

/// Runs the server on a loopback port in a background thread; returns the port.
pub fn spawn_server(config: Config) -> u16 {
    let server = Server::new(config).expect("server");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = smbd_lite::server::listen(server, l).await;
        });
    });
    port
}

/// Runs smbclient against `//127.0.0.1/share`; returns (success, output).
pub fn smbclient(
    tool: &Path,
    port: u16,
    share: &str,
    extra: &[&str],
    cmds: &str,
) -> (bool, String) {
    let out = std::process::Command::new(tool)
        .arg(format!("//127.0.0.1/{share}"))
        .args(["-p", &port.to_string()])
        .args(extra)
        .args(["-c", cmds])
        .output()
        .expect("run smbclient");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
