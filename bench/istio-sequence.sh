#!/usr/bin/env bash
# istio-sequence.sh V4_RULES V6_RULES
# Replays, with the real binaries, the command sequence istio-iptables (pilot-agent) runs to
# install the capture with IPv6 on in a clean network namespace, as
# ../shared/docs/istio-iptables.md §2.1–2.4 describes (Go start-up and Go's in-process work not
# included; bash forks where Go would):
#   1. binary detection, v4 then v6 (§2.4, auto mode): probe <x>tables-legacy — save (its output
#      decides "existing rules": ≥ 3 newlines), save --version, `-t nat -A INPUT -p 255 -j
#      RETURN` (with --wait=30: legacy ≥ 1.6.2), the same with -D (result ignored) — and, as the
#      legacy variant has no rules, the same probe of <x>tables-nft (no --wait), which is chosen;
#   2. state verification (§2.3): one save per family (clean → apply; no -C checks);
#   3. apply (§2.1): one `<x>tables-restore --noflush` per family, rules on stdin;
#   4. the final save per family that Istio logs (§2.1 step 4).
# The `::6` address on lo that Istio adds through in-process netlink is not replayed.
set -euo pipefail
v4=$1
v6=$2
PATH=/usr/sbin:/usr/bin:/sbin:/bin

# probe BIN [--wait=30]: 0 if usable; sets existing=1 when BIN-save shows rules (Istio: ≥ 3
# newlines).
probe() {
    local bin=$1 dump
    local wait=("${@:2}")
    existing=0
    dump=$("$bin-save") || return 1
    local newlines=${dump//[!$'\n']/}
    [ ${#newlines} -ge 2 ] && existing=1 # $(...) drops the final newline
    "$bin-save" --version >/dev/null 2>&1 || true
    "$bin" "${wait[@]}" -t nat -A INPUT -p 255 -j RETURN >/dev/null || return 1
    "$bin" "${wait[@]}" -t nat -D INPUT -p 255 -j RETURN >/dev/null 2>&1 || true
}

detect() { # detect PREFIX (iptables|ip6tables) → prints the chosen binary
    if probe "$1-legacy" --wait=30 && [ "$existing" = 1 ]; then
        chosen=$1-legacy
    elif probe "$1-nft"; then
        chosen=$1-nft
    else
        probe "$1" || { echo "istio-sequence: no usable $1" >&2; exit 1; }
        chosen=$1
    fi
}

detect iptables
bin4=$chosen
detect ip6tables
bin6=$chosen

"$bin4-save" >/dev/null # state verification (clean namespace: nothing to compare)
"$bin6-save" >/dev/null
"$bin4-restore" --noflush <"$v4"
"$bin6-restore" --noflush <"$v6"
"$bin4-save" >/dev/null # the final state Istio logs
"$bin6-save" >/dev/null
