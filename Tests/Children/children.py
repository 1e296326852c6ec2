#!/usr/bin/env python3
"""meshinit and the programs it runs (iptables-save/-restore), in throwaway network namespaces;
and the inputs it reads, which are bounded.

A fake iptables-restore is put first in PATH (meshinit finds its binaries in PATH; the variant
is forced with --force-iptables-binary), wrapping the real one:

  chatty          writes 256 KiB to stderr before it reads a ~260 KiB payload (-x with 6,000
                  CIDRs), then runs the real restore: install completes in seconds, verify 0.
  hung            applies the IPv6 payload for real, then never exits: with a 2 s deadline
                  (MESHINIT_CHILD_TIMEOUT, or --child-timeout) meshinit exits 124 within
                  seconds, one line naming the binary, and no rule of ours is left in
                  either family.
  hung, default   the same without a deadline given: killed after the documented 30 s
                  (between 30 and 40 s; run in the background while the others run).
  partial commit  a rule the kernel refuses is added to the raw block of the payload:
                  iptables-restore commits mangle and nat, then fails: every table is put
                  back exactly as it was (a foreign rule in nat kept), in that family and in
                  the one changed before.
  payload error   a restore failing with "does not exist" while nothing changed is reported
                  at once, not retried.
  bounded input   `explain -` with more than 16 MiB on stdin, a resolv.conf over 1 MiB, a
                  --cni-config over 1 MiB: exit 64, one line naming the input and the limit.

Usage: children.py --bin PATH [--variant nft|legacy ...] [--only NAME...]
Prints one line per scenario and "children: N passed, N failed"; exits 1 on any failure.
A missing prerequisite is a failure with CI=true; otherwise the run is skipped (exit 77).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

PREFIX = "mc%d" % os.getpid()
SEED = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "",
        "-b", "*", "-d", "15090,15021,15020"]
IP = shutil.which("ip") or "/usr/sbin/ip"


class Failure(Exception):
    pass


def sh(cmd, check=True, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise Failure("%s -> %d: %s" % (" ".join(cmd), p.returncode, (p.stderr or p.stdout).strip()[:600]))
    return p


class Namespace:
    counter = 0

    def __init__(self):
        Namespace.counter += 1
        self.name = "%s-%d" % (PREFIX, Namespace.counter)
        self.fakes = tempfile.mkdtemp(prefix="meshinit-children-")
        os.chmod(self.fakes, 0o755)

    def __enter__(self):
        sh([IP, "netns", "add", self.name])
        self.exec(["ip", "link", "set", "lo", "up"])
        return self

    def __exit__(self, *exc):
        # A fake child a meshinit without deadlines left hanging: the processes in our namespace.
        for pid in sh([IP, "netns", "pids", self.name], check=False).stdout.split():
            try:
                os.kill(int(pid), 9)
            except OSError:
                pass
        sh([IP, "netns", "del", self.name], check=False)
        shutil.rmtree(self.fakes, ignore_errors=True)

    def exec(self, cmd, **kw):
        return sh([IP, "netns", "exec", self.name] + cmd, **kw)

    def fake(self, name, script):
        """A fake `name` first in PATH: a Python script; REAL is the real binary's path."""
        real = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if not real:
            raise Failure("%s not found" % name)
        path = os.path.join(self.fakes, name)
        with open(path, "w") as f:
            f.write("#!%s\nimport os, sys, time\nREAL = %r\n%s\n" % (sys.executable, real, script))
        os.chmod(path, 0o755)

    def meshinit(self, binary, args, env=None, timeout=120):
        environment = dict(os.environ, PATH="%s:%s" % (self.fakes, os.environ.get("PATH", "/usr/sbin:/usr/bin")))
        environment.update(env or {})
        start = time.time()
        try:
            p = subprocess.run([IP, "netns", "exec", self.name, binary] + args, capture_output=True, text=True,
                               env=environment, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Failure("meshinit %s did not return within %d s" % (" ".join(args[:4]), timeout))
        return p, time.time() - start

    def state(self, variant):
        """Both families' dumps, counters and comments dropped."""
        out = []
        for tool in ("iptables-%s-save" % variant, "ip6tables-%s-save" % variant):
            for line in self.exec([tool]).stdout.splitlines():
                if not line.startswith("#"):
                    out.append(re.sub(r"\[\d+:\d+\]", "[0:0]", line))
        return "\n".join(out)


def ours(state):
    return [line for line in state.splitlines() if "ISTIO" in line]


def forced(variant):
    return ["--force-iptables-binary=%s" % variant]


SCENARIOS = []


def scenario(fn):
    SCENARIOS.append(fn)
    return fn


@scenario
def chatty_child_completes(binary, variant):
    """256 KiB on stderr before reading a ~260 KiB payload: install completes, verify 0."""
    cidrs = ",".join("10.%d.%d.0/24" % (i // 250, i % 250) for i in range(6000))
    args = SEED + ["-x", cidrs, "--ipv6=off"] + forced(variant)
    with Namespace() as ns:
        ns.fake("iptables-%s-restore" % variant,
                "sys.stderr.write('x' * 262144); sys.stderr.flush()\nos.execv(REAL, [REAL] + sys.argv[1:])")
        p, took = ns.meshinit(binary, args, timeout=60)
        if p.returncode != 0:
            raise Failure("install exited %d: %s" % (p.returncode, p.stderr.strip()[-400:]))
        if took > 20:
            raise Failure("install took %.1f s" % took)
        v, _ = ns.meshinit(binary, ["verify"] + args, timeout=60)
        if v.returncode != 0:
            raise Failure("verify exited %d: %s" % (v.returncode, (v.stdout + v.stderr)[-400:]))
        if len(ours(ns.state(variant))) < 6000:
            raise Failure("the 6,000 exclusions are not installed")


HANG_AFTER_APPLYING = """
data = sys.stdin.buffer.read()
import subprocess
subprocess.run([REAL] + sys.argv[1:], input=data)
marker = os.environ["MESHINIT_TEST_MARKER"]
if "--noflush" in sys.argv and not os.path.exists(marker):
    open(marker, "w").close()
    time.sleep(1000)
"""


def hung(binary, variant, deadline_env, deadline_flag, budget):
    """IPv6's restore applies its payload and hangs: exit 124 in time, nothing of ours left."""
    with Namespace() as ns:
        ns.fake("ip6tables-%s-restore" % variant, HANG_AFTER_APPLYING)
        env = {"MESHINIT_TEST_MARKER": os.path.join(ns.fakes, "hung-once")}
        if deadline_env:
            env["MESHINIT_CHILD_TIMEOUT"] = deadline_env
        args = SEED + ["--ipv6=on"] + forced(variant) + (["--child-timeout", deadline_flag] if deadline_flag else [])
        p, took = ns.meshinit(binary, args, env=env, timeout=budget[1] + 30)
        problems = []
        if p.returncode != 124:
            problems.append("exit %d (want 124)" % p.returncode)
        if not budget[0] <= took <= budget[1]:
            problems.append("took %.1f s (want %d-%d s)" % (took, budget[0], budget[1]))
        lines = p.stderr.strip().splitlines()
        if len(lines) != 1 or "ip6tables-%s-restore" % variant not in lines[0] or "did not finish" not in lines[0]:
            problems.append("stderr is not one line naming the binary: %r" % p.stderr[-400:])
        left = ours(ns.state(variant))
        if left:
            problems.append("rules of ours left: %s" % left[:4])
        if problems:
            raise Failure("; ".join(problems))


@scenario
def hung_child_env_deadline(binary, variant):
    """MESHINIT_CHILD_TIMEOUT=2s: exit 124 within seconds, rolled back."""
    hung(binary, variant, "2s", None, (2, 12))


@scenario
def hung_child_flag_deadline(binary, variant):
    """--child-timeout 1500ms (over the variable): exit 124 within seconds, rolled back."""
    hung(binary, variant, "60s", "1500ms", (1.5, 12))


def hung_child_default_deadline(binary, variant):
    """No deadline given: the documented 30 s."""
    hung(binary, variant, None, None, (30, 40))


INJECT_IN_RAW = """
data = sys.stdin.buffer.read()
if "--noflush" in sys.argv and b"*raw\\n" in data and b":ISTIO_OUTPUT_DNS" in data:
    with open(os.environ["MESHINIT_TEST_LOG"], "a") as log:
        log.write("injected\\n")
    head, tail = data.split(b"*raw\\n", 1)
    data = head + b"*raw\\n-A OUTPUT -j MESHINIT_TEST_NO_SUCH_CHAIN\\n" + tail
import subprocess
sys.exit(subprocess.run([REAL] + sys.argv[1:], input=data).returncode)
"""


def partial_commit(binary, variant, failing):
    args = SEED + ["-m", "TPROXY", "--redirect-dns", "--capture-all-dns", "--ipv6=on"] + forced(variant)
    with Namespace() as ns:
        for tool in ("iptables-%s" % variant, "ip6tables-%s" % variant):
            ns.exec([tool, "-t", "nat", "-A", "OUTPUT", "-o", "eth9", "-j", "ACCEPT"])
            ns.exec([tool, "-t", "mangle", "-A", "PREROUTING", "-i", "eth9", "-j", "ACCEPT"])
        before = ns.state(variant)
        ns.fake("%s-%s-restore" % (failing, variant), INJECT_IN_RAW)
        log = os.path.join(ns.fakes, "log")
        p, _ = ns.meshinit(binary, args, env={"MESHINIT_TEST_LOG": log}, timeout=60)
        if not os.path.exists(log):
            raise Failure("the failing rule was never injected (exit %d: %s)" % (p.returncode, p.stderr[-300:]))
        problems = []
        if p.returncode == 0:
            problems.append("install exited 0 with a refused rule")
        if len(p.stderr.strip().splitlines()) != 1:
            problems.append("stderr is not one line: %r" % p.stderr[-400:])
        after = ns.state(variant)
        if ours(after):
            problems.append("rules of ours left: %s" % ours(after)[:4])
        # iptables-nft keeps a table it created; what it holds must be as before.
        norm = lambda s: [l for l in s.splitlines() if l.startswith("-A") or (l.startswith(":") and "ACCEPT" not in l)]
        if norm(after) != norm(before):
            problems.append("state differs from before:\n%s\n---\n%s" % ("\n".join(norm(before)), "\n".join(norm(after))))
        if problems:
            raise Failure("; ".join(problems))


@scenario
def partial_commit_rolled_back(binary, variant):
    """IPv4's raw refused after its mangle and nat were committed: all put back."""
    partial_commit(binary, variant, "iptables")


@scenario
def partial_commit_rolled_back_both_families(binary, variant):
    """IPv6's raw refused after IPv4 and IPv6's mangle and nat: both families put back."""
    partial_commit(binary, variant, "ip6tables")


FAIL_LIKE_A_RACE = """
sys.stdin.buffer.read()
if "--noflush" in sys.argv:
    with open(os.environ["MESHINIT_TEST_LOG"], "a") as log:
        log.write("restore\\n")
    sys.stderr.write("iptables-restore: line 3 failed: Chain 'ISTIO_X' does not exist\\n")
    sys.exit(1)
"""


@scenario
def payload_error_not_retried(binary, variant):
    """A failure that reads like a concurrent change while nothing changed: reported, not retried."""
    with Namespace() as ns:
        ns.fake("iptables-%s-restore" % variant, FAIL_LIKE_A_RACE)
        log = os.path.join(ns.fakes, "log")
        p, _ = ns.meshinit(binary, SEED + ["--ipv6=off"] + forced(variant), env={"MESHINIT_TEST_LOG": log},
                           timeout=60)
        restores = open(log).read().split() if os.path.exists(log) else []
        if p.returncode != 1 or "does not exist" not in p.stderr or len(restores) != 1:
            raise Failure("exit %d, %d restores (want 1 and exit 1): %s" % (p.returncode, len(restores),
                                                                          p.stderr.strip()[-300:]))


def once(fn):
    """A scenario that does not depend on the iptables variant."""
    fn.once = True
    return fn


@scenario
@once
def bounded_input(binary, variant):
    """Inputs over their limit are refused with exit 64 and one line, never read whole."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="meshinit-input-") as tmp:
        resolv = os.path.join(tmp, "resolv.conf")
        with open(resolv, "w") as f:
            f.write("# padding\n" * 110000 + "nameserver 10.0.0.10\n")
        conflist = os.path.join(tmp, "big.conflist")
        with open(conflist, "w") as f:
            f.write('{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "meshinit"}], "pad": "%s"}'
                    % ("x" * (1 << 20)))
        runs = [
            ([binary, "explain"] + SEED + ["-"], b"# padding\n" * (17 * 1024 * 1024 // 10), "more than 16 MiB"),
            ([binary, "plan", "--redirect-dns", "--resolv-conf", resolv] + SEED, None, "--resolv-conf"),
            ([binary, "explain", "--cni-config", conflist, "out tcp 10.0.0.1:80"], None, "more than 1 MiB"),
        ]
        for cmd, stdin, mention in runs:
            p = subprocess.run(cmd, input=stdin, capture_output=True, timeout=60)
            err = p.stderr.decode(errors="replace")
            if p.returncode != 64 or len(err.strip().splitlines()) != 1 or mention not in err:
                problems.append("%s: exit %d, stderr %r (want 64 and one line with %r)" % (
                    " ".join(cmd[1:3]), p.returncode, err[-300:], mention))
    if problems:
        raise Failure("; ".join(problems))


def prerequisites(variants):
    missing = [b for b in ["ip"] + ["%s-%s-%s" % (f, v, k) for f in ("iptables", "ip6tables") for v in variants
                                    for k in ("save", "restore")]
               if not shutil.which(b, path="/usr/sbin:/usr/bin:/sbin:/bin")]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--variant", action="append", choices=["nft", "legacy"])
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    variants = a.variant or ["nft", "legacy"]
    binary = os.path.abspath(a.bin)
    missing = prerequisites(variants)
    if missing:
        print("children: missing prerequisites: %s" % ", ".join(missing))
        if os.environ.get("CI") == "true":
            print("children: 0 passed, 1 failed")
            return 1
        print("children: skipped (CI would fail)")
        return 77
    passed = failed = 0
    results = []

    def run(fn, variant, report=True):
        start = time.time()
        try:
            fn(binary, variant)
            results.append((True, "ok   %s[%s] (%.1fs)" % (fn.__name__, variant, time.time() - start)))
        except Exception as e:  # each scenario reports and the run goes on
            results.append((False, "FAIL %s[%s]: %s" % (fn.__name__, variant, e)))
        if report:
            print(results[-1][1], flush=True)

    background = None
    if not a.only or "hung_child_default_deadline" in a.only:
        # 30 s of waiting: overlapped with the other scenarios.
        background = threading.Thread(target=run, args=(hung_child_default_deadline, variants[0], False))
        background.start()
    for variant in variants:
        for fn in SCENARIOS:
            if (not a.only or fn.__name__ in a.only) and not (getattr(fn, "once", False) and variant != variants[0]):
                run(fn, variant)
    if background:
        background.join()
        print([r for r in results if "hung_child_default_deadline" in r[1]][0][1], flush=True)
    passed = sum(1 for ok, _ in results if ok)
    failed = len(results) - passed
    if not results:
        print("children: no scenario ran")
        failed = 1
    print("children: %d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
