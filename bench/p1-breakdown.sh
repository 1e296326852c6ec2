#!/usr/bin/env bash
# bench/p1-breakdown.sh [BIN]: P1 (issue 20) in one hyperfine run — meshinit's install through
# netlink beside the iptables-restore pair, `nft -f` and Istio's replayed sequence of the same
# rules, a fresh namespace before each run — and where meshinit's time goes, measured: the
# exec floor (a fully static no-op), user-space instructions by phase (callgrind), and the
# system calls (strace). Writes bench/results/p1-breakdown.md. Needs root and the helpers
# `scripts/bench --smoke` builds in bench/tmp (netns-exec, seq-exec, hello-static, p1.*).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=$(realpath "${1:-dist/meshinit}")
tmp=$root/bench/tmp
for f in netns-exec seq-exec hello-static p1.v4 p1.v6 p1.nft; do
    [ -e "$tmp/$f" ] || { echo "p1-breakdown: $tmp/$f missing: run scripts/bench --smoke first" >&2; exit 1; }
done
ns=p1b$$
trap 'ip netns del $ns 2>/dev/null || true' EXIT
nx=$tmp/netns-exec sx=$tmp/seq-exec reset=$root/bench/netns-reset.sh
# shellcheck disable=SC2054
seed=(-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020 --ipv6=on)
q() { printf '%q ' "$@"; }
out=$root/bench/results/p1-breakdown.md
runs=${RUNS:-40}
hyperfine -N --style basic --runs "$runs" --warmup 3 --prepare "$(q "$reset" "$ns")" \
    --export-json "$tmp/p1b.json" \
    -n "meshinit netlink" "$(q "$nx" "$ns" "$bin" "${seed[@]}" --native-nftables)" \
    -n "restore pair" "$(q "$nx" "$ns" "$sx" -i "$tmp/p1.v4" "$(command -v iptables-nft-restore)" --noflush :: -i "$tmp/p1.v6" "$(command -v ip6tables-nft-restore)" --noflush)" \
    -n "nft -f" "$(q "$nx" "$ns" "$(command -v nft)" -f "$tmp/p1.nft")" \
    -n "Istio sequence" "$(q "$nx" "$ns" "$(command -v bash)" "$root/bench/istio-sequence.sh" "$tmp/p1.v4" "$tmp/p1.v6")" \
    -n "meshinit plan (no kernel)" "$(q "$bin" plan --format nft "${seed[@]}")" \
    -n "hello, fully static (exec floor)" "$(q "$nx" "$ns" "$tmp/hello-static")" >/dev/null

# Instructions (user space) of one install, by phase: callgrind's inclusive counts.
"$reset" "$ns"
cg=$tmp/p1b.callgrind
syms=$tmp/p1b-syms
# The release build's unstripped binary (symbols for the phases; valgrind cannot read its
# DWARF, so debug info is dropped) when BIN is the shipped dist/meshinit built from it.
if [ "$bin" = "$root/dist/meshinit" ] && [ -x .build-release/release/meshinit ]; then
    objcopy --strip-debug .build-release/release/meshinit "$syms"
else
    cp "$bin" "$syms"
fi
ip netns exec "$ns" valgrind --tool=callgrind --callgrind-out-file="$cg" "$syms" "${seed[@]}" --native-nftables >/dev/null 2>"$tmp/p1b-vg.txt"
total=$(grep -o 'Collected : [0-9]*' "$tmp/p1b-vg.txt" | grep -o '[0-9]*$')
callgrind_annotate --inclusive=yes "$cg" 2>/dev/null | sed 's/,//g' >"$tmp/p1b-annotate.txt"
phase() { # phase LABEL PATTERN: the largest inclusive count of a function matching PATTERN
    local n
    n=$({ grep -E "$2" "$tmp/p1b-annotate.txt" || true; } | awk '{print $1}' | sort -rn | head -1)
    echo "| $1 | ${n:-0} |"
}
# System calls: how many, and the time inside them.
"$reset" "$ns"
ip netns exec "$ns" strace -f -c -o "$tmp/p1b-strace.txt" "$bin" "${seed[@]}" --native-nftables >/dev/null 2>&1

python3 - "$tmp/p1b.json" >"$out" <<'PY'
import json, statistics, sys
d = json.load(open(sys.argv[1]))
rows = {r["command"]: r["times"] for r in d["results"]}
med = {k: statistics.median(v) * 1e3 for k, v in rows.items()}
m = med["meshinit netlink"]
print("# P1 and where meshinit's install time goes\n")
print("One hyperfine run, a fresh namespace before each run, seed flags with IPv6 on (`bench/p1-breakdown.sh`).\n")
print("| alternative | median ms | min ms | × meshinit |")
print("|---|---:|---:|---:|")
for k, v in rows.items():
    print("| %s | %.2f | %.2f | %.2f |" % (k, med[k], min(v) * 1e3, med[k] / m))
print()
print("Targets: restore pair ≥ 3× → %.2f×; `nft -f` ≥ 2× → %.2f×; Istio's sequence ≥ 15× → %.2f×." % (
    med["restore pair"] / m, med["nft -f"] / m, med["Istio sequence"] / m))
floor = med["hello, fully static (exec floor)"]
print("\nmeshinit netlink %.2f ms = exec floor %.2f ms (a fully static no-op, in the same namespace launcher) + %.2f ms of meshinit's own work; `plan` (everything but the kernel) %.2f ms." % (m, floor, m - floor, med["meshinit plan (no kernel)"]))
PY
{
    echo
    echo "## User-space instructions of one install (callgrind, inclusive)"
    echo
    echo "| phase | instructions |"
    echo "|---|---:|"
    echo "| whole process | $total |"
    main=$({ grep -E ':meshinit_main ' "$tmp/p1b-annotate.txt" || true; } | awk '{print $1}' | sort -rn | head -1)
    echo "| before main (loader-free static start, Swift runtime init) | $((total - ${main:-0})) |"
    echo "| meshinit main | ${main:-0} |"
    phase "flag parse" 'IstioArguments.*parse'
    phase "resolve (flags → settings, incl. user lookup and IPv6 detection)" 'resolveSettings|resolveForCommand|ConfigResolver.*resolve'
    phase "plan" 'MeshPlanner0B0O4plan'
    phase "nf_tables batch build (libnftnl)" 'NftBatchBuilder|applyBatch|BatchWriter'
    phase "netlink I/O and read-back" 'NetfilterSocket|AckReader|readRuleset|Snapshot'
    phase "runtime type lookups (swift_getTypeByMangledName)" ':swift_getTypeByMangledName '
    phase "conformance scans (swift_conformsToProtocol)" 'swift_conformsToProtocolMaybeInstantiateSuperclasses'
    echo
    echo "## System calls of one install (strace -c)"
    echo
    echo '```'
    head -30 "$tmp/p1b-strace.txt"
    echo '```'
} >>"$out"
cat "$out"
