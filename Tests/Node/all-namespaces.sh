#!/usr/bin/env bash
# `meshinit clean --all-namespaces` on a simulated node: three namespaces holding our rules
# (one through iptables, one through netlink, one through both), one holding only foreign
# rules, and a live pod (our rules, and a proxy listening on 15001). A dry run changes
# nothing and lists per namespace; the real run removes ours everywhere but in the live pod
# (skipped, said so) and leaves the foreign namespace byte-identical; --force cleans the live
# pod; processes exiting during the walk are not errors.
#
# Runs in private PID and mount namespaces (a private /proc and /run/netns), so the node-wide
# walk sees only the namespaces made here, never the machine's or another test's.
# Usage: all-namespaces.sh BIN      Ends with "all-namespaces: N passed, N failed".
set -uo pipefail
bin=$(realpath "$1")
if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null || ! command -v ip >/dev/null; then
    echo "all-namespaces: needs root, unshare and ip"
    if [ "${CI:-}" = true ]; then echo "all-namespaces: 0 passed, 1 failed"; exit 1; fi
    exit 77 # skipped (scripts/test counts it so)
fi
if [ "${MESHINIT_INSIDE:-}" != 1 ]; then
    # --net too: the walk also enters this script's own namespace (PID 1 here), which must not be the host's.
    exec unshare --net --mount --pid --fork --mount-proc env MESHINIT_INSIDE=1 bash "$0" "$@"
fi
mount --make-rprivate /
mkdir -p /run/netns && mount -t tmpfs meshinit-netns /run/netns

passed=0
failed=0
check() {
    if eval "$2"; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}
seed=(-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020 --ipv6=on)
for ns in ipt nl both foreign live; do ip netns add $ns && ip netns exec $ns ip link set lo up; done
ip netns exec ipt "$bin" "${seed[@]}" >/dev/null
ip netns exec nl "$bin" "${seed[@]}" --native-nftables >/dev/null
ip netns exec both "$bin" "${seed[@]}" -m TPROXY >/dev/null
ip netns exec both "$bin" "${seed[@]}" --native-nftables >/dev/null
ip netns exec foreign iptables -t nat -N KUBE-SERVICES
ip netns exec foreign iptables -t nat -A OUTPUT -m comment --comment "kube" -j KUBE-SERVICES
ip netns exec foreign iptables -t nat -A PREROUTING -i eth0 -j RETURN
ip netns exec foreign nft add table inet foreign
ip netns exec foreign nft add chain inet foreign out '{ type filter hook output priority 0 ; }'
ip netns exec foreign nft add rule inet foreign out tcp dport 15001 counter accept
ip netns exec live "$bin" "${seed[@]}" --native-nftables >/dev/null
ip netns exec live python3 -c 'import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 15001)); s.listen()
time.sleep(60)' &
listener=$!
state() { ip netns exec "$1" sh -c 'iptables-save; ip6tables-save; nft list ruleset; ip rule; ip -6 rule; ip -6 addr show dev lo' 2>/dev/null | grep -v '^#'; }
everything() { for ns in ipt nl both foreign live; do state $ns; done; }
before=$(state foreign)
has() { state "$1" | grep -c -e "$2" >/dev/null; }
check "our rules present before" 'has ipt ISTIO_OUTPUT && has nl istio-proxy-nat && has both istio-proxy-nat && has both ISTIO_TPROXY'

# Keep a process in an unnamed namespace too: found through /proc/PID/ns/net.
unshare --net bash -c 'ip link set lo up; "$@" >/dev/null 2>&1; sleep 30' - "$bin" "${seed[@]}" --native-nftables &
sleep 0.5
all_before=$(everything)
dry=$("$bin" clean --all-namespaces --dry-run 2>&1)
rc=$?
check "clean --all-namespaces --dry-run exits 0" '[ $rc = 0 ]'
check "dry run changes nothing" '[ "$(everything)" = "$all_before" ]'
check "dry run lists what it would remove, per namespace" 'echo "$dry" | grep -A3 "^# /run/netns/nl " | grep -q "delete table inet istio-proxy-nat" && echo "$dry" | grep -A40 "^# /run/netns/ipt " | grep -q -- "-D OUTPUT -j ISTIO_OUTPUT" && echo "$dry" | grep -A1 "^# /run/netns/foreign " | grep -q "nothing of ours"'
report=$("$bin" clean --all-namespaces 2>&1)
rc=$?
echo "$report" | sed 's/^/    /'
check "clean --all-namespaces exits 0" '[ $rc = 0 ]'
for ns in ipt nl both; do
    check "nothing of ours left in $ns" '[ "$(state $ns | grep -c -e ISTIO -e istio-proxy -e "fwmark 0x539" -e "::6/128")" = 0 ]'
done
check "the /proc-only namespace was cleaned" '[ "$(echo "$report" | grep -c "/proc/.*removed nft table inet istio-proxy-nat")" = 1 ]'
check "report names each namespace and what it removed" '[ "$(echo "$report" | grep -c -e "/run/netns/ipt.*removed" -e "/run/netns/foreign.*nothing of ours")" = 2 ]'
check "foreign namespace byte-identical" '[ "$(state foreign | sed "s/counter packets [0-9]* bytes [0-9]*/counter/; s/\[[0-9]*:[0-9]*\]//")" = "$(echo "$before" | sed "s/counter packets [0-9]* bytes [0-9]*/counter/; s/\[[0-9]*:[0-9]*\]//")" ]'
check "a live pod (listener on 15001) is skipped, and said so" '[ "$(state live | grep -c istio-proxy-nat)" = 1 ] && echo "$report" | grep -q "/run/netns/live.*skipped: something listens on port 15001"'
report2=$("$bin" clean --all-namespaces 2>&1)
rc2=$?
check "second run exits 0 and finds nothing" '[ $rc2 = 0 ] && [ "$(echo "$report2" | grep -c removed)" = 0 ]'
forced=$("$bin" clean --all-namespaces --force 2>&1)
check "--force cleans the live pod" '[ $? = 0 ] && [ "$(state live | grep -c istio-proxy)" = 0 ] && echo "$forced" | grep -q "/run/netns/live.*removed"'
kill $listener %1 2>/dev/null

# Processes that exit while the walk runs: their /proc/PID/ns/net vanishes between the
# listing and the visit. That is not an error. (Twelve namespaces holding rules make the walk
# take long enough; thirty short-lived processes die all along it.)
for i in $(seq 12); do ip netns add busy$i && ip netns exec busy$i "$bin" "${seed[@]}" >/dev/null; done
vanishing_ok=0
for attempt in 1 2 3; do
    for i in $(seq 30); do unshare --net sleep "0.$((RANDOM % 9 + 1))" & done
    sleep 0.05
    "$bin" clean --all-namespaces >/tmp/meshinit-vanish.$$ 2>&1 && vanishing_ok=$((vanishing_ok + 1))
    wait_for=$(jobs -p); [ -n "$wait_for" ] && wait $wait_for 2>/dev/null
    for i in $(seq 12); do ip netns exec busy$i "$bin" "${seed[@]}" >/dev/null; done
done
gone=$(grep -c "gone before it was reached" /tmp/meshinit-vanish.$$)
check "processes exiting during the walk are skipped, not errors (3 walks exit 0; last one saw $gone vanish)" '[ $vanishing_ok = 3 ]'
rm -f /tmp/meshinit-vanish.$$
for i in $(seq 12); do ip netns del busy$i; done
for ns in ipt nl both foreign live; do ip netns del $ns; done
echo "all-namespaces: $passed passed, $failed failed"
[ "$failed" = 0 ]
