#!/usr/bin/env bash
# Benchmark (not a test): build a 1.44 MB floppy image holding 50 files
# (about 1 MB) with vmm, against `mkfs.msdos -C` + one `mcopy` of the same
# files. Target: vmm >= 10x faster. Prints medians (microseconds, wall time,
# RUNS runs each, default 21) and ratios for three ways of building:
#   - `vmm floppy build` as a process (start-up, write, fsync, rename);
#   - in-process (floppy/benches/build.rs), image written to a file;
#   - in-process, image kept in memory, as the pipeline hands it to the VM.
#
#   bench/floppy.sh            # builds vmm in release first
#   RUNS=51 bench/floppy.sh
set -euo pipefail

runs=${RUNS:-21}
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
export PATH="$PATH:/usr/sbin:/sbin"
export MTOOLS_SKIP_CHECK=1
for tool in mkfs.msdos mcopy mdir; do
    command -v "$tool" >/dev/null || { echo "floppy.sh: $tool not installed (apt-get install dosfstools mtools)" >&2; exit 1; }
done

cargo build --release --quiet -p vmm --bin vmm --manifest-path "$root/Cargo.toml"
cargo bench --no-run --quiet -p floppy --bench build --manifest-path "$root/Cargo.toml"
vmm="$target/release/vmm"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
# 50 files, 100 B to ~40 KB (about 1 MB in all), half with long names.
for i in $(seq 1 50); do
    size=$(( (i * 7919) % 40000 + 100 ))
    if (( i % 2 )); then name="FILE$i.TXT"; else name="Long file name number $i.dat"; fi
    head -c "$size" /dev/urandom > "$work/src/$name"
done

now_us() { echo $(( $(date +%s%N) / 1000 )); }

run_vmm() {
    rm -f "$work/v.img"
    "$vmm" floppy build --out "$work/v.img" --add "$work/src=" > /dev/null
}

run_mtools() {
    rm -f "$work/m.img"
    mkfs.msdos -C "$work/m.img" 1440 > /dev/null
    mcopy -i "$work/m.img" "$work"/src/* ::
}

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

: > "$work/t.vmm"
: > "$work/t.mtools"
for _ in $(seq 1 "$runs"); do
    t0=$(now_us); run_vmm; t1=$(now_us); run_mtools; t2=$(now_us)
    echo $(( t1 - t0 )) >> "$work/t.vmm"
    echo $(( t2 - t1 )) >> "$work/t.mtools"
done

# Both images must hold the same files.
list() { mdir -b -/ -i "$1" :: | sort; }
if ! diff <(list "$work/v.img") <(list "$work/m.img") > /dev/null; then
    echo "floppy.sh: the two images list differently" >&2
    exit 1
fi

in_process=$(FLOPPY_BENCH_SRC="$work/src" FLOPPY_BENCH_OUT="$work/b.img" RUNS="$runs" \
    cargo bench --quiet -p floppy --bench build --manifest-path "$root/Cargo.toml")
mem=$(awk '/in memory/ { print $(NF - 1) }' <<< "$in_process")
file=$(awk '/to file/ { print $(NF - 1) }' <<< "$in_process")

v=$(median < "$work/t.vmm")
m=$(median < "$work/t.mtools")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }
echo "files: 50 ($(du -sb "$work/src" | cut -f1) bytes), runs: $runs, load: $(cut -d' ' -f1 /proc/loadavg)"
echo "mkfs.msdos + mcopy (processes):   median ${m} us"
echo "vmm floppy build (process):       median ${v} us   ratio $(ratio "$m" "$v")"
echo "vmm in-process, written to file:  median ${file} us   ratio $(ratio "$m" "$file")"
echo "vmm in-process, in memory:        median ${mem} us   ratio $(ratio "$m" "$mem")"
echo "target: ratio >= 10x"
