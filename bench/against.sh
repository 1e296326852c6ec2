#!/usr/bin/env bash
# scripts/bench --against REV: REV's release binary and the working tree's, side by side in the
# same hyperfine invocations (issue 20), for what pods and operators wait on: install through
# netlink and through iptables (seed flags, IPv6 on, a fresh namespace before each run), CNI ADD,
# `plan`, and `explain` of 10,000 packets (text and JSON). Prints median ratios (new / REV) and
# writes them to bench/results/against-REV.md.
#
#   scripts/bench --against REV [--bin PATH] [--runs N] [--rounds N] [--max-ratio R]
#
# REV's binary is built once with REV's own scripts/build-release in a detached worktree and
# cached by commit hash in bench/tmp/against/HASH/meshinit. --bin measures PATH instead of
# building the working tree (default: scripts/build-release → dist/meshinit). --max-ratio R makes
# the run exit 1 when an install or plan median is above R × REV's (a guard, e.g. 1.05).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
rev="" bin="" runs=20 rounds=3 max_ratio=""
while [ $# -gt 0 ]; do
    case $1 in
    --against) rev=$2; shift ;;
    --bin) bin=$(realpath "$2"); shift ;;
    --runs) runs=$2; shift ;;
    --rounds) rounds=$2; shift ;;
    --max-ratio) max_ratio=$2; shift ;;
    *) echo "bench --against: unknown argument $1" >&2; exit 64 ;;
    esac
    shift
done
[ -n "$rev" ] || { echo "bench --against: needs a revision" >&2; exit 64; }
hash=$(git rev-parse --verify --quiet "$rev^{commit}") || { echo "bench --against: $rev is not a commit here" >&2; exit 64; }
short=${hash:0:7}
[ "$(id -u)" = 0 ] || { echo "bench --against: needs root (it creates network namespaces)" >&2; exit 77; }

tmp=$root/bench/tmp/against
mkdir -p "$tmp" "$root/bench/results"
pfx=mia$$
cleanup() {
    local status=$?
    ip netns del "$pfx-ns" 2>/dev/null || true
    [ -d "$tmp/src-$short" ] && git worktree remove --force "$tmp/src-$short" 2>/dev/null || true
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the two binaries ----------------------------------------------------------------------------
old=$tmp/$hash/meshinit
if [ ! -x "$old" ]; then
    echo "bench --against: building $short's release binary (cached in ${old#"$root"/})"
    git worktree add --detach --force "$tmp/src-$short" "$hash" >/dev/null
    (cd "$tmp/src-$short" && scripts/build-release) >"$tmp/build-$short.log" 2>&1 ||
        { echo "bench --against: $short's build failed, see ${tmp#"$root"/}/build-$short.log" >&2; exit 1; }
    mkdir -p "$tmp/$hash"
    install -m 0755 "$tmp/src-$short/dist/meshinit" "$old"
    git worktree remove --force "$tmp/src-$short"
fi
if [ -z "$bin" ]; then
    scripts/build-release
    bin=$root/dist/meshinit
fi
new=$tmp/meshinit-new # a private copy: a rebuild cannot swap it mid-run
install -m 0755 "$bin" "$new"
here=$(git describe --always --dirty)

cc=$(command -v cc || command -v clang)
for c in netns-exec cni-exec seq-exec; do
    [ -x "$tmp/$c" ] && [ "$tmp/$c" -nt "bench/$c.c" ] ||
        "$cc" -O2 -Wall -static -o "$tmp/$c" "bench/$c.c" 2>/dev/null || "$cc" -O2 -Wall -o "$tmp/$c" "bench/$c.c"
done
nx=$tmp/netns-exec cx=$tmp/cni-exec sx=$tmp/seq-exec reset=$root/bench/netns-reset.sh
ns=$pfx-ns
# shellcheck disable=SC2054 # the commas are inside one value (-d's port list)
seed=(-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020 --ipv6=on)
q() { printf '%q ' "$@"; }
cat >"$tmp/cni.json" <<'CNICONF'
{"cniVersion":"1.0.0","name":"bench","type":"meshinit","ipv6":"on","backend":"auto",
 "runtimeConfig":{"io.kubernetes.cri.pod-annotations":{"sidecar.istio.io/status":"{\"containers\":[\"istio-proxy\"]}"}},
 "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/bench"}],
  "ips":[{"interface":0,"address":"10.22.0.5/16","gateway":"10.22.0.1"}],"routes":[{"dst":"0.0.0.0/0"}]}}
CNICONF
python3 bench/gen-packets.py 10000 >"$tmp/packets.txt"

# scenario NAME NEEDS_NS ARGV-TEMPLATE...: @BIN@ in the template is each binary in turn. A
# scenario REV's binary cannot run (a newer sub-command or flag) is reported, not measured.
results=()
scenario() {
    local name=$1 needs_ns=$2 k
    shift 2
    local cmds=() label b argv
    for label in "$short" "$here"; do
        b=$old
        [ "$label" = "$here" ] && b=$new
        argv=("${@//@BIN@/$b}")
        if [ "$needs_ns" = 1 ]; then "$reset" "$ns"; fi
        if ! "${argv[@]}" >/dev/null 2>"$tmp/probe.err"; then
            echo "bench --against: $name: $label's binary fails ($(head -c 200 "$tmp/probe.err")): not measured"
            return 0
        fi
        cmds+=(-n "$label" "$(q "${argv[@]}")")
    done
    local prepare=()
    [ "$needs_ns" = 1 ] && prepare=(--prepare "$(q "$reset" "$ns")")
    for k in $(seq "$rounds"); do
        hyperfine -N --style basic --runs "$runs" --warmup 2 "${prepare[@]}" \
            --export-json "$tmp/$name-r$k.json" "${cmds[@]}" >/dev/null
    done
    results+=("$name")
}
echo "bench --against: $short (REV) vs $here, $rounds rounds × $runs runs, one hyperfine per round"
scenario install-netlink 1 "$nx" "$ns" @BIN@ "${seed[@]}" --native-nftables
scenario install-iptables 1 "$nx" "$ns" @BIN@ "${seed[@]}"
scenario cni-add 1 "$cx" "$tmp/cni.json" "$ns" @BIN@
scenario plan-nft 0 "$sx" @BIN@ plan --format nft "${seed[@]}"
scenario plan-p 0 "$sx" @BIN@ plan -p 15001
scenario explain-10k-text 0 "$sx" -i "$tmp/packets.txt" @BIN@ explain "${seed[@]}" -
scenario explain-10k-json 0 "$sx" -i "$tmp/packets.txt" @BIN@ explain --format json "${seed[@]}" -

out=$root/bench/results/against-$short.md
status=0
python3 - "$tmp" "$short" "$here" "${max_ratio:-0}" "${results[@]}" >"$out" <<'PY' || status=$?
import json, statistics, sys
tmp, old, new, limit, names = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5:]
print("# side by side: %s (REV) vs %s\n" % (old, new))
print("One hyperfine invocation per round holds both binaries; medians pool every round's runs (ms).\n")
print("| scenario | %s median | %s median | ratio (new/REV) | %s min | %s min |" % (old, new, old, new))
print("|---|---:|---:|---:|---:|---:|")
over = []
for n in names:
    times = {}
    k = 1
    while True:
        try:
            d = json.load(open("%s/%s-r%d.json" % (tmp, n, k)))
        except FileNotFoundError:
            break
        for r in d["results"]:
            times.setdefault(r["command"], []).extend(r["times"])
        k += 1
    o, w = times[old], times[new]
    ratio = statistics.median(w) / statistics.median(o)
    print("| %s | %.2f | %.2f | %.3f | %.2f | %.2f |" % (n, 1e3 * statistics.median(o), 1e3 * statistics.median(w), ratio, 1e3 * min(o), 1e3 * min(w)))
    if limit and (n.startswith("install") or n.startswith("plan")) and ratio > limit:
        over.append("%s %.3f" % (n, ratio))
if over:
    print("\nabove %.2f× REV: %s" % (limit, ", ".join(over)))
sys.exit(1 if over else 0)
PY
cat "$out"
echo "bench --against: wrote ${out#"$root"/}"
exit $status
