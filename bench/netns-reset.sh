#!/usr/bin/env bash
# netns-reset.sh NAME — hyperfine's --prepare: a fresh network namespace NAME for every run
# (the previous one, with whatever the last run installed, is deleted), with only `lo`, up.
set -euo pipefail
ip netns del "$1" 2>/dev/null || true
ip netns add "$1"
ip -n "$1" link set lo up
