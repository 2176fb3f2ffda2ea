#!/usr/bin/env bash
# bench/netswitch-guests.sh: TCP throughput of kit guests on netswitch,
# against the old way, two QEMU guests on Debian's vde_switch, in the same
# KVM test host and run. Three measures, with busybox tools in the guests,
# timed with the sending guest's /proc/uptime (Debian's busybox prints no rate):
#
#   guest-to-guest: receiver 192.168.0.1 runs `nc -l -p 5000 >/dev/null`,
#     sender 192.168.0.3 runs `dd if=/dev/zero bs=64k count=N | nc 192.168.0.1 5000`;
#     vmm: both guests in one process on one netswitch switch
#     (vmm/examples/net_bench.rs); QEMU: `-netdev vde` on one vde_switch.
#   guest-to-endpoint (vmm only): the same sender to a sink on the host
#     endpoint 192.168.0.2, which counts the bytes.
#   endpoint-to-guest (vmm only): the guest fetches N MiB of zeros from the
#     endpoint with `nc 192.168.0.2 5001 </dev/null >/dev/null`, timed by the guest.
#
# SIZE MiB per transfer (default 64; the nested KVM test host manages well under
# 1 MB/s, use SIZE=16 there), RUNS rounds (default 3), interleaved;
# prints medians (MB/s) and the ratio netswitch/vde_switch (target >= 2).
# Each guest: 1 vCPU, 256 MiB, virtio-net. Runs itself through
# scripts/with-kvm where this host has no hardware KVM.
# Build first: cargo build --release -p vmm --example net_bench (or set
# VMM_NET_BENCH_BIN). Needs qemu-system-x86 and vde2.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kit="${XDG_CACHE_HOME:-$HOME/.cache}/vmm/guest"
export VMM_BENCH_RUNS=${VMM_BENCH_RUNS:-${RUNS:-3}}
export VMM_BENCH_SIZE=${VMM_BENCH_SIZE:-${SIZE:-64}}
if [ -z "${VMM_NET_BENCH_BIN:-}" ]; then
    c="${CARGO_TARGET_DIR:-$root/target}/release/examples/net_bench"
    [ -x "$c" ] && VMM_NET_BENCH_BIN=$c
fi
[ -x "${VMM_NET_BENCH_BIN:-}" ] || {
    echo "netswitch-guests.sh: no net_bench; cargo build --release -p vmm --example net_bench or set VMM_NET_BENCH_BIN" >&2
    exit 2
}
for f in "$kit/kernel" "$kit/initrd"; do
    [ -r "$f" ] || { echo "netswitch-guests.sh: cannot read $f (run vmm guest build)" >&2; exit 2; }
done
for tool in qemu-system-x86_64 vde_switch; do
    command -v "$tool" >/dev/null || { echo "netswitch-guests.sh: no $tool (apt-get install qemu-system-x86 vde2)" >&2; exit 2; }
done
export VMM_NET_BENCH_BIN VMM_KIT=$kit
hardware_kvm() { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }
if [ "${VMM_BENCH_INSIDE:-0}" != 1 ] && ! hardware_kvm; then
    exec env VMM_BENCH_INSIDE=1 "$root/scripts/with-kvm" "$0"
fi

exec python3 - <<'PY'
import os, re, shutil, statistics, subprocess, sys, tempfile, threading

runs = int(os.environ["VMM_BENCH_RUNS"])
size = int(os.environ["VMM_BENCH_SIZE"])
harness = os.environ["VMM_NET_BENCH_BIN"]
kit = os.environ["VMM_KIT"]
kernel, initrd = f"{kit}/kernel", f"{kit}/initrd"
# vde_switch's sockets on the host's own tmpfs (not a 9p share).
tmp = tempfile.mkdtemp(prefix="netbench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
procs = []

def cleanup():
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    shutil.rmtree(tmp, ignore_errors=True)

T = "cut -d' ' -f1 /proc/uptime"
RX = "cat /sys/class/net/eth0/statistics/rx_bytes"
count = size * 16  # 64 KiB blocks

def up(addr):
    return f"ip link set lo up; ip addr add {addr}/24 dev eth0; ip link set eth0 up"

def wait_ping(addr):
    return f"i=0; until ping -c 1 -W 1 {addr} >/dev/null; do i=$((i+1)); [ $i -lt 120 ] || exit 1; done"

def sender(addr, to, port):
    # Retries while the receiver is not listening yet; times the last try.
    return (f"{up(addr)}; {wait_ping(to)}; i=0; while :; do a=$({T}); "
            f"dd if=/dev/zero bs=64k count={count} 2>/dev/null | nc {to} {port} && break; "
            f"i=$((i+1)); [ $i -lt 50 ] || exit 1; sleep 0.2; done; b=$({T}); echo NB-T:$a:$b")

receiver = f"{up('192.168.0.1')}; echo NB-LISTEN; nc -l -p 5000 >/dev/null; echo NB-RX:$({RX})"
fetcher = (f"{up('192.168.0.1')}; {wait_ping('192.168.0.2')}; r=$({RX}); a=$({T}); "
           f"nc 192.168.0.2 5001 </dev/null >/dev/null; b=$({T}); echo NB-T:$a:$b; echo NB-RX:$(($({RX})-r))")

def cmdline(cmd):
    return f'console=ttyS0 panic=-1 quiet i8042.noaux run="{cmd}"'

def mbps(lines, what):
    t = [l for l in lines if "NB-T:" in l]
    m = re.search(r"NB-T:([0-9.]+):([0-9.]+)", t[0]) if t else None
    if not m or float(m.group(2)) <= float(m.group(1)):
        sys.exit(f"netswitch-guests.sh: {what}: no timing line:\n" + "\n".join(lines[-40:]))
    return size * 1048576 / (float(m.group(2)) - float(m.group(1))) / 1e6

def rx_bytes(lines, what):
    r = [l for l in lines if "NB-RX:" in l]
    n = int(r[0].split("NB-RX:")[1].split()[0]) if r else 0
    if n < size * 1048576:
        sys.exit(f"netswitch-guests.sh: {what}: receiver got {n} bytes, fewer than {size} MiB:\n" + "\n".join(lines[-40:]))

def run_harness(what, args):
    p = subprocess.run([harness] + args, stdin=subprocess.DEVNULL, capture_output=True, timeout=1200)
    lines = p.stdout.decode(errors="replace").splitlines()
    if p.returncode != 0:
        sys.exit(f"netswitch-guests.sh: {what}: net_bench failed ({p.returncode}): "
                 + "\n".join(lines[-40:]) + p.stderr.decode(errors="replace")[-800:])
    return lines

def vmm_g2g():
    lines = run_harness("vmm guest-to-guest", ["--after", "NB-LISTEN", cmdline(receiver),
                                               cmdline(sender("192.168.0.3", "192.168.0.1", 5000))])
    rx_bytes([l for l in lines if l.startswith("g1|")], "vmm guest-to-guest")
    return mbps([l for l in lines if l.startswith("g2|")], "vmm guest-to-guest")

def vmm_to_endpoint():
    lines = run_harness("guest-to-endpoint", ["--sink", "5000",
                                              cmdline(sender("192.168.0.1", "192.168.0.2", 5000))])
    sink = [l for l in lines if l.startswith("sink: ")]
    if not sink or sink[-1] != f"sink: {size * 1048576} bytes":
        sys.exit(f"netswitch-guests.sh: guest-to-endpoint: sink saw {sink}")
    return mbps(lines, "guest-to-endpoint")

def vmm_from_endpoint():
    lines = run_harness("endpoint-to-guest", ["--source", f"5001={size}", cmdline(fetcher)])
    rx_bytes(lines, "endpoint-to-guest")
    return mbps(lines, "endpoint-to-guest")

def qemu(cmd, mac, sock):
    return subprocess.Popen(
        ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-M", "pc", "-m", "256M", "-smp", "1",
         "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
         "-kernel", kernel, "-initrd", initrd, "-append", cmdline(cmd),
         "-netdev", f"vde,id=n0,sock={sock}", "-device", f"virtio-net-pci,netdev=n0,mac={mac}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

def collect(p, lines, seen=None, marker=None):
    for raw in p.stdout:
        line = raw.decode(errors="replace").rstrip()
        lines.append(line)
        if marker and marker in line:
            seen.set()

def qemu_g2g():
    sock = os.path.join(tmp, "vde")
    sw = subprocess.Popen(["vde_switch", "-s", sock], stdin=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(sw)
    try:
        for _ in range(100):
            if os.path.exists(os.path.join(sock, "ctl")):
                break
            threading.Event().wait(0.1)
        rx_lines, tx_lines, listening = [], [], threading.Event()
        rx = qemu(receiver, "52:54:00:00:00:0a", sock)
        procs.append(rx)
        t_rx = threading.Thread(target=collect, args=(rx, rx_lines, listening, "NB-LISTEN"))
        t_rx.start()
        if not listening.wait(600):
            sys.exit("netswitch-guests.sh: QEMU receiver never listened:\n" + "\n".join(rx_lines[-40:]))
        tx = qemu(sender("192.168.0.3", "192.168.0.1", 5000), "52:54:00:00:00:0b", sock)
        procs.append(tx)
        t_tx = threading.Thread(target=collect, args=(tx, tx_lines))
        t_tx.start()
        for p in (tx, rx):
            p.wait(timeout=1200)
        t_rx.join(); t_tx.join()
        rx_bytes(rx_lines, "QEMU guest-to-guest")
        return mbps(tx_lines, "QEMU guest-to-guest")
    finally:
        sw.kill()
        sw.wait()
        shutil.rmtree(sock, ignore_errors=True)

def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])

res = {"qemu-vde": [], "vmm-netswitch": [], "guest->endpoint": [], "endpoint->guest": []}
print(f"{size} MiB per transfer, {runs} rounds; load of the KVM test host {loadavg()}", flush=True)
try:
    for i in range(runs):
        for name, f in (("qemu-vde", qemu_g2g), ("vmm-netswitch", vmm_g2g),
                        ("guest->endpoint", vmm_to_endpoint), ("endpoint->guest", vmm_from_endpoint)):
            v = f()
            res[name].append(v)
            print(f"run {i + 1} {name}: {v:.2f} MB/s", flush=True)
finally:
    cleanup()

med = {k: statistics.median(v) for k, v in res.items()}
print(f"guest-to-guest TCP median: QEMU+vde_switch {med['qemu-vde']:.2f} MB/s, "
      f"vmm+netswitch {med['vmm-netswitch']:.2f} MB/s, "
      f"ratio netswitch/vde_switch {med['vmm-netswitch'] / med['qemu-vde']:.2f} (target >= 2)")
print(f"guest-to-endpoint TCP median (vmm): {med['guest->endpoint']:.2f} MB/s")
print(f"endpoint-to-guest TCP median (vmm): {med['endpoint->guest']:.2f} MB/s")
print(f"load of the KVM test host at the end: {loadavg()}")
PY
