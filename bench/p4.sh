#!/usr/bin/env bash
# bench/p4.sh BIN [BASELINE] — P4 alone (scripts/bench measures it with everything else):
# `meshinit explain` of 10,000 packets (bench/gen-packets.py) against the seed's plan, text and
# JSON, stdin from a file through bench/seq-exec, output discarded; with BASELINE (e.g. the
# previous commit's release binary) both in the same hyperfine run. Needs no root. Writes
# bench/tmp/p4.json and bench/tmp/p4.md (hyperfine's markdown) and prints the table.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "$1")
baseline=${2:+$(realpath "$2")}
n=${P4_PACKETS:-10000}
tmp=$root/bench/tmp
mkdir -p "$tmp"
cc=$(command -v clang || command -v cc)
sx=$tmp/seq-exec
[ -x "$sx" ] && [ "$sx" -nt "$root/bench/seq-exec.c" ] || "$cc" -O2 -Wall -o "$sx" "$root/bench/seq-exec.c"
"$root/bench/gen-packets.py" "$n" >"$tmp/p4-packets.txt"
seed=(-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -b '*' -d 15090,15021,15020 --ipv6=on -x '')
q() { printf '%q ' "$@"; }
rows=()
for who in ${baseline:+baseline} this; do
    b=$bin
    [ "$who" = baseline ] && b=$baseline
    for format in text json; do
        rows+=(-n "$who: explain $n packets, $format"
            "$(q "$sx" -i "$tmp/p4-packets.txt" "$b" explain --format "$format" "${seed[@]}" -)")
    done
done
hyperfine -N --style basic --runs "${P4_RUNS:-30}" --warmup 3 --export-json "$tmp/p4.json" \
    --export-markdown "$tmp/p4.md" "${rows[@]}"
cat "$tmp/p4.md"
