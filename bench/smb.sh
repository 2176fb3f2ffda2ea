#!/usr/bin/env bash
# bench/smb.sh: `vmm smbd` (smbd-lite) side by side with Samba's smbd, both
# serving a guest read-write share on loopback, driven by the same smbclient
# commands:
#   - put then get one SIZE_MIB file (default 1024 MiB);
#   - FILES small files (default 10000, 100 bytes each) put, listed, deleted;
#   - memory per idle connection: CONNS (default 50) smbclient sessions left
#     idle; smbd-lite's RSS growth / CONNS, Samba's summed PSS of its
#     per-connection processes / CONNS. Target: <= 1 MiB.
# Each timing runs RUNS times (default 3), interleaved; prints medians in
# seconds and the ratio smbd-lite/Samba (below 1 = smbd-lite faster).
#
# Needs: smbclient, smbd (Debian samba), a release vmm:
#   cargo build --release -p vmm    (or set VMM_BIN)
# Only loopback addresses are used; every loop is bounded.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
FILES=${FILES:-10000}
CONNS=${CONNS:-50}
LITE_PORT=${LITE_PORT:-4475}
SAMBA_PORT=${SAMBA_PORT:-4476}
if [ -z "${VMM_BIN:-}" ]; then
    VMM_BIN="${CARGO_TARGET_DIR:-$root/target}/release/vmm"
fi
[ -x "$VMM_BIN" ] || { echo "smb.sh: no vmm binary at $VMM_BIN; cargo build --release -p vmm or set VMM_BIN" >&2; exit 2; }
for t in smbclient smbd; do
    command -v $t >/dev/null || { echo "smb.sh: $t not installed (apt-get install smbclient samba)" >&2; exit 2; }
done

work=$(mktemp -d /tmp/smb-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/lite" "$work/samba-share" "$work/samba"/{run,lock,state,cache,private} "$work/small"
cat > "$work/samba/smb.conf" <<CONF
[global]
  server role = standalone server
  map to guest = bad user
  smb ports = $SAMBA_PORT
  interfaces = 127.0.0.1
  bind interfaces only = yes
  disable netbios = yes
  load printers = no
  printing = bsd
  printcap name = /dev/null
  pid directory = $work/samba/run
  lock directory = $work/samba/lock
  state directory = $work/samba/state
  cache directory = $work/samba/cache
  private dir = $work/samba/private
  ncalrpc dir = $work/samba/run/ncalrpc
  log file = $work/samba/log
  log level = 0
[xchg]
  path = $work/samba-share
  guest ok = yes
  read only = no
  force user = root
CONF

"$VMM_BIN" smbd --listen 127.0.0.1:$LITE_PORT --share "xchg=$work/lite" > "$work/lite.log" 2>&1 &
lite_pid=$!
pids+=($lite_pid)
smbd --foreground --no-process-group -s "$work/samba/smb.conf" > "$work/samba.log" 2>&1 &
samba_pid=$!
pids+=($samba_pid)

wait_port() {
    for _ in $(seq 100); do
        if smbclient "//127.0.0.1/xchg" -p "$1" -U guest% -c 'ls' >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "smb.sh: nothing answers on port $1" >&2
    exit 1
}
wait_port $LITE_PORT
wait_port $SAMBA_PORT

echo "smb.sh: preparing ${SIZE_MIB} MiB file and $FILES small files"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$work/big"
for i in $(seq -w 1 "$FILES"); do head -c 100 /dev/zero > "$work/small/f$i"; done

# smb PORT COMMANDS: run smbclient, fail loudly.
smb() {
    smbclient "//127.0.0.1/xchg" -p "$1" -U guest% -c "$2" > "$work/out" 2>&1 || {
        echo "smb.sh: smbclient failed on port $1: $2" >&2
        tail -5 "$work/out" >&2
        exit 1
    }
}
# timed PORT COMMANDS: seconds taken.
timed() {
    local s e
    s=$(date +%s.%N)
    smb "$1" "$2"
    e=$(date +%s.%N)
    echo "$e - $s" | bc
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

declare -A results
for run in $(seq "$RUNS"); do
    for which in lite samba; do
        if [ $which = lite ]; then port=$LITE_PORT; else port=$SAMBA_PORT; fi
        results[$which.put]+="$(timed $port "put $work/big big") "
        results[$which.get]+="$(timed $port "get big /dev/null") "
        smb $port "rm big"
        results[$which.small_put]+="$(timed $port "mkdir small; cd small; lcd $work/small; prompt off; mput *") "
        results[$which.small_ls]+="$(timed $port "cd small; ls") "
        grep -c '^  f' "$work/out" | grep -qx "$FILES" || { echo "smb.sh: listing on $port did not show $FILES files" >&2; exit 1; }
        results[$which.small_rm]+="$(timed $port "cd small; del *") "
        smb $port "rmdir small"
    done
    echo "smb.sh: run $run done"
done

# Memory per idle connection.
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
pss_kib_children() {
    local total=0 c
    for c in $(pgrep -P "$1"); do
        total=$((total + $(awk '/^Pss:/ {print $2}' "/proc/$c/smaps_rollup" 2>/dev/null || echo 0)))
    done
    echo $total
}
idle_clients() {
    local port=$1 i
    for i in $(seq "$CONNS"); do
        (sleep 30 | smbclient "//127.0.0.1/xchg" -p "$port" -U guest% > /dev/null 2>&1) &
    done
    sleep 8
}
lite_before=$(rss_kib $lite_pid)
samba_before=$(pss_kib_children $samba_pid)
idle_clients $LITE_PORT
lite_after=$(rss_kib $lite_pid)
idle_clients $SAMBA_PORT
samba_after=$(pss_kib_children $samba_pid)
lite_conn_kib=$(( (lite_after - lite_before) / CONNS ))
samba_conn_kib=$(( (samba_after - samba_before) / CONNS ))
# Let the idle smbclient processes (sleep 30) end before cleanup.
sleep 25

printf '\n%-28s %12s %12s %8s\n' "benchmark (median of $RUNS)" smbd-lite samba ratio
for k in put get small_put small_ls small_rm; do
    l=$(echo "${results[lite.$k]}" | tr ' ' '\n' | grep . | median)
    s=$(echo "${results[samba.$k]}" | tr ' ' '\n' | grep . | median)
    case $k in
        put) label="put ${SIZE_MIB} MiB (s)";;
        get) label="get ${SIZE_MIB} MiB (s)";;
        small_put) label="put $FILES files (s)";;
        small_ls) label="list $FILES files (s)";;
        small_rm) label="delete $FILES files (s)";;
    esac
    printf '%-28s %12.3f %12.3f %8.2f\n' "$label" "$l" "$s" "$(echo "$l / $s" | bc -l)"
done
echo "idle connections: $CONNS; smbd-lite RSS $lite_before -> $lite_after KiB; Samba children PSS $samba_before -> $samba_after KiB"
printf '%-28s %12s %12s %8.2f\n' "memory per idle conn (KiB)" "$lite_conn_kib" "$samba_conn_kib" "$(echo "$lite_conn_kib / ($samba_conn_kib + 0.001)" | bc -l)"
