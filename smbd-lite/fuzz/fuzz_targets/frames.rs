//! Feeds arbitrary frames to a connection that has negotiated, logged in
//! and connected to a read-write share. The input is split into frames at
//! each `\n--\n` separator so one input can drive several requests.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/mod.rs"]
#[allow(dead_code, unused_imports, clippy::all)]
mod common;

fn shares() -> &'static common::Shares {
    static SHARES: OnceLock<common::Shares> = OnceLock::new();
    SHARES.get_or_init(common::Shares::new)
}

fuzz_target!(|data: &[u8]| {
    let shares = shares();
    let mut c = common::Client::new(shares.config());
    c.tree_connect("xchg");
    let sep = b"\n--\n";
    let mut rest = data;
    for _ in 0..16 {
        let (frame, next) = match rest.windows(sep.len()).position(|w| w == sep) {
            Some(i) => (&rest[..i], Some(&rest[i + sep.len()..])),
            None => (rest, None),
        };
        if c.raw(frame).is_err() {
            break;
        }
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
});
