//! No request reaches outside a share, and a read-only share refuses every
//! change with STATUS_ACCESS_DENIED; one test per case.

mod common;

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use crate::common::status::*;
    use crate::common::*;

    fn rw_client() -> (Shares, Client) {
        let shares = Shares::new();
        let mut c = Client::new(shares.config());
        c.tree_connect("xchg");
        (shares, c)
    }

    fn ro_client() -> (Shares, Client) {
        let shares = Shares::new();
        let mut c = Client::new(shares.config());
        c.tree_connect("store");
        (shares, c)
    }

    #[test]
    fn dot_dot_components_are_refused() {
        let (s, mut c) = rw_client();
        std::fs::write(s.tmp.path().join("secret"), b"x").unwrap();
        for name in ["..\\secret", "a\\..\\..\\secret", "..", ".\\..\\secret"] {
            let (st, _) = c.create(name, GENERIC_READ, OPEN, 0);
            assert_eq!(st, OBJECT_NAME_INVALID, "{name}");
        }
        let (st, _) = c.create("..\\created", GENERIC_WRITE, CREATE, 0);
        assert_eq!(st, OBJECT_NAME_INVALID);
        assert!(!s.tmp.path().join("created").exists());
    }

    #[test]
    fn absolute_paths_are_refused() {
        let (_s, mut c) = rw_client();
        for name in [
            "\\etc\\passwd",
            "/etc/passwd",
            "C:\\Windows",
            "\\\\host\\share\\x",
        ] {
            let (st, _) = c.create(name, GENERIC_READ, OPEN, 0);
            assert_ne!(st, SUCCESS, "{name}");
        }
    }

    #[test]
    fn symlink_to_a_file_outside_is_not_followed() {
        let (s, mut c) = rw_client();
        let secret = s.tmp.path().join("secret.txt");
        std::fs::write(&secret, b"top secret").unwrap();
        symlink(&secret, s.rw.join("link")).unwrap();
        let (st, _) = c.create("link", GENERIC_READ, OPEN, 0);
        assert_eq!(st, ACCESS_DENIED);
        let (st, _) = c.create("link", GENERIC_WRITE, OVERWRITE_IF, 0);
        assert_eq!(st, ACCESS_DENIED);
        assert_eq!(std::fs::read(&secret).unwrap(), b"top secret");
    }

    #[test]
    fn symlinked_directory_outside_is_not_entered() {
        let (s, mut c) = rw_client();
        let outside = s.tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("f"), b"x").unwrap();
        symlink(&outside, s.rw.join("out")).unwrap();
        let (st, _) = c.create("out\\f", GENERIC_READ, OPEN, 0);
        assert_eq!(st, ACCESS_DENIED);
        let (st, _) = c.create("out\\new", GENERIC_WRITE, CREATE, 0);
        assert_eq!(st, ACCESS_DENIED);
        assert!(!outside.join("new").exists());
        // The link is hidden from listings, as nothing behind it is reachable.
        let (st, root) = c.create("", GENERIC_READ, OPEN, DIRECTORY_FILE);
        assert_eq!(st, SUCCESS);
        let (_, names) = c.list(&root, "*");
        assert!(!names.contains(&"out".to_string()), "{names:?}");
    }

    #[test]
    fn symlink_into_a_neighbour_with_the_share_as_prefix_is_refused() {
        // CVE-2015-5252: /x/xchg2 starts with the string /x/xchg.
        let (s, mut c) = rw_client();
        let neighbour = s.tmp.path().join("xchg2");
        std::fs::create_dir(&neighbour).unwrap();
        std::fs::write(neighbour.join("f"), b"x").unwrap();
        symlink("../xchg2/f", s.rw.join("l")).unwrap();
        let (st, _) = c.create("l", GENERIC_READ, OPEN, 0);
        assert_eq!(st, ACCESS_DENIED);
    }

    #[test]
    fn symlink_staying_inside_the_share_works() {
        let (s, mut c) = rw_client();
        std::fs::create_dir(s.rw.join("d")).unwrap();
        std::fs::write(s.rw.join("d/f"), b"inside").unwrap();
        symlink("d/f", s.rw.join("l")).unwrap();
        let (st, fid) = c.create("l", GENERIC_READ, OPEN, 0);
        assert_eq!(st, SUCCESS);
        assert_eq!(c.read(&fid, 0, 100).1, b"inside");
    }

    #[test]
    fn rename_target_outside_the_share_is_refused() {
        let (s, mut c) = rw_client();
        std::fs::write(s.rw.join("f"), b"x").unwrap();
        let (st, fid) = c.create("f", DELETE | GENERIC_READ, OPEN, 0);
        assert_eq!(st, SUCCESS);
        assert_eq!(c.rename(&fid, "..\\escaped", false), OBJECT_NAME_INVALID);
        std::fs::create_dir(s.tmp.path().join("outside")).unwrap();
        symlink(s.tmp.path().join("outside"), s.rw.join("out")).unwrap();
        assert_ne!(c.rename(&fid, "out\\escaped", false), SUCCESS);
        assert!(!s.tmp.path().join("outside/escaped").exists());
        assert!(!s.tmp.path().join("escaped").exists());
    }

    #[test]
    fn stream_names_are_refused() {
        let (s, mut c) = rw_client();
        std::fs::write(s.rw.join("f.txt"), b"x").unwrap();
        let (st, _) = c.create("f.txt:hidden", GENERIC_WRITE, OPEN_IF, 0);
        assert_eq!(st, OBJECT_NAME_INVALID);
        let (st, _) = c.create("f.txt:hidden:$DATA", GENERIC_READ, OPEN, 0);
        assert_eq!(st, OBJECT_NAME_INVALID);
        assert!(!s.rw.join("f.txt:hidden").exists());
    }

    #[test]
    fn reserved_device_names_are_refused() {
        let (s, mut c) = rw_client();
        for name in ["CON", "nul", "aux.txt", "COM1", "lpt9.log", "d\\PRN"] {
            let (st, _) = c.create(name, GENERIC_WRITE, OPEN_IF, 0);
            assert_eq!(st, OBJECT_NAME_INVALID, "{name}");
        }
        assert_eq!(std::fs::read_dir(&s.rw).unwrap().count(), 0);
    }

    #[test]
    fn read_only_share_refuses_creating_a_file() {
        let (s, mut c) = ro_client();
        let (st, _) = c.create("new.txt", GENERIC_WRITE, CREATE, 0);
        assert_eq!(st, ACCESS_DENIED);
        let (st, _) = c.create("new.txt", GENERIC_READ, OPEN_IF, 0);
        assert_eq!(st, ACCESS_DENIED);
        assert!(!s.ro.join("new.txt").exists());
    }

    #[test]
    fn read_only_share_refuses_making_a_directory() {
        let (s, mut c) = ro_client();
        let (st, _) = c.create("d", GENERIC_READ, CREATE, DIRECTORY_FILE);
        assert_eq!(st, ACCESS_DENIED);
        assert!(!s.ro.join("d").exists());
    }

    #[test]
    fn read_only_share_refuses_opening_for_write() {
        let (_s, mut c) = ro_client();
        let (st, _) = c.create("hello.txt", GENERIC_WRITE, OPEN, 0);
        assert_eq!(st, ACCESS_DENIED);
        let (st, _) = c.create("hello.txt", GENERIC_READ, OVERWRITE_IF, 0);
        assert_eq!(st, ACCESS_DENIED);
    }

    #[test]
    fn read_only_share_refuses_writes_on_a_read_handle() {
        let (s, mut c) = ro_client();
        let (st, fid) = c.create("hello.txt", GENERIC_READ, OPEN, 0);
        assert_eq!(st, SUCCESS);
        assert_eq!(c.write(&fid, 0, b"overwritten"), ACCESS_DENIED);
        assert_eq!(c.set_info(&fid, 20, &0u64.to_le_bytes()), ACCESS_DENIED);
        assert_eq!(
            std::fs::read(s.ro.join("hello.txt")).unwrap(),
            b"hello from the store\n"
        );
    }

    #[test]
    fn read_only_share_refuses_delete() {
        let (s, mut c) = ro_client();
        let (st, _) = c.create("hello.txt", DELETE, OPEN, DELETE_ON_CLOSE);
        assert_eq!(st, ACCESS_DENIED);
        let (st, fid) = c.create("hello.txt", GENERIC_READ, OPEN, 0);
        assert_eq!(st, SUCCESS);
        assert_eq!(c.set_info(&fid, 13, &[1]), ACCESS_DENIED);
        c.close(&fid);
        assert!(s.ro.join("hello.txt").exists());
    }

    #[test]
    fn read_only_share_refuses_rename() {
        let (s, mut c) = ro_client();
        let (st, fid) = c.create("hello.txt", GENERIC_READ, OPEN, 0);
        assert_eq!(st, SUCCESS);
        assert_eq!(c.rename(&fid, "moved.txt", false), ACCESS_DENIED);
        assert!(s.ro.join("hello.txt").exists());
    }

    #[test]
    fn read_only_share_refuses_setting_times_and_attributes() {
        let (s, mut c) = ro_client();
        let before = std::fs::metadata(s.ro.join("hello.txt"))
            .unwrap()
            .modified()
            .unwrap();
        let (st, fid) = c.create("hello.txt", GENERIC_READ, OPEN, 0);
        assert_eq!(st, SUCCESS);
        let mut basic = vec![0u8; 40];
        basic[16..24].copy_from_slice(&130_000_000_000_000_000u64.to_le_bytes());
        basic[32..36].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(c.set_info(&fid, 4, &basic), ACCESS_DENIED);
        assert_eq!(
            std::fs::metadata(s.ro.join("hello.txt"))
                .unwrap()
                .modified()
                .unwrap(),
            before
        );
    }
}
