//! Images checked against the reference tools: mtools (`mdir`, `mcopy`,
//! `mlabel`), dosfstools (`mkfs.msdos`, `fsck.fat`) and `blkid`, plus the
//! fatfs crate as an independent reader.
//!
//! A test needing a missing tool prints `skipped: REASON` and passes, except
//! under `CI=true`, where it fails.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use floppy::{list, Format, ImageBuilder, Listing};

/// A scratch folder removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("floppy-it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Full paths of `names`, or `None` after reporting the skip.
fn tools<const N: usize>(names: [&str; N]) -> Option<[PathBuf; N]> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    let found = names.map(|n| dirs.iter().map(|d| d.join(n)).find(|p| p.is_file()));
    let missing: Vec<&str> = names
        .iter()
        .zip(&found)
        .filter(|(_, f)| f.is_none())
        .map(|(n, _)| *n)
        .collect();
    if missing.is_empty() {
        return Some(found.map(Option::unwrap));
    }
    let reason = format!("{} not installed", missing.join(", "));
    assert!(
        !std::env::var("CI").is_ok_and(|v| v == "true"),
        "{reason} (required under CI=true)"
    );
    println!("skipped: {reason}");
    None
}

fn run(tool: &Path, args: &[&str]) -> Output {
    let out = Command::new(tool)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        tool.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A host tree exercising folders, long names, case bits and sizes.
fn sample_tree(root: &Path) {
    let files: &[(&str, usize)] = &[
        ("winnt.sif", 40),
        ("WINNT2.SIF", 0),
        ("Autounattend.xml", 700),
        ("Readme.txt", 513),
        ("a+b c.tar.gz", 1024),
        ("readme.TXT2", 1),
        (".profile", 5),
        ("Tools/Sub Dir/deep.txt", 3000),
        ("Tools/setup-x86_64.exe", 20_000),
        ("Tools/Program Files/x", 1),
        ("Tools/Program Data/y", 2),
        (
            "Tools/Sub Dir/Nested Deeper/Last File With A Long Name.dat",
            1500,
        ),
    ];
    for (i, (rel, len)) in files.iter().enumerate() {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let data: Vec<u8> = (0..*len).map(|k| (k * 7 + i).to_le_bytes()[0]).collect();
        std::fs::write(p, data).unwrap();
    }
    std::fs::create_dir_all(root.join("Empty Folder")).unwrap();
}

fn build_from(src: &Path, label: Option<&str>, format: Format) -> Vec<u8> {
    let mut b = ImageBuilder::new(format);
    if let Some(l) = label {
        b.label(l).unwrap();
    }
    b.timestamp(1_700_000_000).add_path(src, "").unwrap();
    b.build().unwrap()
}

/// (short, case, size, is_dir, has_long_name) by path.
type Summary = BTreeMap<String, (String, u8, u32, bool, bool)>;

fn summary(l: &Listing) -> Summary {
    l.entries
        .iter()
        .map(|e| {
            let v = (e.short.clone(), e.case, e.size, e.is_dir, e.has_long_name);
            (e.path.clone(), v)
        })
        .collect()
}

/// Every file below `dir`, by relative path.
fn host_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn fsck_clean(fsck: &Path, img: &Path) {
    let out = run(fsck, &["-n", img.to_str().unwrap()]);
    let report = text(&out);
    let lines: Vec<&str> = report.lines().collect();
    // A clean check prints only the version and the summary line.
    assert_eq!(lines.len(), 2, "fsck.fat reported problems:\n{report}");
    assert!(lines[1].contains(" files, "), "{report}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_has_the_names_and_sizes_mtools_itself_would_write() {
        let Some([mkfs, mcopy]) = tools(["mkfs.msdos", "mcopy"]) else {
            return;
        };
        let s = Scratch::new("names");
        sample_tree(&s.path("src"));
        let ours = build_from(&s.path("src"), None, Format::F1440);
        let reference = s.path("ref.img");
        let ref_str = reference.to_str().unwrap();
        run(&mkfs, &["-C", ref_str, "1440"]);
        let mut args = vec!["-s", "-i", ref_str];
        let entries: Vec<String> = std::fs::read_dir(s.path("src"))
            .unwrap()
            .map(|e| e.unwrap().path().to_string_lossy().into_owned())
            .collect();
        args.extend(entries.iter().map(String::as_str));
        args.push("::");
        run(&mcopy, &args);
        let theirs = std::fs::read(&reference).unwrap();
        assert_eq!(
            summary(&list(&ours).unwrap()),
            summary(&list(&theirs).unwrap())
        );
    }

    #[test]
    fn mcopy_extracts_every_file_byte_for_byte() {
        let Some([mcopy]) = tools(["mcopy"]) else {
            return;
        };
        let s = Scratch::new("extract");
        sample_tree(&s.path("src"));
        let img = s.path("a.img");
        std::fs::write(
            &img,
            build_from(&s.path("src"), Some("DATA"), Format::F1440),
        )
        .unwrap();
        std::fs::create_dir(s.path("out")).unwrap();
        let out_dir = s.path("out");
        run(
            &mcopy,
            &[
                "-s",
                "-n",
                "-i",
                img.to_str().unwrap(),
                "::*",
                out_dir.to_str().unwrap(),
            ],
        );
        assert_eq!(host_files(&out_dir), host_files(&s.path("src")));
        assert!(out_dir.join("Empty Folder").is_dir());
    }

    #[test]
    fn mdir_shows_aliases_case_and_long_names() {
        let Some([mdir]) = tools(["mdir"]) else {
            return;
        };
        let s = Scratch::new("mdir");
        sample_tree(&s.path("src"));
        let img = s.path("a.img");
        std::fs::write(
            &img,
            build_from(&s.path("src"), Some("WINSETUP"), Format::F1440),
        )
        .unwrap();
        let out = text(&run(&mdir, &["-/", "-i", img.to_str().unwrap(), "::"]));
        for expected in [
            "Volume in drive : is WINSETUP",
            "AUTOUN~1 XML       700 2023-11-14  22:13  Autounattend.xml",
            "winnt    sif        40 2023-11-14  22:13 \n",
            "SUBDIR~1     <DIR>     2023-11-14  22:13  Sub Dir",
            "LASTFI~1 DAT      1500 2023-11-14  22:13  Last File With A Long Name.dat",
        ] {
            assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
        }
    }

    #[test]
    fn fsck_fat_finds_nothing_to_fix_in_any_built_image() {
        let Some([fsck]) = tools(["fsck.fat"]) else {
            return;
        };
        let s = Scratch::new("fsck");
        sample_tree(&s.path("src"));
        let images = [
            ImageBuilder::new(Format::F1440).build().unwrap(),
            build_from(&s.path("src"), Some("WINSETUP"), Format::F1440),
            build_from(&s.path("src"), None, Format::F2880),
        ];
        for (i, bytes) in images.iter().enumerate() {
            let img = s.path(&format!("{i}.img"));
            std::fs::write(&img, bytes).unwrap();
            fsck_clean(&fsck, &img);
        }
    }

    #[test]
    fn bpb_fields_equal_those_of_mkfs_msdos() {
        let Some([mkfs]) = tools(["mkfs.msdos"]) else {
            return;
        };
        let s = Scratch::new("bpb");
        for format in [Format::F1440, Format::F2880] {
            let img = s.path(&format!("{}.img", format.kib()));
            let kib = format.kib().to_string();
            run(&mkfs, &["-C", img.to_str().unwrap(), &kib]);
            let theirs = std::fs::read(&img).unwrap();
            let ours = ImageBuilder::new(format).build().unwrap();
            assert_eq!(ours.len(), theirs.len(), "{kib}");
            // Bytes per sector .. total sectors (32-bit), drive number, extended
            // boot signature, label and file-system type; not OEM name or serial.
            assert_eq!(ours[11..37], theirs[11..37], "BPB of {kib}");
            assert_eq!(ours[38], theirs[38], "{kib}");
            assert_eq!(ours[43..62], theirs[43..62], "{kib}");
            assert_eq!(ours[510..512], theirs[510..512], "{kib}");
            // And the empty FAT and root look the same.
            assert_eq!(ours[512..512 * 33], theirs[512..512 * 33], "{kib}");
        }
    }

    /// Floppy 1: the label is in the BPB and in root entry 0; tools agree.
    #[test]
    fn label_is_written_in_bpb_and_first_root_entry_and_tools_agree() {
        let Some([mlabel, blkid]) = tools(["mlabel", "blkid"]) else {
            return;
        };
        let s = Scratch::new("label");
        let mut b = ImageBuilder::new(Format::F1440);
        b.label("WINSETUP")
            .unwrap()
            .add_bytes("WINNT.SIF", b"x".to_vec())
            .unwrap();
        let bytes = b.build().unwrap();
        let root = 19 * 512;
        assert_eq!(&bytes[root..root + 11], b"WINSETUP   ");
        assert_eq!(bytes[root + 11], 0x08);
        assert_eq!(bytes[root + 26..root + 32], [0; 6]); // cluster 0, size 0
        assert_eq!(&bytes[43..54], b"WINSETUP   ");
        let img = s.path("l.img");
        std::fs::write(&img, &bytes).unwrap();
        let img = img.to_str().unwrap();
        assert_eq!(
            text(&run(&mlabel, &["-s", "-i", img, "::"])).trim(),
            "Volume label is WINSETUP"
        );
        assert_eq!(
            text(&run(&blkid, &["-o", "value", "-s", "LABEL", img])).trim(),
            "WINSETUP"
        );

        let bytes = ImageBuilder::new(Format::F1440).build().unwrap();
        assert_eq!(&bytes[43..54], b"NO NAME    ");
        assert_eq!(bytes[root], 0, "no label entry");
        let img = s.path("n.img");
        std::fs::write(&img, &bytes).unwrap();
        let img = img.to_str().unwrap();
        assert_eq!(
            text(&run(&mlabel, &["-s", "-i", img, "::"])).trim(),
            "Volume has no label"
        );
        assert_eq!(
            text(&run(&blkid, &["-o", "value", "-s", "LABEL", img])).trim(),
            ""
        );
    }

    /// Floppy 2: short entries only where 8.3 fits, case bits, aliases.
    #[test]
    fn names_get_short_entries_case_bits_or_long_entries_as_fat_expects() {
        let Some([fsck]) = tools(["fsck.fat"]) else {
            return;
        };
        let mut b = ImageBuilder::new(Format::F1440);
        b.add_bytes("WINNT.SIF", vec![1]).unwrap();
        b.add_bytes("dir/winnt.sif", vec![2]).unwrap();
        b.add_bytes("Autounattend.xml", vec![3]).unwrap();
        let bytes = b.build().unwrap();
        let l = list(&bytes).unwrap();
        let by_path: BTreeMap<_, _> = l.entries.iter().map(|e| (e.path.as_str(), e)).collect();
        let upper = by_path["WINNT.SIF"];
        assert_eq!((upper.case, upper.has_long_name), (0, false));
        let lower = by_path["dir/winnt.sif"];
        assert_eq!((lower.case, lower.has_long_name), (0x18, false));
        let xml = by_path["Autounattend.xml"];
        assert_eq!(
            (xml.short.as_str(), xml.has_long_name),
            ("AUTOUN~1.XML", true)
        );
        // Raw root: entries sorted AUTOUNATTEND.XML (2 long + short), DIR, WINNT.SIF.
        let root = &bytes[19 * 512..20 * 512];
        assert_eq!(
            (root[0], root[11], root[32], root[43]),
            (0x42, 0x0F, 0x01, 0x0F)
        );
        assert_eq!(&root[64..75], b"AUTOUN~1XML");
        let mut sum = 0u8;
        for &c in b"AUTOUN~1XML" {
            sum = ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(c);
        }
        assert_eq!((root[13], root[32 + 13]), (sum, sum));
        assert_eq!(&root[128..139], b"WINNT   SIF");

        let mut clash = ImageBuilder::new(Format::F1440);
        clash.add_bytes("a.txt", vec![]).unwrap();
        let e = clash.add_bytes("A.TXT", vec![]).unwrap_err();
        assert!(
            e.to_string().contains("\"A.TXT\" clashes with \"a.txt\""),
            "{e}"
        );

        let s = Scratch::new("names2");
        let img = s.path("n.img");
        std::fs::write(&img, &bytes).unwrap();
        fsck_clean(&fsck, &img);
    }

    /// Floppy 3: a file filling all free space is fine; one byte more is not.
    #[test]
    fn file_filling_the_free_space_checks_clean_and_one_byte_more_is_refused() {
        let Some([fsck, mcopy]) = tools(["fsck.fat", "mcopy"]) else {
            return;
        };
        let s = Scratch::new("full");
        for format in [Format::F1440, Format::F2880] {
            let g = format.geometry();
            let free = usize::try_from(g.cluster_count()).unwrap() * g.cluster_size();
            let data: Vec<u8> = (0..free).map(|k| (k % 251).to_le_bytes()[0]).collect();
            let mut b = ImageBuilder::new(format);
            b.add_bytes("FULL.BIN", data.clone()).unwrap();
            let img = s.path("full.img");
            std::fs::write(&img, b.build().unwrap()).unwrap();
            fsck_clean(&fsck, &img);
            let out = s.path("FULL.BIN");
            let _ = std::fs::remove_file(&out);
            run(
                &mcopy,
                &[
                    "-n",
                    "-i",
                    img.to_str().unwrap(),
                    "::FULL.BIN",
                    out.to_str().unwrap(),
                ],
            );
            assert_eq!(std::fs::read(&out).unwrap(), data);

            let mut b = ImageBuilder::new(format);
            b.add_bytes("FULL.BIN", vec![0; free + 1]).unwrap();
            let e = b.build().unwrap_err().to_string();
            let over = g.cluster_size();
            let expected = format!(
                "Content too large for a {} KiB floppy by {over} bytes",
                format.kib()
            );
            assert!(e.starts_with(&expected), "{e}");
        }
    }

    #[test]
    fn answer_files_copied_off_the_floppy_parse_back() {
        let Some([mcopy]) = tools(["mcopy"]) else {
            return;
        };
        let answers = floppy::unattend::parse_spec(
            "admin_password = 'pw'\n[cygwin]\ninstaller = 'E:\\setup-x86_64.exe'\npackages = ['openssh']",
        )
        .unwrap();
        let mut b = ImageBuilder::new(Format::F1440);
        for (name, bytes) in floppy::unattend::render(&answers) {
            b.add_bytes(name, bytes).unwrap();
        }
        let s = Scratch::new("answers");
        let img = s.path("a.img");
        std::fs::write(&img, b.build().unwrap()).unwrap();
        let img = img.to_str().unwrap();
        let xml_path = s.path("autounattend.xml");
        run(
            &mcopy,
            &[
                "-n",
                "-i",
                img,
                "::autounattend.xml",
                xml_path.to_str().unwrap(),
            ],
        );
        let xml = std::fs::read_to_string(xml_path).unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert!(doc
            .descendants()
            .any(|n| n.text() == Some("192.168.0.1/24")));
        let sif_path = s.path("winnt.sif");
        run(
            &mcopy,
            &["-n", "-i", img, "::WINNT.SIF", sif_path.to_str().unwrap()],
        );
        let sif = std::fs::read_to_string(sif_path).unwrap();
        assert!(sif.starts_with("[Data]\r\n"), "{sif}");
        assert!(sif.contains("\r\nIPAddress=192.168.0.1\r\n"), "{sif}");
    }

    #[test]
    fn two_builds_from_the_same_host_tree_are_identical() {
        let s = Scratch::new("repro");
        sample_tree(&s.path("src"));
        let one = build_from(&s.path("src"), Some("X"), Format::F1440);
        let two = build_from(&s.path("src"), Some("X"), Format::F1440);
        assert!(one == two, "images differ");
        let later = {
            let mut b = ImageBuilder::new(Format::F1440);
            b.label("X")
                .unwrap()
                .timestamp(1_700_000_002)
                .add_path(&s.path("src"), "")
                .unwrap();
            b.build().unwrap()
        };
        assert!(one != later, "the timestamp must reach the image");
    }

    #[test]
    fn fatfs_reads_back_every_file_and_the_root_label() {
        let s = Scratch::new("fatfs");
        sample_tree(&s.path("src"));
        let bytes = build_from(&s.path("src"), Some("WINSETUP"), Format::F2880);
        let fs =
            fatfs::FileSystem::new(std::io::Cursor::new(bytes), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat12);
        assert_eq!(fs.volume_label(), "WINSETUP");
        assert_eq!(
            fs.read_volume_label_from_root_dir().unwrap().as_deref(),
            Some("WINSETUP")
        );
        let mut found = BTreeMap::new();
        fn walk<T: fatfs::ReadWriteSeek>(
            dir: fatfs::Dir<T>,
            prefix: &str,
            out: &mut BTreeMap<String, Vec<u8>>,
        ) {
            for e in dir.iter() {
                let e = e.unwrap();
                let name = e.file_name();
                if name == "." || name == ".." {
                    continue;
                }
                let path = format!("{prefix}{name}");
                if e.is_dir() {
                    walk(e.to_dir(), &format!("{path}/"), out);
                } else {
                    let mut data = Vec::new();
                    e.to_file().read_to_end(&mut data).unwrap();
                    out.insert(path, data);
                }
            }
        }
        walk(fs.root_dir(), "", &mut found);
        assert_eq!(found, host_files(&s.path("src")));
    }
}
