//! Protocol behaviour through the in-memory client: large offsets, Unicode
//! names, directory listings, rename/delete, compounds, limits.

// Test message builders: every length here is small by construction.
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

#[cfg(test)]
mod tests {
    use crate::common::status::*;
    use crate::common::*;
    use smbd_lite::wire::Command;

    #[test]
    fn offsets_beyond_4_gib_are_written_and_read_back() {
        let shares = Shares::new();
        let mut c = Client::new(shares.config());
        c.tree_connect("xchg");
        let (st, fid) = c.create("big.bin", GENERIC_READ | GENERIC_WRITE, CREATE, 0);
        assert_eq!(st, SUCCESS);
        let off = 5 * 1024 * 1024 * 1024u64 + 17;
        assert_eq!(c.write(&fid, off, b"far away"), SUCCESS);
        assert_eq!(c.read(&fid, off, 8), (SUCCESS, b"far away".to_vec()));
        assert_eq!(c.read(&fid, off + 8, 8).0, END_OF_FILE);
        assert_eq!(
            std::fs::metadata(shares.rw.join("big.bin")).unwrap().len(),
            off + 8
        );
    }

    #[test]
    fn unicode_names_round_trip() {
        let shares = Shares::new();
        let mut c = Client::new(shares.config());
        c.tree_connect("xchg");
        let name = "Ünïcödé 日本語 🦀.txt";
        let (st, fid) = c.create(name, GENERIC_WRITE, CREATE, 0);
        assert_eq!(st, SUCCESS);
        c.close(&fid);
        assert!(shares.rw.join(name).exists());
        let (_, root) = c.create("", GENERIC_READ, OPEN, DIRECTORY_FILE);
        let (_, names) = c.list(&root, "*");
        assert!(names.contains(&name.to_string()), "{names:?}");
    }

    #[test]
    fn listing_of_many_files_spans_several_replies_and_ends_with_no_more_files() {
        let shares = Shares::new();
        for i in 0..3000 {
            std::fs::write(shares.rw.join(format!("file-{i:05}.txt")), b"").unwrap();
        }
        let mut c = Client::new(shares.config());
        c.tree_connect("xchg");
        let (_, root) = c.create("", GENERIC_READ, OPEN, DIRECTORY_FILE);
        let (st, names) = c.list(&root, "*");
        assert_eq!(st, SUCCESS);
        assert_eq!(names.len(), 3002);
        let (st, names) = c.list(&root, "file-0000?.txt");
        assert_eq!((st, names.len()), (SUCCESS, 10));
        let (st, _) = c.list(&root, "nothing-*");
        assert_eq!(st, 0xC000_000F); // NO_SUCH_FILE
    }

    #[test]
    fn missing_leaf_and_missing_parent_give_different_errors() {
        let shares = Shares::new();
        let mut c = Client::new(shares.config());
        c.tree_connect("xchg");
        assert_eq!(
            c.create("nope.txt", GENERIC_READ, OPEN, 0).0,
            OBJECT_NAME_NOT_FOUND
        );
        assert_eq!(
            c.create("nodir\\nope.txt", GENERIC_READ, OPEN, 0).0,
            OBJECT_PATH_NOT_FOUND
        );
        assert_eq!(
            c.create("nodir\\new.txt", GENERIC_WRITE, CREATE, 0).0,
            OBJECT_PATH_NOT_FOUND
        );
    }

    #[test]
    fn rename_and_delete_on_close_work_and_non_empty_directory_is_kept() {
        let shares = Shares::new();
        let mut c = Client::new(shares.config());
        c.tree_connect("xchg");
        let (st, d) = c.create("dir", GENERIC_READ | DELETE, CREATE, DIRECTORY_FILE);
        assert_eq!(st, SUCCESS);
        let (_, f) = c.create("dir\\a.txt", GENERIC_WRITE | DELETE, CREATE, 0);
        assert_eq!(c.write(&f, 0, b"abc"), SUCCESS);
        assert_eq!(c.rename(&f, "dir\\b.txt", false), SUCCESS);
        assert!(shares.rw.join("dir/b.txt").exists());
        assert_eq!(c.set_info(&d, 13, &[1]), DIRECTORY_NOT_EMPTY);
        assert_eq!(c.set_info(&f, 13, &[1]), SUCCESS);
        c.close(&f);
        assert!(!shares.rw.join("dir/b.txt").exists());
        assert_eq!(c.set_info(&d, 13, &[1]), SUCCESS);
        c.close(&d);
        assert!(!shares.rw.join("dir").exists());
    }

    #[test]
    fn rename_onto_existing_name_needs_replace_if_exists() {
        let shares = Shares::new();
        std::fs::write(shares.rw.join("a"), b"a").unwrap();
        std::fs::write(shares.rw.join("b"), b"b").unwrap();
        let mut c = Client::new(shares.config());
        c.tree_connect("xchg");
        let (_, f) = c.create("a", DELETE, OPEN, 0);
        assert_eq!(c.rename(&f, "b", false), OBJECT_NAME_COLLISION);
        assert_eq!(c.rename(&f, "b", true), SUCCESS);
        assert_eq!(std::fs::read(shares.rw.join("b")).unwrap(), b"a");
    }

    #[test]
    fn unknown_share_is_bad_network_name() {
        let shares = Shares::new();
        let mut c = Client::new(shares.config());
        assert_eq!(c.try_tree_connect("nope"), BAD_NETWORK_NAME);
        assert_eq!(c.try_tree_connect("XCHG"), SUCCESS);
    }

    #[test]
    fn opens_beyond_the_limit_are_refused() {
        let shares = Shares::new();
        let mut config = shares.config();
        config.limits.max_opens = 8;
        let mut c = Client::new(config);
        c.tree_connect("store");
        for _ in 0..8 {
            assert_eq!(c.create("hello.txt", GENERIC_READ, OPEN, 0).0, SUCCESS);
        }
        assert_eq!(
            c.create("hello.txt", GENERIC_READ, OPEN, 0).0,
            TOO_MANY_OPENED_FILES
        );
    }

    #[test]
    fn sessions_beyond_the_limit_are_refused() {
        let shares = Shares::new();
        let mut config = shares.config();
        config.limits.max_sessions = 2;
        let mut c = Client::new(config);
        c.login();
        c.session = 0;
        let r = c.call(
            Command::SessionSetup,
            &session_setup_body(&ntlm_negotiate()),
        );
        assert_eq!(r.status, REQUEST_NOT_ACCEPTED);
    }

    #[test]
    fn compound_create_query_close_uses_the_new_handle() {
        let shares = Shares::new();
        let mut c = Client::new(shares.config());
        c.tree_connect("store");
        let mut frame = header(Command::Create, c.next_id(), c.session, c.tree);
        frame.extend_from_slice(&create_body("hello.txt", GENERIC_READ, OPEN, 0));
        while frame.len() % 8 != 0 {
            frame.push(0);
        }
        let first_len = frame.len() as u32;
        frame[20..24].copy_from_slice(&first_len.to_le_bytes());
        let second = frame.len();
        frame.extend_from_slice(&header(Command::QueryInfo, c.next_id(), u64::MAX, u32::MAX));
        frame[second + 16] |= 0x4; // RELATED
        let mut q = Vec::new();
        q.extend_from_slice(&41u16.to_le_bytes());
        q.push(1);
        q.push(5); // FileStandardInformation
        q.extend_from_slice(&1024u32.to_le_bytes());
        q.extend_from_slice(&[0u8; 16]);
        q.extend_from_slice(&[0xFF; 16]);
        q.push(0);
        frame.extend_from_slice(&q);
        let reply = c.raw(&frame).unwrap().unwrap();
        let next = le32(&reply, 20) as usize;
        assert_eq!(le32(&reply, 8), SUCCESS);
        assert_eq!(next % 8, 0);
        let second = &reply[next..];
        assert_eq!(le32(second, 8), SUCCESS);
        assert_eq!(le64(&second[64..], 8 + 8), 21); // EndOfFile
    }

    #[test]
    fn failed_create_fails_the_related_requests_after_it() {
        let shares = Shares::new();
        let mut c = Client::new(shares.config());
        c.tree_connect("store");
        let mut frame = header(Command::Create, c.next_id(), c.session, c.tree);
        frame.extend_from_slice(&create_body("missing.txt", GENERIC_READ, OPEN, 0));
        while frame.len() % 8 != 0 {
            frame.push(0);
        }
        let first_len = frame.len() as u32;
        frame[20..24].copy_from_slice(&first_len.to_le_bytes());
        let second = frame.len();
        frame.extend_from_slice(&header(Command::Close, c.next_id(), u64::MAX, u32::MAX));
        frame[second + 16] |= 0x4;
        frame.extend_from_slice(&24u16.to_le_bytes());
        frame.extend_from_slice(&[0u8; 6]);
        frame.extend_from_slice(&[0xFF; 16]);
        let reply = c.raw(&frame).unwrap().unwrap();
        let next = le32(&reply, 20) as usize;
        assert_eq!(le32(&reply, 8), OBJECT_NAME_NOT_FOUND);
        assert_eq!(le32(&reply[next..], 8), OBJECT_NAME_NOT_FOUND);
    }

    /// An IOCTL body (FSCTL flag set, no input) for `code` on `fid`.
    fn fsctl(code: u32, fid: &[u8; 16]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&57u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&code.to_le_bytes());
        b.extend_from_slice(fid);
        for v in [0u32, 0, 0, 0, 0, 65536, 1, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn handle_free_fsctls_with_the_all_ones_file_id_are_answered_not_file_closed() {
        let shares = Shares::new();
        let mut config = shares.config();
        config.interface_addr = Some(std::net::Ipv4Addr::new(192, 168, 0, 2));
        let mut c = Client::new(config);
        c.tree_connect("xchg");
        let none = [0xff; 16];
        // FSCTL_QUERY_NETWORK_INTERFACE_INFO: one interface, the address.
        let r = c.call(Command::Ioctl, &fsctl(0x0014_01FC, &none));
        assert_eq!(r.status, SUCCESS);
        // FSCTL_DFS_GET_REFERRALS on a disk share: FS_DRIVER_REQUIRED, which
        // clients take as "no DFS" (FILE_CLOSED made Linux log an error).
        let r = c.call(Command::Ioctl, &fsctl(0x0006_0194, &none));
        assert_eq!(r.status, 0xC000_019C);
        // A request that needs a handle still finds none.
        assert_eq!(c.read(&none, 0, 10).0, FILE_CLOSED);
    }

    #[test]
    fn handle_of_another_tree_is_file_closed() {
        let shares = Shares::new();
        let mut c = Client::new(shares.config());
        c.tree_connect("store");
        let (_, fid) = c.create("hello.txt", GENERIC_READ, OPEN, 0);
        c.tree_connect("xchg");
        assert_eq!(c.read(&fid, 0, 10).0, FILE_CLOSED);
    }

    #[test]
    fn message_id_outside_the_credit_window_ends_the_connection() {
        let shares = Shares::new();
        let mut c = Client::new(shares.config());
        let mut m = header(Command::Echo, 100_000, c.session, 0);
        m.extend_from_slice(&[4, 0, 0, 0]);
        assert!(c.raw(&m).is_err());
    }

    #[test]
    fn garbage_ends_the_connection_without_panic() {
        let shares = Shares::new();
        let mut c = Client::new(shares.config());
        assert!(c.raw(b"\xfeSMBgarbage").is_err());
        assert!(c.raw(&[]).is_err());
    }

    #[test]
    fn read_at_end_of_file_is_end_of_file_and_directory_read_is_refused() {
        let shares = Shares::new();
        let mut c = Client::new(shares.config());
        c.tree_connect("store");
        let (_, fid) = c.create("hello.txt", GENERIC_READ, OPEN, 0);
        assert_eq!(c.read(&fid, 21, 10).0, END_OF_FILE);
        let (_, d) = c.create("", GENERIC_READ, OPEN, DIRECTORY_FILE);
        assert_eq!(c.read(&d, 0, 10).0, 0xC000_0010);
    }

    #[test]
    fn short_query_info_buffer_is_info_length_mismatch_or_overflow() {
        let shares = Shares::new();
        let mut c = Client::new(shares.config());
        c.tree_connect("store");
        let (_, fid) = c.create("hello.txt", GENERIC_READ, OPEN, 0);
        assert_eq!(c.query_info(&fid, 1, 18, 50).status, 0xC000_0004);
        assert_eq!(c.query_info(&fid, 1, 18, 103).status, 0xC000_0004);
        let r = c.query_info(&fid, 1, 18, 105);
        assert_eq!(r.status, 0x8000_0005);
        assert_eq!(le32(&r.body, 4), 105);
        assert_eq!(c.query_info(&fid, 1, 200, 1000).status, 0xC000_0003);
    }
}
