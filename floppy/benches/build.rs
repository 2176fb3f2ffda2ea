//! In-process build time of an image holding the files of a folder, as the
//! `vmm` pipeline builds it (no process start). Run by `bench/floppy.sh`,
//! which compares it with `mkfs.msdos` + `mcopy`.
//!
//! `FLOPPY_BENCH_SRC=DIR FLOPPY_BENCH_OUT=IMG cargo bench -p floppy --bench build`
//! prints the median microseconds of (a) building the image in memory from
//! DIR and (b) building it and writing it to IMG (temporary file, sync,
//! rename), over `RUNS` runs (default 21).

use std::path::{Path, PathBuf};
use std::time::Instant;

use floppy::{Format, ImageBuilder};

fn median(mut v: Vec<u128>) -> u128 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn build(src: &Path) -> Vec<u8> {
    let mut b = ImageBuilder::new(Format::F1440);
    b.add_path(src, "").expect("add");
    b.build().expect("build")
}

fn main() {
    let Some(src) = std::env::var_os("FLOPPY_BENCH_SRC").map(PathBuf::from) else {
        eprintln!("build bench: set FLOPPY_BENCH_SRC=DIR (bench/floppy.sh does)");
        return;
    };
    let out = std::env::var_os("FLOPPY_BENCH_OUT").map_or_else(
        || std::env::temp_dir().join("floppy-bench.img"),
        PathBuf::from,
    );
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(21);
    let mut in_memory = Vec::with_capacity(runs);
    let mut to_file = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        std::hint::black_box(build(&src));
        in_memory.push(t.elapsed().as_micros());
        let t = Instant::now();
        floppy::write_atomically(&out, &build(&src)).expect("write");
        to_file.push(t.elapsed().as_micros());
    }
    println!(
        "in-process build, in memory: median {} us",
        median(in_memory)
    );
    println!("in-process build, to file:   median {} us", median(to_file));
}
