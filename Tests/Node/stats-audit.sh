#!/usr/bin/env bash
# `meshinit stats --all-namespaces` (the node audit) on a simulated node, per backend
# (iptables, nft): a pod namespace with a proxy listening on 15001 and no rules is listed
# as uncaptured (exit 3, named) when audited from another namespace; once capture is
# installed there the audit exits 0; capture that lets the app's traffic go (-x 0.0.0.0/0)
# is partial (exit 3); a namespace without a listener is never uncaptured; the Prometheus
# output parses with the Prometheus client library's parser and says the same.
#
# Mutation checked: treating "no rules installed" as no problem (Audit.assess's guard made
# `!rulesets.isEmpty || true`) fails the first three checks of each backend (exit 0, not named).
#
# Runs in private PID, mount and network namespaces (a private /proc and /run/netns), so the
# node-wide walk sees only the namespaces made here, never the machine's or another test's.
# Usage: stats-audit.sh BIN      Ends with "stats-audit: N passed, N failed".
set -uo pipefail
bin=$(realpath "$1")
here=$(dirname "$(realpath "$0")")
if [ "$(id -u)" != 0 ] || ! command -v unshare >/dev/null || ! command -v ip >/dev/null; then
    echo "stats-audit: needs root, unshare and ip"
    if [ "${CI:-}" = true ]; then echo "stats-audit: 0 passed, 1 failed"; exit 1; fi
    exit 77 # skipped (scripts/test counts it so)
fi
# The Prometheus client library is Debian's python3-prometheus-client: Debian's python3.
py=/usr/bin/python3
if ! "$py" -c 'import prometheus_client.parser' 2>/dev/null; then
    echo "stats-audit: needs python3-prometheus-client (scripts/install-deps)"
    if [ "${CI:-}" = true ]; then echo "stats-audit: 0 passed, 1 failed"; exit 1; fi
    exit 77
fi
if [ "${MESHINIT_INSIDE:-}" != 1 ]; then
    exec unshare --net --mount --pid --fork --mount-proc env MESHINIT_INSIDE=1 bash "$0" "$@"
fi
mount --make-rprivate /
mkdir -p /run/netns && mount -t tmpfs meshinit-netns /run/netns
ip link set lo up

passed=0
failed=0
check() {
    if eval "$2"; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}
seed=(-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020)
listen() { # NS PORT...: a proxy listening on the ports until killed
    ip netns exec "$1" "$py" -c 'import socket, sys, time
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", port)); s.listen(); socks.append(s)
time.sleep(120)' "${@:2}" &
    listeners+=($!)
}
audit() { "$bin" stats --all-namespaces "$@" 2>"$err"; }
err=$(mktemp)
listeners=()
for backend in iptables nft; do
    extra=()
    [ $backend = nft ] && extra=(--native-nftables)
    ns=pod-$backend
    ip netns add $ns && ip netns exec $ns ip link set lo up
    ip netns add idle-$backend && ip netns exec idle-$backend ip link set lo up
    listen $ns 15001
    sleep 0.5

    out=$(audit)
    rc=$?
    check "$backend: a proxy on 15001 without rules: exit 3" '[ $rc = 3 ]'
    check "$backend: ... and the namespace is named uncaptured" \
        'grep -q "/run/netns/$ns (netns [0-9]*): uncaptured; backends: none; listening: 15001$" <<<"$out" && grep -q "uncaptured: .*/run/netns/$ns" "$err"'
    check "$backend: a namespace without a listener is not uncaptured" \
        '! grep -q "uncaptured: .*idle-$backend" "$err" && grep -q "/run/netns/idle-$backend (netns [0-9]*): no-proxy" <<<"$out"'
    json=$(audit --format json)
    check "$backend: json lists it uncaptured" \
        "$py -c 'import json,sys; r=json.loads(sys.argv[1]); assert r[\"uncaptured\"]==[\"/run/netns/$ns\"], r' \"\$json\""

    listen $ns 15006
    ip netns exec $ns "$bin" "${seed[@]}" "${extra[@]}" -x 0.0.0.0/0 >/dev/null 2>&1
    sleep 0.5
    # Given the pod's flags, every rule is one explain reads: the app's traffic goes uncaptured.
    out=$(audit "${seed[@]}" -x 0.0.0.0/0)
    rc=$?
    check "$backend: capture that lets the app's traffic go (-x 0.0.0.0/0) is partial: exit 3" \
        '[ $rc = 3 ] && grep -q "/run/netns/$ns (netns [0-9]*): partial; backends: $backend" <<<"$out" && grep -q "outbound not captured" <<<"$out"'
    if [ $backend = iptables ]; then
        # iptables rules read back are understood without the flags (nft rules the flags do not plan are not).
        out=$(audit)
        rc=$?
        check "$backend: ... partial without flags too" '[ $rc = 3 ] && grep -q "outbound not captured" <<<"$out"'
    fi

    ip netns exec $ns "$bin" "${seed[@]}" "${extra[@]}" >/dev/null 2>&1
    out=$(audit "${seed[@]}")
    rc=$?
    check "$backend: with capture installed: exit 0" "[ \$rc = 0 ] || { echo \"\$out\"; cat \$err; false; }"
    check "$backend: ... the namespace is captured, through $backend" \
        'grep -q "/run/netns/$ns (netns [0-9]*): captured; backends: $backend; listening: 15001, 15006" <<<"$out" && ! grep -q note <<<"$out"'
    out=$(audit)
    rc=$?
    check "$backend: ... and exit 0 without flags" "[ \$rc = 0 ] || { echo \"\$out\"; cat \$err; false; }"
    prom=$(audit --format prometheus)
    check "$backend: the prometheus output parses, uncaptured 0 and the redirect counted per namespace" \
        "$py - \"\$prom\" $ns $backend <<'EOF'
import sys
from prometheus_client.parser import text_string_to_metric_families
text, ns, backend = sys.argv[1], '/run/netns/' + sys.argv[2], sys.argv[3]
fams = {f.name: f for f in text_string_to_metric_families(text)}
unc = [s for s in fams['meshinit_namespace_uncaptured'].samples if s.labels['netns'] == ns]
assert len(unc) == 1 and unc[0].value == 0, unc
inst = [s for s in fams['meshinit_rules_installed'].samples if s.labels['netns'] == ns and s.labels['backend'] == backend]
assert len(inst) == 1 and inst[0].value == 1, inst
red = [s for s in fams['meshinit_rule_packets'].samples if s.labels.get('netns') == ns and s.labels['path'] == 'outbound-captured']
assert red and all(s.labels['flag'].startswith('-p/--envoy-port') for s in red), red
EOF"
    # As deploy/node-stats.yaml runs it: the textfile collector's file, rewritten every second.
    dir=$(mktemp -d)
    "$bin" stats --all-namespaces --format prometheus --output "$dir/meshinit.prom" --interval 1s 2>/dev/null &
    writer=$!
    first=
    for _ in $(seq 50); do first=$(stat -c %i "$dir/meshinit.prom" 2>/dev/null) && break; sleep 0.1; done
    second=$first
    for _ in $(seq 50); do
        second=$(stat -c %i "$dir/meshinit.prom" 2>/dev/null)
        [ "$second" != "$first" ] && break
        sleep 0.1
    done
    kill $writer; wait $writer 2>/dev/null
    check "$backend: --output --interval rewrites the file (atomically: renamed over, a new inode each round)" \
        '[ -n "$first" ] && [ "$second" != "$first" ] && grep -q "^meshinit_namespace_uncaptured{netns=\"/run/netns/$ns\"} 0$" "$dir/meshinit.prom"'
    rm -rf "$dir"
    ip netns exec $ns "$bin" clean >/dev/null 2>&1
    for l in "${listeners[@]}"; do kill "$l" 2>/dev/null; wait "$l" 2>/dev/null; done
    listeners=()
    ip netns del $ns
    ip netns del idle-$backend
done
rm -f "$err"
echo "stats-audit: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
