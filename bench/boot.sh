#!/usr/bin/env bash
# bench/boot.sh [KERNEL INITRD]: boot-to-ready time of `vmm boot` against
# QEMU (the reference line in KVM-HOST.md) on the same kernel and initrd,
# interleaved, RUNS times each (default 5), printing medians and the ratio;
# and vmm's peak RSS minus the guest memory it touched (from `--stats`).
# Targets: vmm at most half of QEMU's time; overhead at most 8 MiB.
#
# Defaults to the guest kit (`vmm guest build`). Runs itself through
# scripts/with-kvm where this host has no hardware KVM. Build first:
#   cargo build --release -p vmm   (or set VMM_BIN)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kit="${XDG_CACHE_HOME:-$HOME/.cache}/vmm/guest"
kernel=${1:-$kit/kernel}
initrd=${2:-$kit/initrd}
export VMM_BENCH_RUNS=${VMM_BENCH_RUNS:-${RUNS:-5}}
if [ -z "${VMM_BIN:-}" ]; then
    for c in "${CARGO_TARGET_DIR:-$root/target}/release/vmm" "${CARGO_TARGET_DIR:-$root/target}/debug/vmm"; do
        if [ -x "$c" ]; then VMM_BIN=$c; break; fi
    done
fi
[ -x "${VMM_BIN:-}" ] || { echo "boot.sh: no vmm binary; cargo build --release -p vmm or set VMM_BIN" >&2; exit 2; }
for f in "$kernel" "$initrd"; do
    [ -r "$f" ] || { echo "boot.sh: cannot read $f (run vmm guest build, or pass KERNEL INITRD)" >&2; exit 2; }
done
export VMM_BIN
hardware_kvm() { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }
if [ "${VMM_BENCH_INSIDE:-0}" != 1 ] && ! hardware_kvm; then
    exec env VMM_BENCH_INSIDE=1 "$root/scripts/with-kvm" "$0" "$kernel" "$initrd"
fi

exec python3 - "$kernel" "$initrd" <<'PY'
import os, re, statistics, subprocess, sys, time

kernel, initrd = sys.argv[1], sys.argv[2]
runs = int(os.environ["VMM_BENCH_RUNS"])
vmm = os.environ["VMM_BIN"]
marker = b"vmm-guest: ready"
# Same command line for both; run=true makes the kit power off after ready.
cmdline = "console=ttyS0 panic=-1 quiet run=true"
qemu_cmd = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-M", "pc", "-m", "256M",
            "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
            "-kernel", kernel, "-initrd", initrd, "-append", cmdline]
vmm_cmd = [vmm, "boot", "--kernel", kernel, "--initrd", initrd, "--mem", "256M",
           "--cmdline", cmdline, "--stats"]

def boot(cmd, wait_exit):
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    ready = None
    for line in p.stdout:
        if marker in line:
            ready = time.monotonic() - t0
            break
    if not wait_exit:
        p.kill()
    try:
        _, err = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    if ready is None:
        sys.exit(f"boot.sh: {cmd[0]} never printed the ready marker: {err.decode(errors='replace')[-500:]}")
    return ready, err.decode(errors="replace")

q_times, v_times, overheads, peaks = [], [], [], []
for i in range(runs):
    q, _ = boot(qemu_cmd, wait_exit=False)
    v, err = boot(vmm_cmd, wait_exit=True)
    m = re.search(r"peak RSS (\d+) KiB, guest memory touched (\d+) KiB, VMM overhead (\d+) KiB", err)
    if not m:
        sys.exit(f"boot.sh: no stats from vmm: {err[-500:]}")
    q_times.append(q); v_times.append(v)
    peaks.append(int(m.group(1))); overheads.append(int(m.group(3)))
    print(f"run {i + 1}: qemu {q:.3f} s, vmm {v:.3f} s, vmm peak RSS {m.group(1)} KiB, "
          f"guest touched {m.group(2)} KiB, overhead {m.group(3)} KiB", flush=True)

qm, vm = statistics.median(q_times), statistics.median(v_times)
om = statistics.median(overheads)
print(f"boot-to-ready median: qemu {qm:.3f} s, vmm {vm:.3f} s, ratio vmm/qemu {vm / qm:.3f} (target <= 0.5)")
print(f"vmm peak RSS minus touched guest memory: median {om / 1024:.2f} MiB, max {max(overheads) / 1024:.2f} MiB (target <= 8 MiB)")
PY
