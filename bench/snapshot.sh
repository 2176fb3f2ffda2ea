#!/usr/bin/env bash
# bench/snapshot.sh [KERNEL INITRD]: snapshot and revive against QEMU's
# migration to and from a file, on the same kernel and initrd, for 256 MiB
# and 1 GiB guests, in the same KVM test host and run:
#   vmm:  boot --snapshot-to DIR --snapshot-on TEXT, then `vmm revive DIR`
#   QEMU: HMP `migrate "exec:cat > F"` (and `exec:gzip -c > F.gz`) of the
#         running guest, then `-incoming "exec:cat F"` (and `gzip -dc`).
# Figures: snapshot time and size (apparent and allocated), revive time
# from process start to vCPUs running (vmm: its --stats line; QEMU: HMP
# `info status` says running) and to the guest's next console line;
# medians of RUNS revives (default 5), and the ratios.
# Targets (issue 8): revive >= 50x faster than QEMU's -incoming, >= 100x
# than the gzip'd one; snapshot >= 10x faster than migrate; revive nearly
# flat from 256 MiB to 1 GiB.
#
# Files go to /dev/shm (the test host's own tmpfs). Runs itself through
# scripts/with-kvm where this host has no hardware KVM. Build first:
#   cargo build --release -p vmm   (or set VMM_BIN)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kit="${XDG_CACHE_HOME:-$HOME/.cache}/vmm/guest"
kernel=${1:-$kit/kernel}
initrd=${2:-$kit/initrd}
export VMM_BENCH_RUNS=${VMM_BENCH_RUNS:-${RUNS:-5}}
export VMM_BENCH_SIZES=${VMM_BENCH_SIZES:-256M 1G}
if [ -z "${VMM_BIN:-}" ]; then
    for c in "${CARGO_TARGET_DIR:-$root/target}/release/vmm" "${CARGO_TARGET_DIR:-$root/target}/debug/vmm"; do
        if [ -x "$c" ]; then VMM_BIN=$c; break; fi
    done
fi
[ -x "${VMM_BIN:-}" ] || { echo "snapshot.sh: no vmm binary; cargo build --release -p vmm or set VMM_BIN" >&2; exit 2; }
for f in "$kernel" "$initrd"; do
    [ -r "$f" ] || { echo "snapshot.sh: cannot read $f (run vmm guest build, or pass KERNEL INITRD)" >&2; exit 2; }
done
export VMM_BIN
hardware_kvm() { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }
if [ "${VMM_BENCH_INSIDE:-0}" != 1 ] && ! hardware_kvm; then
    exec env VMM_BENCH_INSIDE=1 "$root/scripts/with-kvm" "$0" "$kernel" "$initrd"
fi

exec python3 - "$kernel" "$initrd" <<'PY'
import os, re, shutil, socket, statistics, subprocess, sys, time

kernel, initrd = sys.argv[1], sys.argv[2]
runs = int(os.environ["VMM_BENCH_RUNS"])
sizes = os.environ["VMM_BENCH_SIZES"].split()
vmm = os.environ["VMM_BIN"]
work = "/dev/shm/vmm-bench-snapshot"
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
# A guest printing a line every 50 ms; the snapshot is taken at n=20. The
# "console line" figure is the first newline after the revive: for vmm the
# end of the line the snapshot was taken on; for QEMU, whose migration
# stops the guest anywhere, up to one 50 ms sleep later.
counter = "run=\"i=0; while true; do echo n=$i; i=$((i+1)); sleep 0.05; done\""
cmdline = f"console=ttyS0 panic=-1 quiet i8042.noaux {counter}"
trigger = b"n=20"
BOOT_TIMEOUT = 900

def du(path):
    out = subprocess.run(["du", "-sk", path], capture_output=True, text=True).stdout
    apparent = subprocess.run(["du", "-sk", "--apparent-size", path], capture_output=True, text=True).stdout
    return int(out.split()[0]) / 1024, int(apparent.split()[0]) / 1024

def read_until(stream, needle, deadline):
    buf = b""
    while time.monotonic() < deadline:
        b = stream.read1(4096) if hasattr(stream, "read1") else stream.read(1)
        if not b:
            return None
        buf += b
        if needle in buf:
            return time.monotonic()
    return None

def vmm_snapshot(mem):
    d = f"{work}/vmm-{mem}"
    p = subprocess.Popen([vmm, "boot", "--kernel", kernel, "--initrd", initrd, "--mem", mem,
                          "--cmdline", cmdline, "--snapshot-to", d, "--snapshot-on", "n=20"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=BOOT_TIMEOUT)
    err = err.decode(errors="replace")
    m = re.search(r"saved in (\d+) ms", err)
    if p.returncode != 0 or not m:
        sys.exit(f"snapshot.sh: vmm snapshot failed: {err[-800:]}")
    alloc, apparent = du(d)
    return d, int(m.group(1)) / 1000, alloc, apparent

def vmm_revive(d):
    t0 = time.monotonic()
    p = subprocess.Popen([vmm, "revive", "--stats", d], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    running = None
    line = p.stderr.readline()
    if b"vCPUs running" in line:
        running = time.monotonic() - t0
    marker = read_until(p.stdout, b"\n", time.monotonic() + 120)
    p.kill(); p.wait()
    if running is None or marker is None:
        sys.exit(f"snapshot.sh: vmm revive failed: {line!r}")
    return running, marker - t0

class Hmp:
    def __init__(self, path):
        deadline = time.monotonic() + 60
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        self.read_prompt()

    def read_prompt(self):
        buf = b""
        while not buf.endswith(b"(qemu) "):
            b = self.s.recv(65536)
            if not b:
                break
            buf += b
        return buf.decode(errors="replace")

    def cmd(self, c):
        self.s.sendall(c.encode() + b"\n")
        return self.read_prompt()

def qemu_cmd(mem, extra):
    return ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-M", "pc", "-m", mem,
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-kernel", kernel, "-initrd", initrd, "-append", cmdline] + extra

def qemu_snapshot(mem, gz):
    sock = f"{work}/qemu-{mem}-{gz}.sock"
    f = f"{work}/qemu-{mem}.mig" + (".gz" if gz else "")
    p = subprocess.Popen(qemu_cmd(mem, ["-monitor", f"unix:{sock},server,nowait"]),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    if read_until(p.stdout, trigger, time.monotonic() + BOOT_TIMEOUT) is None:
        p.kill(); sys.exit("snapshot.sh: qemu never printed the trigger")
    hmp = Hmp(sock)
    target = f"gzip -c > {f}" if gz else f"cat > {f}"
    t0 = time.monotonic()
    hmp.cmd(f'migrate "exec:{target}"')
    while "Migration status: completed" not in hmp.cmd("info migrate"):
        time.sleep(0.002)
    took = time.monotonic() - t0
    p.kill(); p.wait()
    alloc, apparent = du(f)
    return f, took, alloc, apparent

def qemu_revive(mem, f, gz):
    sock = f"{work}/qemu-in.sock"
    src = f"gzip -dc {f}" if gz else f"cat {f}"
    t0 = time.monotonic()
    p = subprocess.Popen(qemu_cmd(mem, ["-monitor", f"unix:{sock},server,nowait",
                                        "-incoming", f"exec:{src}"]),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    hmp = Hmp(sock)
    while "running" not in hmp.cmd("info status"):
        time.sleep(0.001)
    running = time.monotonic() - t0
    marker = read_until(p.stdout, b"\n", time.monotonic() + 120)
    p.kill(); p.wait()
    if marker is None:
        sys.exit("snapshot.sh: revived qemu printed nothing")
    return running, marker - t0

med = statistics.median
for mem in sizes:
    d, v_snap, v_alloc, v_app = vmm_snapshot(mem)
    print(f"[{mem}] vmm snapshot: {v_snap * 1000:.1f} ms, {v_alloc:.1f} MiB on disk ({v_app:.0f} MiB apparent)", flush=True)
    qf, q_snap, q_alloc, q_app = qemu_snapshot(mem, False)
    print(f"[{mem}] qemu migrate exec:cat: {q_snap * 1000:.1f} ms, {q_alloc:.1f} MiB", flush=True)
    qgz, qz_snap, qz_alloc, _ = qemu_snapshot(mem, True)
    print(f"[{mem}] qemu migrate exec:gzip: {qz_snap * 1000:.1f} ms, {qz_alloc:.1f} MiB", flush=True)
    v_run, v_mark, q_run, q_mark, z_run, z_mark = [], [], [], [], [], []
    for i in range(runs):
        r, m = vmm_revive(d); v_run.append(r); v_mark.append(m)
        r, m = qemu_revive(mem, qf, False); q_run.append(r); q_mark.append(m)
        r, m = qemu_revive(mem, qgz, True); z_run.append(r); z_mark.append(m)
        print(f"[{mem}] run {i + 1}: revive to running / to console line: vmm {v_run[-1] * 1000:.1f} / {v_mark[-1] * 1000:.1f} ms, "
              f"qemu {q_run[-1] * 1000:.1f} / {q_mark[-1] * 1000:.1f} ms, qemu gzip {z_run[-1] * 1000:.1f} / {z_mark[-1] * 1000:.1f} ms", flush=True)
    print(f"[{mem}] SUMMARY snapshot: vmm {v_snap * 1000:.1f} ms / {v_alloc:.1f} MiB, qemu {q_snap * 1000:.1f} ms / {q_alloc:.1f} MiB "
          f"(x{q_snap / v_snap:.1f}), qemu gzip {qz_snap * 1000:.1f} ms / {qz_alloc:.1f} MiB (x{qz_snap / v_snap:.1f})")
    print(f"[{mem}] SUMMARY revive to running (median): vmm {med(v_run) * 1000:.1f} ms, qemu {med(q_run) * 1000:.1f} ms "
          f"(x{med(q_run) / med(v_run):.1f}), qemu gzip {med(z_run) * 1000:.1f} ms (x{med(z_run) / med(v_run):.1f})")
    print(f"[{mem}] SUMMARY revive to console line (median): vmm {med(v_mark) * 1000:.1f} ms, qemu {med(q_mark) * 1000:.1f} ms "
          f"(x{med(q_mark) / med(v_mark):.1f}), qemu gzip {med(z_mark) * 1000:.1f} ms (x{med(z_mark) / med(v_mark):.1f})", flush=True)
shutil.rmtree(work, ignore_errors=True)
PY
