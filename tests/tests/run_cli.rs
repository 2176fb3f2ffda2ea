//! `vmm bootstrap` and `vmm run` refuse bad input with one line on stderr
//! and a non-zero status, before any guest starts, and leave nothing
//! behind. No KVM needed.

// Integration tests: the whole file is test code.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};
use std::process::Command;

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmm-run-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs vmm with `args` (and a private data/cache home under `home`) and
/// checks that it fails with `status` and one line holding every `wanted`.
fn refuses(home: &Path, args: &[&str], status: i32, wanted: &[&str]) {
    let out = Command::new(tests::vmm_bin())
        .args(args)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CACHE_HOME", home.join("cache"))
        .output()
        .expect("run vmm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(status), "{args:?}: {stderr}");
    if status == 1 {
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?} printed {stderr:?}");
        assert!(lines[0].starts_with("vmm: "), "{stderr}");
    }
    for w in wanted {
        assert!(stderr.contains(w), "{args:?}: {stderr:?} lacks {w:?}");
    }
}

#[test]
fn run_without_a_base_names_bootstrap() {
    let s = Scratch::new("nobase");
    refuses(
        &s.0,
        &["run", "--", "true"],
        1,
        &["No base in", "vmm bootstrap"],
    );
    let missing = s.path("missing");
    refuses(
        &s.0,
        &["run", "--base", missing.to_str().unwrap(), "--", "true"],
        1,
        &["No base in", "missing"],
    );
}

#[test]
fn run_needs_a_command_and_a_valid_timeout() {
    let s = Scratch::new("syntax");
    refuses(&s.0, &["run"], 2, &["CMD"]);
    refuses(
        &s.0,
        &["run", "--timeout", "soon", "--", "true"],
        2,
        &["not a duration"],
    );
}

#[test]
fn run_refuses_a_damaged_base() {
    let s = Scratch::new("damaged");
    let base = s.path("base");
    std::fs::create_dir_all(base.join("snapshot")).unwrap();
    std::fs::write(
        base.join("base.toml"),
        "format = 1\nssh_user = \"root\"\nssh_port = 22\ndisks = [\"../../etc/passwd\"]\n\
         [shares]\nxchg = \"/tmp/xchg\"\nstore = \"/nix/store\"\n",
    )
    .unwrap();
    let b = base.to_str().unwrap();
    refuses(&s.0, &["run", "--base", b, "--", "true"], 1, &["disk name"]);
    std::fs::write(base.join("base.toml"), "format = 7\n").unwrap();
    refuses(&s.0, &["run", "--base", b, "--", "true"], 1, &["base.toml"]);
    std::fs::write(
        base.join("base.toml"),
        "format = 1\nssh_user = \"root\"\nssh_port = 22\ndisks = []\n\
         [shares]\nxchg = \"/tmp/xchg\"\nstore = \"/nix/store\"\n",
    )
    .unwrap();
    std::fs::write(base.join("key"), "not a key").unwrap();
    refuses(&s.0, &["run", "--base", b, "--", "true"], 1, &["SSH key"]);
}

#[test]
fn bootstrap_refuses_bad_specs_and_an_existing_base_and_writes_nothing() {
    let s = Scratch::new("spec");
    let out = s.path("base");
    let o = out.to_str().unwrap();
    for (spec, wanted) in [
        ("[guest]\nmemory = \"lots\"\n", "guest.memory"),
        ("colour = 1\n", "unknown field"),
        ("[[disk]]\nsize = \"1G\"\nimage = \"x\"\n", "exactly one"),
        ("[ssh]\nwait = \"forever\"\n", "ssh.wait"),
        ("[guest]\nkernel = \"nope\"\n", "kernel"),
    ] {
        let spec_path = s.path("spec.toml");
        std::fs::write(&spec_path, spec).unwrap();
        refuses(
            &s.0,
            &[
                "bootstrap",
                "--spec",
                spec_path.to_str().unwrap(),
                "--out",
                o,
            ],
            1,
            &[wanted],
        );
        assert_eq!(s.names(), ["spec.toml"], "{spec}");
    }
    let missing = s.path("missing.toml");
    refuses(
        &s.0,
        &["bootstrap", "--spec", missing.to_str().unwrap(), "--out", o],
        1,
        &["Cannot read spec"],
    );
    std::fs::create_dir_all(&out).unwrap();
    refuses(&s.0, &["bootstrap", "--out", o], 1, &["already exists"]);
}

#[test]
fn bootstrap_without_a_kit_says_how_to_build_one() {
    let s = Scratch::new("nokit");
    let out = s.path("base");
    refuses(
        &s.0,
        &["bootstrap", "--out", out.to_str().unwrap()],
        1,
        &["No guest kit", "vmm guest build"],
    );
    assert!(!out.exists());
}
