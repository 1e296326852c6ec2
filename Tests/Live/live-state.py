#!/usr/bin/env python3
"""The kernel's state read honestly, through the command line, in throwaway namespaces.

Scenarios (issue 17, items 1 and 7):
- a dormant table of ours: `verify` exits 3 naming it, `explain --live` says not captured and
  why (exit 3), an install re-arms it (then verify 0, a re-run writes nothing);
- the backend that holds our rules is the one compared and updated: after a CNI ADD (backend
  auto = netlink) `verify`, `explain --live` and `clean` without flags find the nft rules; an
  init-container install without flags, and a CNI ADD after an iptables install, update the
  backend that holds ours instead of adding a second copy on the other; both present = said,
  both compared.

Usage: live-state.py --bin PATH [--only NAME...]
Prints one line per scenario and "live-state: N passed, N failed"; exits 1 on any failure.
With CI=true a missing prerequisite is a failure, never a skip.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import traceback

PREFIX = "h17a-live%d" % os.getpid()
IP = shutil.which("ip") or "/usr/sbin/ip"
SEED = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
        "-b", "*", "-d", "15090,15021,15020"]
# What the CNI plugin installs by default equals the seed (Istio's injected arguments).
CNI_CONF = {"cniVersion": "1.0.0", "name": "h17a", "type": "meshinit", "requireAnnotation": False}
APP = "out tcp 10.0.0.5:80 uid=1000"


class Failure(Exception):
    pass


def run(cmd, check=True, stdin=None, env=None):
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise Failure("%s exited %d: %s%s" % (" ".join(cmd), p.returncode, p.stdout[-2000:], p.stderr[-2000:]))
    return p


class Pod:
    """A throwaway network namespace (lo up)."""
    count = 0

    def __init__(self, binary):
        Pod.count += 1
        self.name = "%s-%d" % (PREFIX, Pod.count)
        self.path = "/var/run/netns/" + self.name
        self.binary = binary

    def __enter__(self):
        run([IP, "netns", "add", self.name])
        self.sh(["ip", "link", "set", "lo", "up"])
        return self

    def __exit__(self, *exc):
        run([IP, "netns", "del", self.name], check=False)

    def sh(self, cmd, check=True, stdin=None, env=None):
        return run([IP, "netns", "exec", self.name] + cmd, check=check, stdin=stdin, env=env)

    def meshinit(self, args, expect=0):
        p = self.sh([self.binary] + args, check=False)
        if expect is not None and p.returncode != expect:
            raise Failure("meshinit %s: exit %d, want %d\nstdout: %s\nstderr: %s" % (
                " ".join(args), p.returncode, expect, p.stdout[-3000:], p.stderr[-3000:]))
        return p

    def cni(self, command, conf=None, expect_ok=True):
        env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID="c" + self.name, CNI_NETNS=self.path,
                   CNI_IFNAME="eth0", CNI_PATH="/nonexistent",
                   CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + self.name)
        # As a runtime does, CHECK and DEL carry the result ADD printed as prevResult (CHECK
        # refuses to run without one).
        conf = dict(conf or CNI_CONF)
        if command in ("CHECK", "DEL") and getattr(self, "prev_result", None) is not None:
            conf["prevResult"] = self.prev_result
        # The runtime runs the plugin on the node (in the host namespace): it enters CNI_NETNS itself.
        p = run([self.binary], check=False, stdin=json.dumps(conf), env=env)
        if command == "ADD" and p.returncode == 0:
            self.prev_result = json.loads(p.stdout)
        if expect_ok and p.returncode != 0:
            raise Failure("CNI %s: exit %d: %s %s" % (command, p.returncode, p.stdout, p.stderr))
        return p

    def nft_tables(self):
        return [l for l in self.sh(["nft", "list", "tables"]).stdout.splitlines() if "istio-proxy" in l]

    def iptables_ours(self):
        out = self.sh(["iptables-save"]).stdout + self.sh(["ip6tables-save"]).stdout
        return [l for l in out.splitlines() if "ISTIO_" in l]


def expect(cond, what):
    if not cond:
        raise Failure(what)


def contains(text, needle, what):
    if needle not in text:
        raise Failure("%s: %r not in:\n%s" % (what, needle, text[-3000:]))


SCENARIOS = []


def scenario(fn):
    SCENARIOS.append(fn)
    return fn


@scenario
def dormant_table(binary):
    """nft's dormant flag on our table: verify 3, explain --live not captured, install re-arms."""
    with Pod(binary) as pod:
        pod.meshinit(SEED + ["--native-nftables"])
        pod.sh(["nft", "add", "table", "inet", "istio-proxy-nat", "{ flags dormant; }"])
        for flags in (["--native-nftables"], []):
            p = pod.meshinit(["verify"] + SEED + flags, expect=3)
            contains(p.stdout, "table inet istio-proxy-nat has flags dormant", "verify %s" % flags)
        p = pod.meshinit(["explain", "--live"] + SEED + [APP], expect=3)
        contains(p.stdout, "verdict: not captured", "explain --live")
        contains(p.stdout, "dormant", "explain --live says why")
        p = pod.meshinit(SEED)
        contains(p.stdout + p.stderr, "nftables: installed istio-proxy-nat", "install re-arms the dormant table")
        expect("dormant" not in pod.sh(["nft", "list", "table", "inet", "istio-proxy-nat"]).stdout,
               "the table is still dormant after install")
        expect(pod.iptables_ours() == [], "install added an iptables copy: %s" % pod.iptables_ours()[:3])
        pod.meshinit(["verify"] + SEED)
        p = pod.meshinit(SEED)
        contains(p.stdout + p.stderr, "nothing to do", "a second install")
        p = pod.meshinit(["explain", "--live"] + SEED + [APP])
        contains(p.stdout, "verdict: captured", "explain --live after the re-arm")


@scenario
def base_chain_policy_drop(binary):
    """A base chain of ours set to policy drop: verify 3, explain --live says so, install re-arms."""
    with Pod(binary) as pod:
        pod.meshinit(SEED + ["--native-nftables"])
        pod.sh(["nft", "add", "chain", "inet", "istio-proxy-nat", "output", "{ policy drop; }"])
        p = pod.meshinit(["verify"] + SEED, expect=3)
        contains(p.stdout, "policy drop", "verify")
        p = pod.meshinit(["explain", "--live"] + SEED + ["out tcp 10.0.0.5:80 uid=1337"], expect=3)
        contains(p.stdout, "policy drop", "explain --live names the policy")
        pod.meshinit(SEED)
        pod.meshinit(["verify"] + SEED)


@scenario
def cni_add_then_verify_explain_clean(binary):
    """Rules the CNI plugin installed (auto = netlink): verify, explain --live, CHECK and clean
    without flags find and compare those."""
    with Pod(binary) as pod:
        pod.cni("ADD")
        expect(pod.nft_tables() == ["table inet istio-proxy-nat"], "ADD: %s" % pod.nft_tables())
        p = pod.meshinit(["verify"] + SEED)
        contains(p.stdout + p.stderr, "comparing the nftables (netlink) rules", "verify says which backend")
        p = pod.meshinit(["explain", "--live"] + SEED + [APP])
        contains(p.stdout, "backend nft", "explain --live walks the nft rules")
        contains(p.stdout, "live: the kernel's rules agree with the plan", "explain --live")
        pod.cni("CHECK")
        # A change to those rules is drift for verify without flags, and for CHECK.
        pod.sh(["nft", "add", "chain", "inet", "istio-proxy-nat", "output", "{ policy drop; }"])
        pod.meshinit(["verify"] + SEED, expect=3)
        p = pod.cni("CHECK", expect_ok=False)
        expect(p.returncode != 0 and json.loads(p.stdout).get("code") == 100, "CHECK after a change: %s" % p.stdout)
        p = pod.meshinit(["clean"])
        contains(p.stdout + p.stderr, "removed: nft table inet istio-proxy-nat", "clean")
        expect(pod.nft_tables() == [], "clean left %s" % pod.nft_tables())


@scenario
def init_install_after_cni_add_converges_on_netlink(binary):
    """An init-container install without flags, where the CNI plugin installed through netlink:
    nothing written, no iptables copy."""
    with Pod(binary) as pod:
        pod.cni("ADD")
        before = pod.sh(["nft", "list", "ruleset"]).stdout
        p = pod.meshinit(SEED)
        contains(p.stdout + p.stderr, "nothing to do", "install")
        expect(pod.iptables_ours() == [], "install added an iptables copy: %s" % pod.iptables_ours()[:3])
        expect(pod.sh(["nft", "list", "ruleset"]).stdout == before, "install changed the nft rules")


@scenario
def cni_add_after_iptables_install_converges_on_iptables(binary):
    """A CNI ADD (auto) where an init container installed through iptables: the iptables rules
    are kept (updated), no nft copy; CHECK and verify compare iptables."""
    with Pod(binary) as pod:
        pod.meshinit(SEED)
        expect(pod.iptables_ours() != [], "the iptables install installed nothing")
        pod.cni("ADD")
        expect(pod.nft_tables() == [], "ADD added an nft copy: %s" % pod.nft_tables())
        pod.cni("CHECK")
        p = pod.meshinit(["verify"] + SEED)
        contains(p.stdout + p.stderr, "comparing the iptables rules", "verify says which backend")
        # A CNI config that forces nftables still gets nftables.
        pod.cni("ADD", conf=dict(CNI_CONF, backend="nftables"))
        expect(pod.nft_tables() == ["table inet istio-proxy-nat"], "backend nftables: %s" % pod.nft_tables())
        pod.cni("DEL")
        expect(pod.nft_tables() == [] and pod.iptables_ours() == [], "DEL left rules")


@scenario
def both_backends_said_and_compared(binary):
    """Rules of ours in both backends: verify says so and compares both (drift in either is 3);
    explain --live walks both."""
    with Pod(binary) as pod:
        pod.meshinit(SEED)
        pod.meshinit(SEED + ["--native-nftables"])
        p = pod.meshinit(["verify"] + SEED)
        contains(p.stdout + p.stderr, "installed through both iptables and nftables", "verify")
        p = pod.meshinit(["explain", "--live"] + SEED + [APP])
        contains(p.stdout, "backend iptables", "explain --live walks iptables")
        contains(p.stdout, "backend nft", "explain --live walks nft")
        pod.meshinit(SEED + ["--native-nftables", "-o", "6379"])
        p = pod.meshinit(["verify"] + SEED, expect=3)
        contains(p.stdout, "nftables (netlink): unexpected rule", "verify names the backend of a difference")
        # --native-nftables forces the comparison to nft only.
        p = pod.meshinit(["verify"] + SEED + ["-o", "6379", "--native-nftables"])
        p = pod.meshinit(["clean"])
        expect(pod.nft_tables() == [] and pod.iptables_ours() == [], "clean left rules")


def prerequisites():
    missing = [t for t in ("ip", "nft", "iptables-save", "ip6tables-save") if not shutil.which(t)]
    if os.geteuid() != 0:
        missing.insert(0, "root")
    return missing


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    binary = os.path.abspath(args.bin)
    missing = prerequisites()
    if missing:
        print("live-state: needs %s" % ", ".join(missing))
        if os.environ.get("CI") == "true":
            print("live-state: 0 passed, 1 failed")
            return 1
        print("live-state: 0 passed, 0 failed, 1 skipped")
        return 77
    passed = failed = 0
    for fn in SCENARIOS:
        if args.only and fn.__name__ not in args.only:
            continue
        try:
            fn(binary)
            passed += 1
            print("ok   %s" % fn.__name__, flush=True)
        except Exception as e:
            failed += 1
            print("FAIL %s: %s" % (fn.__name__, e), flush=True)
            if not isinstance(e, Failure):
                traceback.print_exc()
    if passed + failed == 0:
        print("live-state: no scenario ran")
        return 1
    print("live-state: %d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
