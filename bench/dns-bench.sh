#!/usr/bin/env bash
# DNS queries per second: weft's embedded DNS against dnsmasq serving the
# same names on the same machine. One run; appends a Markdown table to
# bench/RESULTS.md.
#
#   cargo build --release -p weft && sudo bench/dns-bench.sh [SECONDS] [RUNS]
#
# Topology (every namespace is named wdb-*, nothing is configured in the
# machine's own namespace):
#
#   weft:    wdb-host runs `weft daemon`; network dnsb 10.233.250.0/24 with
#            ENDPOINTS sandboxes wdb-e1.. named host1.. (10.233.250.11..)
#            and the client sandbox wdb-c1; dnsperf in wdb-c1 asks the
#            gateway 10.233.250.1 (client -> TAP -> weft -> TAP -> client).
#   dnsmasq: wdb-c2 (10.233.251.1) and wdb-d (10.233.251.2) joined by a
#            veth; dnsmasq in wdb-d serves the same names and addresses
#            from an --addn-hosts file; dnsperf in wdb-c2 asks it.
#
# Both: `taskset -c 0 dnsperf -d FILE -l SECONDS -c 1` (default 100 queries
# in flight), A queries for the ENDPOINTS names in turn; servers unpinned.
# Runs alternate weft, dnsmasq, weft, dnsmasq, ... (RUNS each); medians.
#
# The weft daemon's only upstream is 127.0.0.1:5353 inside wdb-host, where
# nothing listens (and every query here is local anyway): nothing can reach
# the machine's real network. Everything runs under `timeout`; an EXIT trap
# stops what this script started (by PID) and deletes its namespaces.
# Takes /run/weft-bench.lock (as `weft-bench` does) so that two benchmarks
# do not share the CPUs.

set -euo pipefail

SECONDS_PER_RUN=${1:-10}
RUNS=${2:-3}
ENDPOINTS=10

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WEFT=${WEFT:-$ROOT/target/release/weft}
RESULTS=${RESULTS:-$ROOT/bench/RESULTS.md}
P=wdb
WORK=$(mktemp -d /tmp/weft-dns-bench.XXXXXX)
SOCK=$WORK/weft.sock
NET=dnsb
SUBNET=10.233.250.0/24
GW=10.233.250.1
C2_ADDR=10.233.251.1
D_ADDR=10.233.251.2
T=30 # seconds any one setup command may take

die() { echo "dns-bench: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (namespaces, TAPs)"
[ -x "$WEFT" ] || die "no $WEFT: cargo build --release -p weft"
for tool in ip dnsperf dnsmasq dig taskset flock timeout; do
    command -v "$tool" >/dev/null || die "needs $tool"
done

exec 9>/run/weft-bench.lock
flock -w 900 9 || die "another benchmark holds /run/weft-bench.lock"

DAEMON_PID=
DNSMASQ_PID=
cleanup() {
    set +e
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
    [ -n "$DNSMASQ_PID" ] && kill "$DNSMASQ_PID" 2>/dev/null && wait "$DNSMASQ_PID" 2>/dev/null
    for ns in $(ip netns list | awk '{print $1}' | grep "^$P-"); do
        timeout $T ip netns del "$ns"
        rm -rf "/etc/netns/$ns"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Leftovers of an aborted run (the lock says no other run is going on).
for ns in $(ip netns list | awk '{print $1}' | grep "^$P-"); do
    timeout $T ip netns del "$ns" || true
    rm -rf "/etc/netns/$ns"
done

in_ns() { local ns=$1; shift; timeout $T ip netns exec "$ns" "$@"; }
weft() { WEFT_SOCKET=$SOCK timeout $T ip netns exec $P-host "$WEFT" "$@"; }

# --- weft -------------------------------------------------------------------
for ns in host c1 c2 d; do timeout $T ip netns add $P-$ns; done
timeout $T ip -n $P-host link set lo up
timeout 3600 ip netns exec $P-host "$WEFT" --socket "$SOCK" daemon \
    --state-dir "$WORK/state" --no-default-network \
    --dns-upstream 127.0.0.1:5353 2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do
    [ -S "$SOCK" ] && weft network ls >/dev/null 2>&1 && break
    sleep 0.1
done
weft network ls >/dev/null || die "the daemon did not start: $(cat "$WORK/daemon.log")"
weft network create --subnet $SUBNET $NET >/dev/null
: >"$WORK/hosts"
: >"$WORK/queries"
for i in $(seq $ENDPOINTS); do
    timeout $T ip netns add $P-e$i
    addr=10.233.250.$((10 + i))
    weft network connect --name host$i --ip $addr $NET $P-e$i >/dev/null
    echo "$addr host$i" >>"$WORK/hosts"
    echo "host$i A" >>"$WORK/queries"
done
weft network connect --name client $NET $P-c1 >/dev/null

# --- dnsmasq ----------------------------------------------------------------
timeout $T ip -n $P-c2 link add eth0 type veth peer name eth0 netns $P-d
timeout $T ip -n $P-c2 addr add $C2_ADDR/24 dev eth0
timeout $T ip -n $P-d addr add $D_ADDR/24 dev eth0
for ns in c2 d; do
    timeout $T ip -n $P-$ns link set lo up
    timeout $T ip -n $P-$ns link set eth0 up
done
timeout 3600 ip netns exec $P-d dnsmasq --no-daemon --conf-file=/dev/null \
    --pid-file= --user=root --log-facility=- --no-resolv --no-hosts \
    --addn-hosts="$WORK/hosts" --bind-interfaces --listen-address=$D_ADDR \
    2>"$WORK/dnsmasq.log" &
DNSMASQ_PID=$!

# Both answer the same thing before we measure.
for i in 1 $ENDPOINTS; do
    want=10.233.250.$((10 + i))
    for _ in $(seq 50); do
        a=$(in_ns $P-c1 dig +time=1 +tries=1 +short @$GW host$i || true)
        b=$(in_ns $P-c2 dig +time=1 +tries=1 +short @$D_ADDR host$i || true)
        [ "$a" = "$want" ] && [ "$b" = "$want" ] && break
        sleep 0.1
    done
    [ "$a" = "$want" ] || die "weft answers host$i with '$a', not $want"
    [ "$b" = "$want" ] || die "dnsmasq answers host$i with '$b', not $want"
done

# --- runs -------------------------------------------------------------------
# One dnsperf run; prints "QPS LATENCY_MS LOST".
perf() {
    local ns=$1 server=$2 out
    out=$(timeout $((SECONDS_PER_RUN + 30)) ip netns exec "$ns" taskset -c 0 \
        dnsperf -s "$server" -d "$WORK/queries" -l "$SECONDS_PER_RUN" -c 1 2>&1) ||
        die "dnsperf against $server failed: $out"
    grep -q "Response codes: *NOERROR [0-9]* (100.00%)" <<<"$out" ||
        die "not every answer was NOERROR: $out"
    local qps lat lost
    qps=$(echo "$out" | awk '/Queries per second:/ {print $4}')
    lat=$(echo "$out" | awk '/Average Latency/ {printf "%.3f", $4 * 1000}')
    lost=$(echo "$out" | awk '/Queries lost:/ {print $3}')
    echo "$qps $lat $lost"
}

declare -a WEFT_QPS WEFT_LAT WEFT_LOST DM_QPS DM_LAT DM_LOST
for r in $(seq "$RUNS"); do
    res=$(perf $P-c1 $GW)
    read -r q l x <<<"$res"
    WEFT_QPS+=("$q"); WEFT_LAT+=("$l"); WEFT_LOST+=("$x")
    echo "run $r weft:    $q q/s, $l ms, lost $x" >&2
    res=$(perf $P-c2 $D_ADDR)
    read -r q l x <<<"$res"
    DM_QPS+=("$q"); DM_LAT+=("$l"); DM_LOST+=("$x")
    echo "run $r dnsmasq: $q q/s, $l ms, lost $x" >&2
done

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
sum() { printf '%s\n' "$@" | awk '{s += $1} END {print s}'; }
fmt_runs() { printf '%s\n' "$@" | awk '{printf "%s%.0f", (NR > 1 ? " / " : ""), $1}'; }

wq=$(median "${WEFT_QPS[@]}")
dq=$(median "${DM_QPS[@]}")
wl=$(median "${WEFT_LAT[@]}")
dl=$(median "${DM_LAT[@]}")
ratio=$(awk -v a="$wq" -v b="$dq" 'BEGIN {printf "%.2f", a / b}')
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ] && commit="$commit (uncommitted changes)"
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)

[ -f "$RESULTS" ] || printf '# weft benchmark results\n' >"$RESULTS"
{
    printf '\n## DNS queries per second: weft against dnsmasq (%s)\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'Kernel %s, %s CPUs (%s), weft %s (release). ' "$(uname -r)" "$(nproc)" "$cpu" "$commit"
    printf '`taskset -c 0 dnsperf -l %s -c 1` (100 queries in flight), A queries for %s local names in turn, ' "$SECONDS_PER_RUN" "$ENDPOINTS"
    printf 'servers unpinned; runs alternate weft, dnsmasq (%s each). ' "$RUNS"
    printf 'weft: the client is a sandbox on a weft network asking its gateway (through the TAPs and the switch); '
    printf 'dnsmasq %s: the same names from `--addn-hosts`, the client across a veth. `bench/dns-bench.sh`.\n\n' "$(dnsmasq --version | awk 'NR == 1 {print $3}')"
    printf '| server | queries/s, median | runs | avg latency, median | lost |\n'
    printf '|---|---|---|---|---|\n'
    printf '| weft | %.0f | %s | %s ms | %s |\n' "$wq" "$(fmt_runs "${WEFT_QPS[@]}")" "$wl" "$(sum "${WEFT_LOST[@]}")"
    printf '| dnsmasq | %.0f | %s | %s ms | %s |\n' "$dq" "$(fmt_runs "${DM_QPS[@]}")" "$dl" "$(sum "${DM_LOST[@]}")"
    printf '\nweft / dnsmasq: **%s×**\n' "$ratio"
} | tee -a "$RESULTS"
