#!/usr/bin/env bash
# bench/run.sh: the main job end to end (issue 9): wall time of
# `vmm run --base BASE -- true`, from process start to exit, against the
# old pipeline rebuilt with Debian's packages, on the same guest (the test
# guest kit booted with `console=ttyS0 panic=-1 quiet i8042.noaux mode=sshd`:
# dropbear on 192.168.0.1:22) in the same KVM test host and run.
#   vmm:  `vmm bootstrap --out BASE` once (default spec: the kit guest, both
#         shares mounted), then RUNS times `vmm run --base BASE --xchg X
#         --store S -- true` (X a fresh empty folder, S the folder Samba
#         serves as the store), and once more with --stats.
#   old:  vde_switch (vde2); QEMU (-enable-kvm -cpu host, 256M, 1 vCPU, no
#         disks, -netdev vde + virtio-net-pci) boots the guest once; over
#         OpenSSH the guest mounts `xchg` (rw) and `store` (ro) from Samba's
#         smbd with the very command vmm's bootstrap uses; HMP `migrate`
#         freezes it to `exec:gzip -c > F.gz` (the old pipeline's file) and,
#         after `cont`, to `exec:cat > F`. Then RUNS times each: QEMU with
#         `-incoming "exec:gzip -dc F.gz"` (or `exec:cat F`), HMP polled
#         until `info status` says running, `ssh -i KEY root@192.168.0.1
#         true`, QEMU killed; timed from QEMU's start to ssh's exit.
# Differences, each in the old pipeline's favour: the host joins the switch
# through a tap at 192.168.0.2/24 (vde_switch -t) instead of a second
# "controller" VM that had to boot for every build; smbd runs on the host
# and is restarted before each revive outside the timed window (vmm starts
# its SMB server, switch and endpoint inside its timed run).
# Prints each run, then medians and minimums (ms) of RUNS runs (default 5;
# through scripts/with-kvm, which passes on only VMM_* variables, set
# VMM_BENCH_RUNS) and the ratios old / vmm; progress goes to stderr.
# Target (issue 9): vmm >= 20x faster than the gzip'd old pipeline.
#
# Needs qemu-system-x86, vde2, samba, openssh-client and the guest kit
# (`vmm guest build`); the host side uses the tap `vmmbench0` and
# 192.168.0.2/24, so it needs root. Files go to /dev/shm (the test host's
# own tmpfs). Runs itself through scripts/with-kvm where this host has no
# hardware KVM. Build first:
#   cargo build --release -p vmm   (or set VMM_BIN)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kit="${XDG_CACHE_HOME:-$HOME/.cache}/vmm/guest"
export VMM_BENCH_RUNS=${VMM_BENCH_RUNS:-${RUNS:-5}}
if [ -z "${VMM_BIN:-}" ]; then
    for c in "${CARGO_TARGET_DIR:-$root/target}/release/vmm" "${CARGO_TARGET_DIR:-$root/target}/debug/vmm"; do
        if [ -x "$c" ]; then VMM_BIN=$c; break; fi
    done
fi
[ -x "${VMM_BIN:-}" ] || { echo "run.sh: no vmm binary; cargo build --release -p vmm or set VMM_BIN" >&2; exit 2; }
for f in kernel initrd key; do
    [ -r "$kit/$f" ] || { echo "run.sh: cannot read $kit/$f (run vmm guest build)" >&2; exit 2; }
done
for t in qemu-system-x86_64 vde_switch smbd ssh gzip ip; do
    command -v $t >/dev/null || { echo "run.sh: $t not installed (apt-get install qemu-system-x86 vde2 samba openssh-client)" >&2; exit 2; }
done
export VMM_BIN VMM_BENCH_KIT=$kit
hardware_kvm() { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; }
if [ "${VMM_BENCH_INSIDE:-0}" != 1 ] && ! hardware_kvm; then
    exec env VMM_BENCH_INSIDE=1 "$root/scripts/with-kvm" "$0"
fi
[ "$(id -u)" = 0 ] || { echo "run.sh: needs root (a tap interface for the old pipeline's host side)" >&2; exit 2; }

export VMM_BENCH_WORK=/dev/shm/vmm-bench-run
export VMM_BENCH_TAP=vmmbench0
# Every process the benchmark starts is listed in $work/pids (one process
# group leader a line); whatever way this ends, they are stopped by id.
cleanup() {
    if [ -f "$VMM_BENCH_WORK/pids" ]; then
        while read -r p; do
            kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null || true
        done < "$VMM_BENCH_WORK/pids"
        sleep 0.5
        while read -r p; do
            kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null || true
        done < "$VMM_BENCH_WORK/pids"
    fi
    ip link del "$VMM_BENCH_TAP" 2>/dev/null || true
    rm -rf "$VMM_BENCH_WORK"
}
rm -rf "$VMM_BENCH_WORK"
mkdir -p "$VMM_BENCH_WORK"
trap cleanup EXIT
trap 'exit 130' INT TERM
[ -e /dev/net/tun ] || modprobe tun 2>/dev/null || true
echo "run.sh: load before: $(uptime)"

python3 - <<'PY'
import os, re, shutil, signal, socket, statistics, subprocess, sys, time

runs = int(os.environ["VMM_BENCH_RUNS"])
vmm = os.environ["VMM_BIN"]
kit = os.environ["VMM_BENCH_KIT"]
work = os.environ["VMM_BENCH_WORK"]
tap = os.environ["VMM_BENCH_TAP"]
kernel, initrd, key = f"{kit}/kernel", f"{kit}/initrd", f"{kit}/key"
cmdline = "console=ttyS0 panic=-1 quiet i8042.noaux mode=sshd"
guest, host = "192.168.0.1", "192.168.0.2"
# vmm bootstrap's default post-install command (vmm/src/spec.rs).
opts = f"vers=3.1.1,sec=none,noserverino,ip={host}"
mount_cmd = (f"mkdir -p /tmp/xchg /nix/store && mount -t cifs //{host}/xchg /tmp/xchg -o {opts} && "
             f"mount -t cifs //{host}/store /nix/store -o {opts},ro")
BOOT_TIMEOUT = 900
RUN_TIMEOUT = 300

signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

T0 = time.monotonic()
def say(msg):
    """Progress on stderr: each step can take minutes in the emulated host."""
    print(f"run.sh: [{time.monotonic() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)

def die(msg):
    sys.exit(f"run.sh: {msg}")

live = set()
def note_pids():
    with open(f"{work}/pids.new", "w") as f:
        f.writelines(f"{pid}\n" for pid in sorted(live))
    os.replace(f"{work}/pids.new", f"{work}/pids")

def spawn(cmd, **kw):
    """Starts cmd as its own process group, listed for the shell's cleanup."""
    p = subprocess.Popen(cmd, start_new_session=True, **kw)
    live.add(p.pid)
    note_pids()
    return p

def stop(p):
    """Kills p's process group (smbd's children too) and reaps p."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()
    live.discard(p.pid)
    note_pids()

def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""

for d in ["xchg", "store", "samba/run", "samba/lock", "samba/state", "samba/cache", "samba/private"]:
    os.makedirs(f"{work}/{d}", exist_ok=True)
with open(f"{work}/store/in.txt", "w") as f:
    f.write("hello from the store\n")

# --- the old pipeline's switch and host side -------------------------------
vde_sock = f"{work}/vde.ctl"
vde = spawn(["vde_switch", "-s", vde_sock, "-t", tap], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=open(f"{work}/vde.log", "w"))
deadline = time.monotonic() + 10
while not os.path.exists(f"/sys/class/net/{tap}"):
    if vde.poll() is not None or time.monotonic() > deadline:
        die(f"vde_switch did not create {tap}: {tail(f'{work}/vde.log')}")
    time.sleep(0.01)
subprocess.run(["ip", "addr", "add", f"{host}/24", "dev", tap], check=True)
subprocess.run(["ip", "link", "set", tap, "up"], check=True)

with open(f"{work}/samba/smb.conf", "w") as f:
    f.write(f"""[global]
  server role = standalone server
  map to guest = bad user
  guest account = root
  interfaces = {host}/24
  bind interfaces only = yes
  smb ports = 445
  disable netbios = yes
  server min protocol = SMB2_02
  server smb encrypt = off
  server signing = auto
  load printers = no
  printing = bsd
  printcap name = /dev/null
  disable spoolss = yes
  pid directory = {work}/samba/run
  lock directory = {work}/samba/lock
  state directory = {work}/samba/state
  cache directory = {work}/samba/cache
  private dir = {work}/samba/private
  ncalrpc dir = {work}/samba/run/ncalrpc
  log file = {work}/samba/log
  log level = 1
[xchg]
  path = {work}/xchg
  guest ok = yes
  read only = no
  force user = root
[store]
  path = {work}/store
  guest ok = yes
  read only = yes
  force user = root
""")

smbd = None
def start_smbd():
    """A fresh smbd (no old connections), listening on the tap's address."""
    global smbd
    if smbd is not None:
        stop(smbd)
    smbd = spawn(["smbd", "--foreground", "--no-process-group", "-s", f"{work}/samba/smb.conf"],
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=open(f"{work}/smbd.log", "a"))
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((host, 445), timeout=1).close()
            return
        except OSError:
            if smbd.poll() is not None or time.monotonic() > deadline:
                die(f"smbd does not listen on {host}:445: {tail(f'{work}/smbd.log')}{tail(f'{work}/samba/log')}")
            time.sleep(0.01)

ssh_base = ["ssh", "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", f"root@{guest}"]

def ssh(command, timeout=RUN_TIMEOUT):
    return subprocess.run(ssh_base + [command], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)

class Hmp:
    def __init__(self, path, proc):
        deadline = time.monotonic() + 60
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if proc.poll() is not None or time.monotonic() > deadline:
                    die(f"no QEMU monitor at {path}: {tail(f'{work}/qemu.log')}")
                time.sleep(0.002)
        self.s.settimeout(120)
        self.read_prompt()

    def read_prompt(self):
        buf = b""
        while not buf.endswith(b"(qemu) "):
            try:
                b = self.s.recv(65536)
            except socket.timeout:
                die(f"the QEMU monitor did not answer in 120 s: {buf[-300:]!r}")
            if not b:
                break
            buf += b
        return buf.decode(errors="replace")

    def cmd(self, c):
        self.s.sendall(c.encode() + b"\n")
        return self.read_prompt()

def qemu_cmd(sock, extra):
    return ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-M", "pc", "-m", "256M", "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", f"file:{work}/qemu-console.log", "-monitor", f"unix:{sock},server,nowait",
            "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
            "-netdev", f"vde,id=n0,sock={vde_sock}",
            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,romfile="] + extra

def migrate(hmp, target):
    out = hmp.cmd(f'migrate "exec:{target}"')
    deadline = time.monotonic() + BOOT_TIMEOUT
    while True:
        info = hmp.cmd("info migrate")
        if "Migration status: completed" in info:
            return
        if "Migration status: failed" in info or time.monotonic() > deadline:
            die(f"migrate {target} failed: {out} {info}")
        time.sleep(0.01)

def qemu_freeze():
    """Boots the guest, mounts the shares over SSH, freezes it twice."""
    start_smbd()
    say("old pipeline: booting the guest in QEMU")
    sock = f"{work}/qemu-boot.sock"
    t0 = time.monotonic()
    p = spawn(qemu_cmd(sock, []), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
              stderr=open(f"{work}/qemu.log", "a"))
    hmp = Hmp(sock, p)
    deadline = t0 + BOOT_TIMEOUT
    while True:
        if p.poll() is not None:
            die(f"QEMU stopped while booting: {tail(f'{work}/qemu.log')}{tail(f'{work}/qemu-console.log')}")
        r = ssh("true", timeout=30)
        if r.returncode == 0:
            break
        if time.monotonic() > deadline:
            die(f"guest SSH never answered: {r.stderr[-300:]} {tail(f'{work}/qemu-console.log')}")
        time.sleep(0.5)
    booted = time.monotonic() - t0
    r = ssh(f"{mount_cmd} && cat /nix/store/in.txt && echo written > /tmp/xchg/probe")
    if r.returncode != 0 or "hello from the store" not in r.stdout:
        die(f"the guest cannot mount Samba's shares (status {r.returncode}): {r.stdout}{r.stderr}"
            f"{tail(f'{work}/qemu-console.log')}{tail(f'{work}/samba/log')}")
    with open(f"{work}/xchg/probe") as f:
        if f.read() != "written\n":
            die("the guest's write to xchg did not reach the host")
    os.remove(f"{work}/xchg/probe")
    print(f"old pipeline: QEMU booted to SSH in {booted * 1000:.0f} ms; Samba's xchg (rw) and store (ro) "
          f"mounted in the guest, read and write checked", flush=True)
    files = {}
    for gz in (True, False):
        f = f"{work}/qemu.mig" + (".gz" if gz else "")
        say(f"old pipeline: migrate to {f}")
        t = time.monotonic()
        migrate(hmp, f"gzip -c > {f}" if gz else f"cat > {f}")
        took = time.monotonic() - t
        files[gz] = f
        print(f"old pipeline: migrate exec:{'gzip' if gz else 'cat'}: {took * 1000:.0f} ms, "
              f"{os.path.getsize(f) / 2**20:.1f} MiB", flush=True)
        if gz:
            hmp.cmd("cont")  # migration leaves the guest paused; the next file must say running
    stop(p)
    return files

def qemu_run(f, gz):
    """One build of the old pipeline: revive, `ssh true`, stop. Returns (to running, to ssh exit)."""
    start_smbd()
    say(f"old pipeline: QEMU -incoming from {f}")
    sock = f"{work}/qemu-in.sock"
    src = f"gzip -dc {f}" if gz else f"cat {f}"
    t0 = time.monotonic()
    p = spawn(qemu_cmd(sock, ["-incoming", f"exec:{src}"]), stdin=subprocess.DEVNULL,
              stdout=subprocess.DEVNULL, stderr=open(f"{work}/qemu.log", "a"))
    hmp = Hmp(sock, p)
    deadline = t0 + RUN_TIMEOUT
    while "running" not in hmp.cmd("info status"):
        if p.poll() is not None or time.monotonic() > deadline:
            die(f"revived QEMU never ran: {tail(f'{work}/qemu.log')}")
        time.sleep(0.001)
    running = time.monotonic() - t0
    say(f"old pipeline: running after {running * 1000:.0f} ms; ssh true")
    r = ssh("true")
    done = time.monotonic() - t0
    stop(p)
    if r.returncode != 0:
        die(f"ssh true in the revived QEMU guest failed ({r.returncode}): {r.stderr[-500:]}")
    return running, done

# --- vmm -------------------------------------------------------------------
def vmm_bootstrap():
    base = f"{work}/base"
    say(f"vmm bootstrap --out {base}")
    t0 = time.monotonic()
    p = spawn([vmm, "bootstrap", "--out", base], stdin=subprocess.DEVNULL,
              stdout=open(f"{work}/bootstrap.out", "w"), stderr=open(f"{work}/bootstrap.err", "w"))
    try:
        rc = p.wait(timeout=BOOT_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop(p)
        die(f"vmm bootstrap did not finish in {BOOT_TIMEOUT} s: {tail(f'{work}/bootstrap.err')}")
    if rc != 0:
        die(f"vmm bootstrap --out {base} exited {rc}: {tail(f'{work}/bootstrap.err')}")
    print(f"vmm: bootstrap in {(time.monotonic() - t0) * 1000:.0f} ms", flush=True)
    return base

n_vmm_runs = 0
def vmm_run(base, stats=False):
    global n_vmm_runs
    n_vmm_runs += 1
    xchg = f"{work}/xchg-vmm-{n_vmm_runs}"
    os.makedirs(xchg)
    cmd = [vmm, "run", "--base", base, "--xchg", xchg, "--store", f"{work}/store"]
    cmd += ["--stats"] if stats else []
    say(f"{' '.join(cmd)} -- true")
    t0 = time.monotonic()
    p = spawn(cmd + ["--", "true"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
              stderr=subprocess.PIPE)
    try:
        out, err = p.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop(p)
        die(f"{' '.join(cmd)} -- true did not end in {RUN_TIMEOUT} s")
    took = time.monotonic() - t0
    err = err.decode(errors="replace")
    if p.returncode != 0:
        die(f"{' '.join(cmd)} -- true exited {p.returncode}: {err[-1500:]}")
    shutil.rmtree(xchg, ignore_errors=True)
    return took, err

files = qemu_freeze()
base = vmm_bootstrap()

v, z, q, z_run, q_run = [], [], [], [], []
for i in range(runs):
    t, _ = vmm_run(base); v.append(t)
    r, t = qemu_run(files[True], True); z_run.append(r); z.append(t)
    r, t = qemu_run(files[False], False); q_run.append(r); q.append(t)
    print(f"run {i + 1}: vmm run {v[-1] * 1000:.0f} ms; old pipeline gzip {z[-1] * 1000:.0f} ms "
          f"(running after {z_run[-1] * 1000:.0f}), uncompressed {q[-1] * 1000:.0f} ms "
          f"(running after {q_run[-1] * 1000:.0f})", flush=True)
_, err = vmm_run(base, stats=True)
line = next((l for l in err.splitlines() if l.startswith("vmm: run:")), None)
print(f"vmm --stats: {line or 'no stats line: ' + err[-300:]}")

med = statistics.median
ms = lambda s: f"{s * 1000:.0f} ms"
print(f"SUMMARY `vmm run -- true`: median {ms(med(v))}, min {ms(min(v))} (of {runs})")
print(f"SUMMARY old pipeline, gzip'd state: median {ms(med(z))}, min {ms(min(z))}; "
      f"x{med(z) / med(v):.1f} median, x{min(z) / min(v):.1f} min (target >= 20)")
print(f"SUMMARY old pipeline, uncompressed state: median {ms(med(q))}, min {ms(min(q))}; "
      f"x{med(q) / med(v):.1f} median, x{min(q) / min(v):.1f} min", flush=True)
PY
echo "run.sh: load after: $(uptime)"
