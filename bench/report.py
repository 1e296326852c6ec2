#!/usr/bin/env python3
"""Renders scripts/bench's measurements (bench/tmp) as markdown: one table per scenario with
median, min and the ratio to the meshinit netlink row, the issue's targets with the measured
ratios, and the machine facts."""
import argparse
import json
import os
import statistics

p = argparse.ArgumentParser()
p.add_argument("--tmp", required=True)
p.add_argument("--mode", default="full")
p.add_argument("--sizes", required=True)
p.add_argument("--ports", required=True)
p.add_argument("--rate-sizes", required=True)
p.add_argument("--plan-cidrs", required=True)
p.add_argument("--explain-packets", required=True)
a = p.parse_args()
tmp = a.tmp
sizes = [int(x) for x in a.sizes.split()]
rate_sizes = [int(x) for x in a.rate_sizes.split()]

LEGEND = {
    "meshinit netlink": "`meshinit … --native-nftables` (libnftnl batch over netlink)",
    "meshinit iptables": "`meshinit …` (iptables path: `iptables-nft-save` + `-restore --noflush` per family)",
    "meshinit CNI ADD": "meshinit as a chained CNI plugin: ADD of the same rules for a pod with Istio's status annotation (`bench/cni-exec` sets CNI_*, the configuration with a prevResult on stdin; the plugin enters the pod namespace itself, netlink backend)",
    "restore pair": "`iptables-nft-restore --noflush` + `ip6tables-nft-restore --noflush` of the same rules (run by `bench/seq-exec`, a small C launcher: fork, exec, wait)",
    "nft -f": "`nft -f` of the same rules (`meshinit plan --format nft`)",
    "Istio sequence": "Istio's whole command sequence, real binaries (`bench/istio-sequence.sh`: 16 probe commands, 2 state saves, 2 restores, 2 final saves; no Go start-up)",
    "bash": "`bash -c true`: the interpreter start-up included in the Istio replay (reference)",
    "hello": "static Swift hello world (`print(\"hi\")`, `swiftc -O -static-stdlib`)",
    "hello, fully static": "the same hello world linked with `-static-executable` (no dynamic loader; reference, not a target)",
    "true": "`/bin/true`",
}


def load(name):
    """Pools the rounds NAME-r1.json, NAME-r2.json, … of one scenario: per alternative, all run
    times, with median and min recomputed over them (in the order of the first round)."""
    pooled = {}
    k = 1
    while os.path.exists(path := os.path.join(tmp, f"{name}-r{k}.json")):
        with open(path) as f:
            for r in json.load(f)["results"]:
                pooled.setdefault(r["command"], []).extend(r["times"])
        k += 1
    if not pooled:
        raise SystemExit(f"report: no {name}-r1.json in {tmp}")
    return {c: {"times": t, "median": statistics.median(t), "min": min(t)} for c, t in pooled.items()}


def ms(seconds):
    v = seconds * 1000
    return f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def ratio(x, y):
    return f"{x / y:.2f}×"


def timing_table(results, ref="meshinit netlink", ref_label="× netlink"):
    out = [f"| alternative | median ms | min ms | {ref_label} (median) | runs (pooled over rounds) |", "|---|---:|---:|---:|---:|"]
    base = results[ref]["median"]
    for name, r in results.items():
        out.append(f"| {name} | {ms(r['median'])} | {ms(r['min'])} | {ratio(r['median'], base)} | {len(r['times'])} |")
    return out


targets = []  # (target, measured, met)


def target(text, measured, met):
    targets.append(f"| {text} | {measured} | {'met' if met else '**missed**'} |")


def faster(name, key, need):
    """The netlink row must be `need`× faster than row `key`: reports key/netlink (and by min)."""
    r = p1[key]["median"] / p1["meshinit netlink"]["median"]
    rmin = p1[key]["min"] / p1["meshinit netlink"]["min"]
    verdict = f"netlink {r:.2f}× faster" if r >= 1 else f"netlink {1 / r:.2f}× slower"
    target(f"P1 netlink ≥ {need}× faster than {name}", f"{name} / netlink = {r:.2f} ({verdict}; by min {rmin:.2f})", r >= need)


lines = [f"# meshinit benchmark ({'smoke run: one run each, small sizes — not results' if a.mode == 'smoke' else 'scripts/bench'})", ""]
facts = dict(l.rstrip("\n").split("\t", 1) for l in open(os.path.join(tmp, "facts.txt")))
lines += ["| machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts.items()] + [""]
lines += [
    "Every install alternative runs in a fresh network namespace per run (hyperfine `--prepare` "
    "deletes it and adds it again, only `lo`, up) and every measured command, `/bin/true` and the "
    "hello world included, is started through the same launcher (`bench/netns-exec`: `setns` into "
    "the namespace, then `execv`), so each pays the same start cost. All alternatives of a table "
    "run in one hyperfine invocation (`-N`, no shell, warm-up runs first), repeated in rounds whose "
    "runs are pooled, so that load from other work on this shared machine spreads over all "
    "alternatives alike. Times are process start to exit; ratios are of medians.",
    "",
]

# P1
p1 = load("p1")
lines += ["## P1 install latency (seed flags, IPv6 on)", "", "`-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d 15090,15021,15020 --ipv6=on`", ""]
lines += timing_table(p1) + [""]
lines += [f"- **{k}**: {v}" for k, v in LEGEND.items() if k in p1] + [""]
lines += ["meshinit also adds `::6/128` to `lo` (rtnetlink), as Istio does in-process; the replays do not.", ""]
nl = p1["meshinit netlink"]["median"]
r = nl / p1["hello"]["median"]
rmin = p1["meshinit netlink"]["min"] / p1["hello"]["min"]
target("P1 netlink ≤ 1.3× static hello world", f"netlink / hello = {r:.2f} (by min {rmin:.2f})", r <= 1.3)
faster("the restore pair", "restore pair", 3)
faster("`nft -f`", "nft -f", 2)
faster("Istio's sequence", "Istio sequence", 8)
r = p1["meshinit CNI ADD"]["median"] / nl
rmin = p1["meshinit CNI ADD"]["min"] / p1["meshinit netlink"]["min"]
target("P1 CNI ADD ≤ 1.2× the init-container install (netlink)", f"CNI ADD / netlink = {r:.2f} (by min {rmin:.2f})", r <= 1.2)
r = p1["meshinit iptables"]["median"] / p1["restore pair"]["median"]
rmin = p1["meshinit iptables"]["min"] / p1["restore pair"]["min"]
target("P1 meshinit iptables path ≤ 1.2× the restore pair", f"iptables path / restore pair = {r:.2f} (by min {rmin:.2f})", r <= 1.2)

# P2 install
lines += ["## P2 install at scale", ""]
for n in sizes:
    res = load(f"p2-install-{n}")
    lines += [f"### {n:,} excluded CIDRs + {int(a.ports):,} excluded ports", ""] + timing_table(res) + [""]
    if n == max(sizes):
        v = res["meshinit netlink"]["median"] * 1000
        vmin = res["meshinit netlink"]["min"] * 1000
        target(f"P2 netlink installs {n:,} CIDRs + {int(a.ports):,} ports in ≤ 25 ms", f"{v:.1f} ms median (min {vmin:.1f} ms)", v <= 25)

# P2 rate
rates = {}
for l in open(os.path.join(tmp, "p2-rate.txt")):
    path, n, _round, conns, secs, rate = l.split()
    rates.setdefault((path, int(n)), []).append(float(rate))
lines += ["## P2 new-connection rate through the capture", ""]
lines += [
    "Pod namespace (veth to a world namespace), listener on 15001 in the pod, `bench/conn-rate` in "
    "the pod connecting to 198.18.0.2:80 in the world namespace (nothing listens there: every "
    "connection that succeeds was redirected to 15001), one connection at a time, closed with RST. "
    "Exclusions are `-x` CIDRs, none of which matches. Each trial is bounded in time and count; "
    "trials alternate between the configurations.",
    "",
    "| path | excluded CIDRs | median conn/s | min conn/s | % of the path's rate at 0 | trials |",
    "|---|---:|---:|---:|---:|---:|",
]
for path in ("netlink", "iptables"):
    zero = statistics.median(rates[(path, rate_sizes[0])])
    for n in rate_sizes:
        v = rates[(path, n)]
        m = statistics.median(v)
        lines.append(f"| {path} | {n:,} | {m:,.0f} | {min(v):,.0f} | {100 * m / zero:.0f}% | {len(v)} |")
lines.append("")
top = max(rate_sizes)
for path in ("netlink", "iptables"):
    share = statistics.median(rates[(path, top)]) / statistics.median(rates[(path, 0)])
    if path == "netlink":
        target(f"P2 netlink rate at {top:,} exclusions ≥ 90% of the rate at 0", f"{100 * share:.0f}% of the rate at 0", share >= 0.9)
    else:
        targets.append(f"| P2 iptables path rate at {top:,} exclusions (reported, no target) | {100 * share:.0f}% of the rate at 0 | – |")

# P3
p3 = load("p3-plan")
lines += ["## P3 plan time, peak RSS, size", "", f"`meshinit plan` (no namespace, output discarded), {int(a.plan_cidrs):,} `-x` CIDRs:", ""]
lines += timing_table(p3, ref="hello", ref_label="× hello") + [""]
name = f"plan nft, {a.plan_cidrs} CIDRs"
v = p3[name]["median"] * 1000
vmin = p3[name]["min"] * 1000
target(f"P3 plan of {int(a.plan_cidrs):,} CIDRs ≤ 10 ms", f"{v:.1f} ms median, `--format nft` (min {vmin:.1f} ms)", v <= 10)
lines += ["| process | peak RSS (max of runs) |", "|---|---:|"]
rss = [l.rstrip("\n").split("\t") for l in open(os.path.join(tmp, "p3-rss.txt"))]
for n, kb in rss:
    lines.append(f"| {n} | {int(kb) * 1024 / 1e6:.1f} MB |")
lines += ["", "(`/usr/bin/time -v`'s maximum resident set size; for the iptables path it is the largest of meshinit and its `iptables-nft-*` children.)", ""]
worst = max(int(kb) for n, kb in rss if n.startswith("install"))
seed_rss = int(dict(rss)["install netlink, seed flags"])
target("P3 peak RSS of an install ≤ 10 MB (seed flags)", f"{seed_rss * 1024 / 1e6:.1f} MB (largest install measured: {worst * 1024 / 1e6:.1f} MB)", seed_rss * 1024 <= 10e6)
lines += ["| binary | size | stripped |", "|---|---:|---:|"]
for l in open(os.path.join(tmp, "p3-size.txt")):
    n, size, stripped = (l.rstrip("\n").split("\t") + [""])[:3]
    lines.append(f"| {n} | {int(size) / 1e6:.1f} MB | {int(stripped) / 1e6:.1f} MB |" if stripped else f"| {n} | {int(size) / 1e6:.1f} MB | – |")
lines.append("")

# P4
p4 = load("p4-explain")
n = int(a.explain_packets)
lines += ["## P4 explain", "", f"`meshinit explain` of {n:,} packets (`bench/gen-packets.py`: app, proxy, DNS, inbound, "
    "loopback and IPv6 packets, all distinct) against the seed's plan, read from stdin, output discarded; "
    "every command started by `bench/seq-exec` (stdin from the file):", ""]
lines += timing_table(p4, ref="plan nft, seed flags", ref_label="× plan") + [""]
for fmt in ("text", "json"):
    r = p4[f"explain {n} packets, {fmt}"]
    per = (r["median"] - p4["explain 1 packet"]["median"]) / max(n - 1, 1) * 1e6
    lines.append(f"- {fmt}: {per:.1f} µs per packet beyond the first (median minus the lone packet's median)")
lines.append("")
r = p4[f"explain {n} packets, text"]
j = p4[f"explain {n} packets, json"]
base = [k for k in p4 if k.startswith("baseline ")]
target(f"P4 explain of {n:,} packets ≤ 100 ms, text and JSON (issues 12, 18)", f"text {r['median'] * 1000:.1f} ms median "
       f"(min {r['min'] * 1000:.1f} ms), json {j['median'] * 1000:.1f} ms (min {j['min'] * 1000:.1f} ms)"
       + (" — baseline binary in the same run: " + ", ".join(f"{k[len('baseline '):]} {p4[k]['median'] * 1000:.1f} ms" for k in base)
          if base else ""), r["median"] <= 0.1 and j["median"] <= 0.1)

lines += ["## Targets (issues 5, 11, 12), from this run", "", "All ratios are of medians measured in this run (the verdict); ratios of the minimums, less "
    "sensitive to load from other work, in parentheses.", "", "| target | measured | |", "|---|---|---|"] + targets + [""]
print("\n".join(lines))
