#!/usr/bin/env bash
# bench/blk.sh: sequential virtio-blk throughput inside the guest kit, vmm
# against QEMU's virtio-blk-pci on the same raw image. In the guest, `dd`
# with O_DIRECT writes then reads SIZE MiB (default 512) in 1 MiB blocks;
# RUNS boots each (default 3), interleaved; prints medians (MB/s, timed
# with the guest's clock) and the ratios vmm/QEMU. Target: ratio >= 1 both ways.
#
# QEMU runs with its defaults for a raw file (cache=writeback, aio=threads),
# which match what vmm does (pwrite/pread through the host page cache). The
# image lives on the (emulated) host's tmpfs.
#
# Runs itself through scripts/with-kvm where this host has no hardware KVM.
# Build first: cargo build --release -p vmm (or set VMM_BIN).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kit="${XDG_CACHE_HOME:-$HOME/.cache}/vmm/guest"
export VMM_BENCH_RUNS=${VMM_BENCH_RUNS:-${RUNS:-3}}
export VMM_BENCH_SIZE=${VMM_BENCH_SIZE:-${SIZE:-512}}
if [ -z "${VMM_BIN:-}" ]; then
    for c in "${CARGO_TARGET_DIR:-$root/target}/release/vmm" "${CARGO_TARGET_DIR:-$root/target}/debug/vmm"; do
        if [ -x "$c" ]; then VMM_BIN=$c; break; fi
    done
fi
[ -x "${VMM_BIN:-}" ] || { echo "blk.sh: no vmm binary; cargo build --release -p vmm or set VMM_BIN" >&2; exit 2; }
for f in "$kit/kernel" "$kit/initrd"; do
    [ -r "$f" ] || { echo "blk.sh: cannot read $f (run vmm guest build)" >&2; exit 2; }
done
export VMM_BIN VMM_KIT=$kit
hardware_kvm() { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }
if [ "${VMM_BENCH_INSIDE:-0}" != 1 ] && ! hardware_kvm; then
    exec env VMM_BENCH_INSIDE=1 "$root/scripts/with-kvm" "$0"
fi

exec python3 - <<'PY'
import os, re, statistics, subprocess, sys, tempfile

runs = int(os.environ["VMM_BENCH_RUNS"])
size = int(os.environ["VMM_BENCH_SIZE"])
vmm = os.environ["VMM_BIN"]
kit = os.environ["VMM_KIT"]
kernel, initrd = f"{kit}/kernel", f"{kit}/initrd"
tmp = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
image = os.path.join(tmp, f"vmm-blk-bench-{os.getpid()}.img")
with open(image, "wb") as f:
    f.truncate((size + 16) << 20)

# Write, then read back, the first SIZE MiB of /dev/vda with O_DIRECT, timed
# by the guest's /proc/uptime (Debian's busybox dd prints no rate).
t = "cut -d' ' -f1 /proc/uptime"
cmd = (f"a=$({t}); dd if=/dev/zero of=/dev/vda bs=1M count={size} oflag=direct 2>/dev/null; "
       f"b=$({t}); echo W:$a:$b; "
       f"a=$({t}); dd if=/dev/vda of=/dev/null bs=1M count={size} iflag=direct 2>/dev/null; "
       f"b=$({t}); echo R:$a:$b")
cmdline = f'console=ttyS0 panic=-1 quiet run="{cmd}"'
qemu_cmd = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-M", "pc", "-m", "256M",
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
            "-drive", f"file={image},if=none,id=d0,format=raw",
            "-device", "virtio-blk-pci,drive=d0"]
vmm_cmd = [vmm, "boot", "--kernel", kernel, "--initrd", initrd, "--mem", "256M",
           "--cmdline", cmdline, "--disk", image]

def mbps(line):
    # "W:START:END", guest uptime in seconds before and after dd.
    m = re.match(r"[WR]:([0-9.]+):([0-9.]+)", line.strip())
    if not m or float(m.group(2)) <= float(m.group(1)):
        sys.exit(f"blk.sh: unexpected timing line {line!r}")
    return size * 1048576 / (float(m.group(2)) - float(m.group(1))) / 1e6

def run(cmd):
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=900)
    out = p.stdout.decode(errors="replace")
    w = [l for l in out.splitlines() if l.startswith("W:")]
    r = [l for l in out.splitlines() if l.startswith("R:")]
    if not w or not r:
        sys.exit(f"blk.sh: {cmd[0]} gave no dd results: {out[-800:]} {p.stderr.decode(errors='replace')[-400:]}")
    return mbps(w[0]), mbps(r[0])

res = {"qemu": ([], []), "vmm": ([], [])}
try:
    for i in range(runs):
        for name, cmd in (("qemu", qemu_cmd), ("vmm", vmm_cmd)):
            w, r = run(cmd)
            res[name][0].append(w); res[name][1].append(r)
            print(f"run {i + 1} {name}: write {w:.1f} MB/s, read {r:.1f} MB/s", flush=True)
finally:
    os.unlink(image)

med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in res.items()}
(qw, qr), (vw, vr) = med["qemu"], med["vmm"]
print(f"{size} MiB O_DIRECT write median: qemu {qw:.1f} MB/s, vmm {vw:.1f} MB/s, ratio vmm/qemu {vw / qw:.2f} (target >= 1)")
print(f"{size} MiB O_DIRECT read  median: qemu {qr:.1f} MB/s, vmm {vr:.1f} MB/s, ratio vmm/qemu {vr / qr:.2f} (target >= 1)")
PY
