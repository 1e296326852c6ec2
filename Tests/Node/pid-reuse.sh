#!/usr/bin/env bash
# `meshinit clean --all-namespaces` never acts on a namespace other than the one it listed,
# and never on the caller's own: a PID listed as /proc/PID/ns/net may exit and be reused
# before the walk reaches it, by a process of the node's own namespace.
#
# The race, made deterministic: the walk is held at a namespace listed before the victim
# (the test holds that namespace's lock, which clean waits for), the victim process exits, a
# process of the caller's namespace is started with the victim's PID (ns_last_pid, in a
# private PID namespace), the lock is released. A walk that enters /proc/PID/ns/net by path
# cleans the caller's namespace; it must skip it instead, saying why.
#
# Runs in private PID and mount namespaces (a private /proc and /run/netns), so the walk
# sees only the namespaces made here. Usage: pid-reuse.sh BIN   Ends with "pid-reuse: N passed, N failed".
set -uo pipefail
bin=$(realpath "$1")
if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null || ! command -v ip >/dev/null || ! command -v flock >/dev/null; then
    echo "pid-reuse: needs root, unshare, flock and ip"
    if [ "${CI:-}" = true ]; then echo "pid-reuse: 0 passed, 1 failed"; exit 1; fi
    exit 77
fi
if [ "${MESHINIT_INSIDE:-}" != 1 ]; then
    # --net too: the walk also enters this script's own namespace (PID 1 here), which must not be the host's.
    exec unshare --net --mount --pid --fork --mount-proc env MESHINIT_INSIDE=1 bash "$0" "$@"
fi
mount --make-rprivate /
mkdir -p /run/netns && mount -t tmpfs meshinit-netns /run/netns
work=$(mktemp -d /tmp/meshinit-pidreuse-h17a.XXXXXX)
cleanup() {
    [ -p "$work/release" ] && timeout 1 sh -c 'echo release >"$0"' "$work/release"
    jobs -p | xargs -r kill 2>/dev/null
    wait 2>/dev/null
    for ns in node held; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

passed=0
failed=0
check() {
    if eval "$2"; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}
seed=(-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020 --ipv6=on --native-nftables)
tables() { ip netns exec "$1" nft list tables 2>/dev/null | grep -c istio-proxy; }

# "node" plays the node: the caller's namespace, holding rules of ours it must keep.
# "held" is listed first (named namespaces come before /proc) and cleaned normally.
for ns in node held; do ip netns add $ns && ip netns exec $ns ip link set lo up && ip netns exec $ns "$bin" "${seed[@]}" >/dev/null 2>&1; done
check "our rules installed in node and held" '[ "$(tables node)" = 1 ] && [ "$(tables held)" = 1 ]'

# The victim: a process in an unnamed namespace, found only through /proc/PID/ns/net.
unshare --net sleep 600 &
victim=$!
# Hold held's namespace lock (flock on its nsfs inode, as meshinit takes it) until released:
# blocked in a read of a FIFO (a shell builtin), so that nothing forks while the victim's PID
# is being handed on.
mkfifo "$work/release"
ip netns exec held flock /proc/self/ns/net sh -c ': >"$0/locked"; read -r _ <"$0/release"' "$work" &
for _ in $(seq 100); do [ -e "$work/locked" ] && break; sleep 0.05; done
check "the lock on held is taken" '[ -e "$work/locked" ]'

ip netns exec node "$bin" clean --all-namespaces >"$work/report" 2>&1 &
walk=$!
# The walk lists everything at once, then waits for held's lock (up to 30 s).
sleep 1.5
kill "$victim"
wait "$victim" 2>/dev/null
# The next process of this PID namespace gets the victim's PID: a process of the node's
# namespace. Nothing else forks in between (the walk is waiting on the lock).
reused=
for _ in $(seq 20); do
    echo $((victim - 1)) >/proc/sys/kernel/ns_last_pid
    ip netns exec node sleep 600 &
    reused=$!
    [ "$reused" = "$victim" ] && break
    kill "$reused"
    wait "$reused" 2>/dev/null
done
# `ip netns exec` enters the namespace, then execs: wait until it has.
node_inode=$(ip netns exec node stat -L -c %i /proc/self/ns/net)
for _ in $(seq 100); do [ "$(stat -L -c %i /proc/$reused/ns/net 2>/dev/null)" = "$node_inode" ] && break; sleep 0.02; done
check "a process of node's namespace now has the victim's PID ($victim)" '[ "$reused" = "$victim" ] && [ "$(stat -L -c %i /proc/$reused/ns/net)" = "$node_inode" ]'
echo release >"$work/release"
wait "$walk"
rc=$?
sed 's/^/    /' "$work/report"
check "clean --all-namespaces exits 0" '[ $rc = 0 ]'
check "the namespace listed before the victim was cleaned" '[ "$(tables held)" = 0 ]'
check "the caller's own namespace (reached through the reused PID) was not touched" '[ "$(tables node)" = 1 ]'
check "the walk says it skipped the reused PID, and why" 'grep -q "/proc/$victim/ns/net .*no longer that namespace when reached" "$work/report"'
kill "$reused" 2>/dev/null
echo "pid-reuse: $passed passed, $failed failed"
[ "$failed" = 0 ]
