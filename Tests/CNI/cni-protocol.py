#!/usr/bin/env python3
"""The CNI protocol and hostile input, against the real binary, in throwaway namespaces.

Several hundred calls of meshinit as a plugin, table-driven, derived from the CNI spec 1.1
(and libcni's skel where the spec leaves the detail open), for every command, every version,
both backends:

  del        DEL never blocks teardown: whatever it does not need (config keys, annotations,
             cniVersion, stdin itself, CNI_CONTAINERID/IFNAME/PATH) cannot make it fail; a
             namespace that is gone, empty, not a namespace, or the node's own is success and
             untouched; a pod with rules of ours is cleaned whatever the config says
  netns      ADD/CHECK: CNI_NETNS missing, relative, nonexistent, a file, a directory, the
             plugin's own namespace (/proc/self/ns/net, a /run/netns name of it) or PID 1's:
             an error, and nothing written to the node
  env        ADD/CHECK/STATUS/GC: each required variable missing or empty is code 4
  annotations  null map = empty (skipped), absent map = error naming the capability unless
             requireAnnotation is false (then captured), non-object map or runtimeConfig = 7
  versions   every command x every cniVersion: VERSION answers for all, STATUS/GC need 1.1.0,
             ADD/CHECK need 0.4.0+, DEL goes on
  prevResult ADD answers in the config's cniVersion, converting a prevResult of another one
  config     keys of the wrong type, null, duplicates, invalid UTF-8, node lookups (user
             names, redirect-dns without capture-all-dns): refused, nothing installed
  status     STATUS 50 naming the config key when the backend cannot work; GC
  logging    every command writes its line to logFile
  bounds     huge annotation, 50 MB stdin, depth bomb: short msg, bounded details, fast
  rollback   a failed ADD whose rollback fails in one step still runs the others and names
             what stayed (a fault-injecting iptables-nft-restore in PATH)
  check      CHECK 0 after ADD, 100 after a rule is deleted, 7 without prevResult

Every call's output is checked against the spec: success = the result JSON (ADD, VERSION)
or nothing; failure = non-zero exit and exactly one error JSON {cniVersion, code (int), msg
(str, <= 200 characters), details (str, <= 4 KiB)} on stdout. The host's ruleset is compared
before and after, and the node namespace must hold nothing of ours after every group.

    cni-protocol.py --bin PATH [--only GROUP...] [--backend nftables,iptables]

Ends with "cni-protocol: N passed, M failed"; exits 1 on failure. Under CI=true a missing
prerequisite is a failure.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

PREFIX = "cnip%d" % os.getpid()
NODE = PREFIX + "-node"
CAP = "io.kubernetes.cri.pod-annotations"
STATUS_ANNOTATION = {"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'}
VERSIONS = ["0.4.0", "1.0.0", "1.1.0"]
ALL_VERSIONS = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "1.2.0", "99.0.0"]
PATH = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
IP = shutil.which("ip") or "/usr/sbin/ip"


def sh(cmd, check=True, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise RuntimeError("%s -> %d: %s" % (" ".join(cmd), p.returncode, (p.stderr or p.stdout).strip()[:400]))
    return p


def host_state():
    rules = re.sub(r"counter packets \d+ bytes \d+", "counter", sh(["nft", "list", "ruleset"], check=False).stdout)
    legacy = sh(["iptables-legacy-save"], check=False).stdout if shutil.which("iptables-legacy-save") else ""
    legacy = "\n".join(l for l in legacy.splitlines() if not l.startswith("#") and not l.startswith(":"))
    return rules + "\n--legacy--\n" + legacy


def ours(ns):
    """Lines of ours in a namespace (both backends, both iptables variants, routes, ::6)."""
    left = []
    for cmd in (["nft", "list", "ruleset"], ["iptables-legacy-save"], ["ip6tables-legacy-save"],
                ["ip", "-6", "addr", "show", "dev", "lo"], ["ip", "-4", "rule"], ["ip", "-6", "rule"]):
        if not shutil.which(cmd[0]):
            continue
        out = sh(["ip", "netns", "exec", ns] + cmd, check=False).stdout
        for line in out.splitlines():
            if "ISTIO" in line or "istio-proxy" in line or "0x539" in line or "::6/128" in line:
                left.append("%s: %s" % (cmd[0], line.strip()))
    return left


class Suite:
    def __init__(self, binary, backends, work):
        self.binary = binary
        self.backends = backends
        self.work = work
        self.passed = 0
        self.failed = 0
        self.failures = []
        self.pods = 0
        self.log = os.path.join(work, "plugin.log")

    # -- namespaces ---------------------------------------------------------------------

    def pod(self):
        self.pods += 1
        ns = "%s-pod%d" % (PREFIX, self.pods)
        sh(["ip", "netns", "add", ns])
        sh(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
        return ns

    def drop(self, ns):
        sh(["ip", "netns", "del", ns], check=False)

    # -- one call -----------------------------------------------------------------------

    def call(self, command, stdin, env=None, drop=(), path=None, netns_exec=NODE):
        """Runs the plugin in the node namespace; returns (rc, stdout, stderr, seconds)."""
        e = {"PATH": path or PATH, "CNI_COMMAND": command, "CNI_CONTAINERID": "c-" + PREFIX,
             "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "CNI_NETNS": "/nonexistent",
             "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"}
        e.update(env or {})
        for k in drop:
            e.pop(k, None)
        data = stdin if isinstance(stdin, bytes) else (stdin if isinstance(stdin, str) else json.dumps(stdin)).encode()
        start = time.time()
        p = subprocess.run([IP, "netns", "exec", netns_exec, self.binary], input=data, capture_output=True,
                           env=e, timeout=60)
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace"), time.time() - start

    def case(self, group, name, command, stdin, env=None, drop=(), path=None, ok=None, code=None, codes=None,
             mentions=None, result_version=None, after=None, max_seconds=10.0, max_stdout=None):
        """One call and its checks. ok=True: success expected; code/codes: the error codes
        allowed; mentions: text the msg or details must hold; after(rc, out): more checks
        (returns a problem or None)."""
        label = "%s: %s %s" % (group, command, name)
        try:
            rc, out, err, seconds = self.call(command, stdin, env, drop, path)
        except subprocess.TimeoutExpired:
            return self.fail(label, "no answer within 60 s")
        problem = self.spec_check(command, rc, out, seconds, max_seconds, max_stdout)
        if problem is None:
            if ok and rc != 0:
                problem = "exit %d, want 0: %s" % (rc, (out or err).strip()[:300])
            elif (code is not None or codes is not None) and rc == 0:
                problem = "succeeded, want code %s: %s" % (code if code is not None else codes, out.strip()[:200])
            elif rc != 0 and (code is not None or codes is not None):
                error = json.loads(out)
                allowed = [code] if code is not None else codes
                if error["code"] not in allowed:
                    problem = "code %s, want %s: %s" % (error["code"], allowed, out.strip()[:300])
                elif mentions and mentions not in error["msg"] + " " + error.get("details", ""):
                    problem = "error does not name %r: %s" % (mentions, out.strip()[:300])
        if problem is None and rc == 0 and result_version is not None:
            got = json.loads(out).get("cniVersion") if out.strip() else None
            if got != result_version:
                problem = "result cniVersion %r, want %r: %s" % (got, result_version, out.strip()[:200])
        if problem is None and after is not None:
            problem = after(rc, out)
        if problem:
            return self.fail(label, problem)
        self.passed += 1
        return True

    def spec_check(self, command, rc, out, seconds, max_seconds, max_stdout):
        """The spec's output rules, for any call."""
        if seconds > max_seconds:
            return "took %.1f s" % seconds
        if max_stdout is not None and len(out) > max_stdout:
            return "stdout of %d bytes" % len(out)
        if rc == 0:
            if command in ("ADD", "VERSION"):
                try:
                    doc = json.loads(out)
                except ValueError:
                    return "success without a JSON result: %r" % out[:200]
                if not isinstance(doc, dict) or not isinstance(doc.get("cniVersion"), str):
                    return "result without cniVersion: %r" % out[:200]
            elif out.strip():
                return "%s printed %r (stdout is for results only)" % (command, out[:200])
            return None
        try:
            error = json.loads(out)
        except ValueError:
            return "exit %d without one error JSON on stdout: %r" % (rc, out[:300])
        if not isinstance(error, dict):
            return "error output is not an object"
        if not isinstance(error.get("cniVersion"), str) or not isinstance(error.get("code"), int) \
                or isinstance(error.get("code"), bool) or not isinstance(error.get("msg"), str):
            return "error JSON lacks cniVersion/int code/msg: %r" % out[:300]
        if "details" in error and not isinstance(error["details"], str):
            return "details is not a string"
        if len(error["msg"]) > 200:
            return "msg of %d characters" % len(error["msg"])
        if len(error.get("details", "").encode()) > 4096:
            return "details of %d bytes" % len(error["details"].encode())
        return None

    def fail(self, label, problem):
        self.failed += 1
        self.failures.append(label)
        print("FAIL %s: %s" % (label, problem), flush=True)
        return False

    def check_state(self, group, what, ns, want_ours):
        left = ours(ns)
        if bool(left) != want_ours:
            self.fail("%s: %s" % (group, what), ("rules of ours: %s" % "; ".join(left[:6])) if left
                      else "no rules of ours, want capture")
        else:
            self.passed += 1

    def node_clean(self, group):
        self.check_state(group, "nothing of ours in the node namespace", NODE, False)

    # -- configurations -----------------------------------------------------------------

    def conf(self, version="1.0.0", annotations=STATUS_ANNOTATION, backend="nftables", log=True, **keys):
        c = {"cniVersion": version, "name": "net", "type": "meshinit", "backend": backend,
             "capabilities": {CAP: True}}
        if log:
            c["logFile"] = self.log
        if annotations is not None:
            c["runtimeConfig"] = {CAP: annotations}
        c.update(keys)
        return c

    def add(self, ns, stdin, **kw):
        return self.call("ADD", stdin, env={"CNI_NETNS": "/run/netns/" + ns}, **kw)

    def install(self, ns, backend):
        rc, out, _, _ = self.add(ns, self.conf(backend=backend))
        if rc != 0 or not ours(ns):
            raise RuntimeError("could not install for the test (%s): %s" % (backend, out[:300]))


# ----------------------------------------------------------------------------------------
# Groups

GROUPS = []


def group(fn):
    GROUPS.append(fn)
    return fn


def hostile_stdins(s, version):
    """Configurations a DEL may be handed (cached at ADD time, from an older or broken setup)."""
    base = {"cniVersion": version, "name": "n", "type": "meshinit"}
    return [
        ("null annotation map (containerd, pod without annotations)", dict(base, runtimeConfig={CAP: None})),
        ("an unknown key", dict(base, foo=1)),
        ("a renamed key", dict(base, **{"envoy-prot": "15001"})),
        ("a bad annotation value", dict(base, runtimeConfig={CAP: dict(STATUS_ANNOTATION, **{
            "traffic.sidecar.istio.io/excludeOutboundPorts": "eighty"})})),
        ("annotations a string", dict(base, runtimeConfig={CAP: "x"})),
        ("runtimeConfig an array", dict(base, runtimeConfig=[1])),
        ("a bad value", dict(base, **{"envoy-port": "0"})),
        ("a user name", dict(base, **{"proxy-uid": "istio-proxy"})),
        ("no annotation map", base),
        ("a key twice", ('{"cniVersion":"%s","name":"n","type":"meshinit","a":1,"a":2}' % version).encode()),
        ("invalid UTF-8", ('{"cniVersion":"%s","name":"n","x":"' % version).encode() + b"\xff\xfe" + b'"}'),
        ("no cniVersion", {"name": "n"}),
        ("cniVersion 0.3.1", dict(base, cniVersion="0.3.1")),
        ("cniVersion 99.0.0", dict(base, cniVersion="99.0.0")),
        ("not JSON", b'{"cniVersion": '),
        ("empty stdin", b""),
        ("a JSON array", b"[1,2]"),
    ]


@group
def del_never_blocks(s):
    """DEL: whatever it does not need cannot fail it (issue 16, defects 1 and 2)."""
    g = "del"
    pod = s.pod()
    afile = os.path.join(s.work, "not-a-netns")
    open(afile, "w").close()
    targets = [("a vanished namespace", "/run/netns/%s-gone" % PREFIX), ("no namespace", ""),
               ("a regular file", afile), ("a directory", s.work), ("a pod without rules", "/run/netns/" + pod),
               ("a relative path", "run/netns/x")]
    for version in VERSIONS:
        for what, stdin in hostile_stdins(s, version):
            for target, path in targets:
                s.case(g, "%s, %s (%s)" % (what, target, version), "DEL", stdin, env={"CNI_NETNS": path}, ok=True)
    for missing in (["CNI_CONTAINERID"], ["CNI_IFNAME"], ["CNI_PATH"], ["CNI_ARGS"],
                    ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS", "CNI_NETNS"]):
        for version in VERSIONS:
            s.case(g, "without %s (%s)" % ("+".join(missing), version), "DEL", s.conf(version), drop=missing,
                   env={"CNI_NETNS": "/run/netns/" + pod}, ok=True)
    s.case(g, "bad CNI_ARGS", "DEL", s.conf(), env={"CNI_NETNS": "/run/netns/" + pod, "CNI_ARGS": "K8S_POD_NAME"},
           ok=True)
    # A pod with our rules: cleaned, whatever the (cached) config says.
    for backend in s.backends:
        for what, stdin in hostile_stdins(s, "1.0.0"):
            s.install(pod, backend)
            s.case(g, "%s removes the rules (%s)" % (what, backend), "DEL", stdin,
                   env={"CNI_NETNS": "/run/netns/" + pod}, ok=True)
            s.check_state(g, "%s, %s: nothing of ours left after DEL" % (what, backend), pod, False)
    # The node's own namespace: never touched (a meshinit install there stays).
    mark = s.pod()
    for backend in s.backends:
        s.install(mark, backend)
        before = ours(mark)
        for path in ("/proc/self/ns/net", "/run/netns/" + mark):
            rc, out, _, _ = s.call("DEL", s.conf(), env={"CNI_NETNS": path}, netns_exec=mark)
            if rc != 0:
                s.fail(g, "DEL of the plugin's own namespace %s (%s): exit %d %s" % (path, backend, rc, out[:200]))
            elif ours(mark) != before:
                s.fail(g, "DEL of the plugin's own namespace %s (%s) removed its rules" % (path, backend))
            else:
                s.passed += 1
        sh(["ip", "netns", "exec", mark, s.binary, "clean"], check=False)
    s.drop(mark)
    s.drop(pod)
    s.node_clean(g)


@group
def netns_refused(s):
    """ADD/CHECK never write outside a pod's namespace (defect 3)."""
    g = "netns"
    afile = os.path.join(s.work, "not-a-netns")
    open(afile, "w").close()
    node_link = "/run/netns/" + NODE
    cases = [("the plugin's own namespace /proc/self/ns/net", "/proc/self/ns/net", [4]),
             ("the plugin's own namespace by /proc/thread-self", "/proc/thread-self/ns/net", [4]),
             ("the node's namespace by its /run/netns name", node_link, [4]),
             ("PID 1's namespace", "/proc/1/ns/net", [4, 103, 104]),
             ("a nonexistent path", "/run/netns/%s-none" % PREFIX, [104]),
             ("a regular file", afile, [4]), ("a directory", s.work, [4]),
             ("another namespace type", "/proc/self/ns/uts", [4]),
             ("a relative path", "run/netns/x", [4]), ("an empty value", "", [4])]
    before = host_state()
    for version in VERSIONS:
        for backend in s.backends:
            for what, path, codes in cases:
                for command in ("ADD", "CHECK"):
                    stdin = s.conf(version, backend=backend, prevResult={"cniVersion": version})
                    s.case(g, "%s (%s, %s)" % (what, version, backend), command, stdin, env={"CNI_NETNS": path},
                           codes=codes)
            # Skipped pods too: the namespace is checked before anything is decided.
            s.case(g, "own namespace, pod without a sidecar (%s, %s)" % (version, backend), "ADD",
                   s.conf(version, annotations={}, backend=backend), env={"CNI_NETNS": "/proc/self/ns/net"}, codes=[4])
    s.node_clean(g)
    if host_state() != before:
        s.fail(g, "the host's ruleset changed")
    else:
        s.passed += 1


@group
def environment(s):
    """Each required variable missing or empty: code 4 (spec "Parameters", libcni's skel)."""
    g = "env"
    pod = s.pod()
    required = {"ADD": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
                "CHECK": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
                "STATUS": ["CNI_PATH"], "GC": ["CNI_PATH"]}
    for command, names in required.items():
        version = "1.1.0"
        stdin = s.conf(version, prevResult={"cniVersion": version})
        for name in names:
            s.case(g, "without %s" % name, command, stdin, drop=[name], env={"CNI_NETNS": "/run/netns/" + pod}, code=4)
            s.case(g, "with %s empty" % name, command, stdin, env={"CNI_NETNS": "/run/netns/" + pod, name: ""}, code=4)
    for name, value in (("CNI_IFNAME", "averyverylongifname"), ("CNI_IFNAME", "a/b"), ("CNI_IFNAME", "a b"),
                        ("CNI_IFNAME", ".."), ("CNI_CONTAINERID", "-x"), ("CNI_CONTAINERID", "a;b"),
                        ("CNI_ARGS", "K8S_POD_NAME"), ("CNI_ARGS", "=x")):
        for command in ("ADD", "CHECK"):
            s.case(g, "%s=%r" % (name, value), command, s.conf(prevResult={"cniVersion": "1.0.0"}),
                   env={"CNI_NETNS": "/run/netns/" + pod, name: value}, code=4)
    # (Without CNI_COMMAND at all it is not a plugin call: never run it so, it would install
    # Istio's defaults where it runs.)
    for value in ("", "add", "FOO"):
        rc, out, _, _ = s.call(value, s.conf(), env={"CNI_NETNS": "/run/netns/" + pod})
        if rc == 0 or json.loads(out).get("code") != 4:
            s.fail(g, "CNI_COMMAND=%r: exit %d %s" % (value, rc, out[:200]))
        else:
            s.passed += 1
    s.check_state(g, "nothing installed by refused calls", pod, False)
    s.drop(pod)
    s.node_clean(g)


@group
def annotations(s):
    """The annotation map: null = empty; absent = error naming the capability unless
    requireAnnotation is false; not an object = 7 (defects 1, 4 and 5)."""
    g = "annotations"
    for version in VERSIONS:
        for backend in s.backends:
            pod = s.pod()
            path = {"CNI_NETNS": "/run/netns/" + pod}
            tag = "(%s, %s)" % (version, backend)
            s.case(g, "null map: skipped " + tag, "ADD", s.conf(version, None, backend, runtimeConfig={CAP: None}),
                   env=path, ok=True, result_version=version)
            s.check_state(g, "null map: nothing installed " + tag, pod, False)
            s.case(g, "empty map: skipped " + tag, "ADD", s.conf(version, {}, backend), env=path, ok=True)
            for what, extra in (("no runtimeConfig", {}), ("runtimeConfig null", {"runtimeConfig": None}),
                                ("runtimeConfig without the key", {"runtimeConfig": {"portMappings": []}})):
                s.case(g, "%s: refused naming the capability %s" % (what, tag), "ADD",
                       s.conf(version, None, backend, **extra), env=path, code=7, mentions=CAP)
                s.check_state(g, "%s: nothing installed %s" % (what, tag), pod, False)
            for what, extra in (("a string", {"runtimeConfig": {CAP: "x"}}), ("an array", {"runtimeConfig": {CAP: []}}),
                                ("a number", {"runtimeConfig": {CAP: 1}}),
                                ("runtimeConfig a string", {"runtimeConfig": "x"}),
                                ("runtimeConfig an array", {"runtimeConfig": [CAP]}),
                                ("runtimeConfig a number", {"runtimeConfig": 7}),
                                ("an annotation value a number", {"runtimeConfig": {CAP: {"a": 1}}}),
                                ("an annotation value null", {"runtimeConfig": {CAP: {"sidecar.istio.io/status": None}}})):
                s.case(g, "%s: refused %s" % (what, tag), "ADD", s.conf(version, None, backend, **extra), env=path,
                       code=7)
            s.check_state(g, "refused maps: nothing installed " + tag, pod, False)
            s.case(g, "no map, requireAnnotation false: captured " + tag, "ADD",
                   s.conf(version, None, backend, requireAnnotation=False), env=path, ok=True)
            s.check_state(g, "no map, requireAnnotation false: captured " + tag, pod, True)
            s.case(g, "DEL " + tag, "DEL", s.conf(version), env=path, ok=True)
            s.check_state(g, "DEL removed it " + tag, pod, False)
            s.case(g, "status annotation: captured " + tag, "ADD", s.conf(version, backend=backend), env=path, ok=True)
            s.check_state(g, "status annotation: captured " + tag, pod, True)
            s.case(g, "CHECK " + tag, "CHECK", s.conf(version, backend=backend, prevResult={"cniVersion": version}),
                   env=path, ok=True)
            s.case(g, "DEL with a null map " + tag, "DEL", s.conf(version, None, runtimeConfig={CAP: None}), env=path,
                   ok=True)
            s.check_state(g, "DEL with a null map removed it " + tag, pod, False)
            s.drop(pod)
    s.node_clean(g)


@group
def versions(s):
    """Every command x every cniVersion (defect 5: VERSION for any version)."""
    g = "versions"
    pod = s.pod()
    path = {"CNI_NETNS": "/run/netns/" + pod}
    for version in ALL_VERSIONS:
        supported = version in VERSIONS
        s.case(g, "cniVersion %s" % version, "VERSION", {"cniVersion": version}, ok=True,
               after=lambda rc, out: None if {"0.4.0", "1.0.0", "1.1.0"} <= set(json.loads(out).get(
                   "supportedVersions", [])) else "supportedVersions: %s" % out)
        skip = s.conf(version, {})  # a pod without a sidecar: nothing to install
        s.case(g, "cniVersion %s" % version, "ADD", skip, env=path, **({"ok": True, "result_version": version}
                                                                        if supported else {"code": 1}))
        s.case(g, "cniVersion %s" % version, "CHECK", dict(skip, prevResult={"cniVersion": version}), env=path,
               **({"ok": True} if supported else {"code": 1}))
        s.case(g, "cniVersion %s" % version, "DEL", skip, env=path, ok=True)
        for command in ("STATUS", "GC"):
            s.case(g, "cniVersion %s" % version, command, s.conf(version), **(
                {"ok": True} if version == "1.1.0" else {"code": 1}))
    for stdin in (b"", b"{}", b"not json", b"[]", b'{"cniVersion": 1}'):
        s.case(g, "stdin %r" % stdin, "VERSION", stdin, ok=True)
    s.check_state(g, "nothing installed", pod, False)
    s.drop(pod)


RESULTS = {
    "0.2.0": {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/24", "gateway": "10.1.0.1"}, "dns": {}},
    "0.3.1": {"cniVersion": "0.3.1", "interfaces": [{"name": "eth0"}],
              "ips": [{"version": "4", "address": "10.1.0.5/24", "interface": 0}]},
    "0.4.0": {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.1.0.5/24"}]},
    "1.0.0": {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.5/24"}], "routes": [{"dst": "0.0.0.0/0"}]},
    "1.1.0": {"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.5/24"}]},
}


@group
def prev_result(s):
    """ADD answers in the config's cniVersion, whatever the prevResult's (defect 5)."""
    g = "prevResult"
    pod = s.pod()
    path = {"CNI_NETNS": "/run/netns/" + pod}
    for version in VERSIONS:
        for source, result in sorted(RESULTS.items()):
            def shape(rc, out, version=version):
                ips = json.loads(out).get("ips") or []
                if [ip.get("address") for ip in ips] != ["10.1.0.5/24"]:
                    return "ips lost: %s" % out
                if (version == "0.4.0") != all("version" in ip for ip in ips):
                    return "ips[].version for %s: %s" % (version, out)
                return None
            s.case(g, "%s into a %s config" % (source, version), "ADD", s.conf(version, {}, prevResult=result),
                   env=path, ok=True, result_version=version, after=shape)
        for bad, codes in (({"cniVersion": "9.9.9"}, [1]), ("x", [7]), ([1], [7]), ({"cniVersion": 1}, [7]),
                           ({"cniVersion": "1.0.0", "ips": {}}, [7])):
            s.case(g, "prevResult %s into %s" % (json.dumps(bad), version), "ADD", s.conf(version, {}, prevResult=bad),
                   env=path, codes=codes)
        s.case(g, "no prevResult (%s)" % version, "ADD", s.conf(version, {}), env=path, ok=True,
               result_version=version)
    s.drop(pod)


@group
def config_refused(s):
    """Wrong types, nulls, duplicates, invalid UTF-8, node lookups: refused, nothing installed."""
    g = "config"
    backend = s.backends[0]
    pod = s.pod()
    path = {"CNI_NETNS": "/run/netns/" + pod}
    wrong = {"envoy-port": [True, None, {}, [None]], "redirect-dns": [1, None, [], {}],
             "istio-service-exclude-cidr": [True, None, [{}]], "excludeNamespaces": ["kube-system", [1], None, {}],
             "backend": [1, None, "ebpf", ["auto"]], "requireAnnotation": ["true", 1, None],
             "logFile": ["relative", 1, None, ""], "capabilities": [1, "x", {"portMappings": 1}],
             "prevResult": [1, "x"], "args": [1, "x"], "dns": ["x"], "type": [1, True, []]}
    for key, values in wrong.items():
        for value in values:
            conf = s.conf(backend=backend)
            conf[key] = value
            s.case(g, "%s: %s" % (key, json.dumps(value)), "ADD", conf, env=path, code=7,
                   mentions=key if key != "capabilities" else "capabilit")
    for key, value, mentions in (("proxy-uid", "istio-proxy", "proxy-uid"), ("proxy-uid", "root", "proxy-uid"),
                                 ("proxy-uid", "", "proxy-uid"), ("proxy-gid", "istio-proxy", "proxy-gid"),
                                 ("redirect-dns", True, "capture-all-dns"),
                                 ("resolv-conf", "/etc/resolv.conf", "resolv-conf"), ("dry-run", True, "dry-run"),
                                 ("envoy-prot", "15001", "envoy-prot"), ("envoy-port", "0", "envoy-port")):
        s.case(g, "%s=%s" % (key, json.dumps(value)), "ADD", s.conf(backend=backend, **{key: value}), env=path,
               code=7, mentions=mentions)
    text = json.dumps(s.conf(backend=backend))
    s.case(g, "a key twice", "ADD", text[:-1] + ', "envoy-port": "15001", "envoy-port": "16001"}', env=path, code=7,
           mentions="envoy-port")
    s.case(g, "invalid UTF-8 in a value", "ADD", text[:-1].encode() + b', "excludeNamespaces": ["\xc0\xaf"]}',
           env=path, code=6)
    s.case(g, "a depth bomb", "ADD", b"[" * 200000, env=path, code=6, max_seconds=3)
    s.case(g, "not an object", "ADD", b'"x"', env=path, code=6)
    s.check_state(g, "nothing installed by refused configurations", pod, False)
    s.case(g, "redirect-dns with capture-all-dns: installed", "ADD",
           s.conf(backend=backend, **{"redirect-dns": True, "capture-all-dns": True, "proxy-uid": "1337"}),
           env=path, ok=True)
    s.check_state(g, "redirect-dns with capture-all-dns: installed", pod, True)
    s.case(g, "DEL", "DEL", s.conf(), env=path, ok=True)
    s.drop(pod)
    s.node_clean(g)


@group
def status_and_gc(s):
    """STATUS says whether ADD can work, naming the config key (50); GC (defect 5)."""
    g = "status"
    empty = os.path.join(s.work, "empty-path")
    os.makedirs(empty, exist_ok=True)
    s.case(g, "iptables backend without iptables binaries", "STATUS", s.conf("1.1.0", backend="iptables"),
           path=empty, code=50, mentions='"backend"',
           after=lambda rc, out: "names the flag" if "--native-nftables" in out else None)
    s.case(g, "iptables backend with iptables", "STATUS", s.conf("1.1.0", backend="iptables"), ok=True)
    for backend in ("nftables", "auto"):
        s.case(g, "%s backend, no binaries needed" % backend, "STATUS", s.conf("1.1.0", backend=backend), path=empty,
               ok=True)
    s.case(g, "a bad key", "STATUS", s.conf("1.1.0", foo=1), code=7, mentions="foo")
    s.case(g, "a bad value", "STATUS", s.conf("1.1.0", **{"envoy-port": "0"}), code=7, mentions="envoy-port")
    s.case(g, "ADD too: iptables backend without binaries is 102 naming the key", "ADD",
           s.conf(backend="iptables"), env={"CNI_NETNS": "/run/netns/" + s.pod()}, path=empty, code=102,
           mentions='"backend"', after=lambda rc, out: "names the flag" if "--native-nftables" in out else None)
    valid = [{"containerID": "c1", "ifname": "eth0"}]
    s.case(g, "GC with valid attachments", "GC", s.conf("1.1.0", **{"cni.dev/valid-attachments": valid}), ok=True)
    s.case(g, "GC without the list", "GC", s.conf("1.1.0"), ok=True)
    for bad in ("x", [1], [{"containerID": 1, "ifname": "eth0"}], {}):
        s.case(g, "GC with valid-attachments %s" % json.dumps(bad), "GC",
               s.conf("1.1.0", **{"cni.dev/valid-attachments": bad}), code=7)
    s.node_clean(g)


@group
def logging(s):
    """Every command logs its line to logFile (defect 5: GC and STATUS did not)."""
    g = "logging"
    pod = s.pod()
    path = {"CNI_NETNS": "/run/netns/" + pod}
    for command, stdin, expect_ok in (
            ("STATUS", s.conf("1.1.0"), True), ("GC", s.conf("1.1.0"), True), ("ADD", s.conf(), True),
            ("CHECK", s.conf(prevResult={"cniVersion": "1.0.0"}), True), ("DEL", s.conf(), True),
            ("DEL", s.conf(foo=1), True), ("ADD", s.conf(foo=1), False), ("STATUS", s.conf("1.0.0"), False),
            ("GC", s.conf("1.1.0", foo=1), False), ("ADD", s.conf(None), False)):
        before = open(s.log).read().count("\n") if os.path.exists(s.log) else 0

        def logged(rc, out, command=command):
            lines = open(s.log).read().splitlines() if os.path.exists(s.log) else []
            if len(lines) != before + 1:
                return "%d new lines in logFile, want 1" % (len(lines) - before)
            entry = json.loads(lines[-1])
            if entry.get("command") != command or not entry.get("verdict"):
                return "log line: %s" % lines[-1][:200]
            return None
        kw = {"ok": True} if expect_ok else {"codes": list(range(1, 200))}
        s.case(g, "%s %s logs to logFile" % (command, "ok" if expect_ok else "error"), command, stdin, env=path,
               after=logged, **kw)
    s.drop(pod)


@group
def bounds(s):
    """Hostile sizes: msg <= 200 characters, details <= 4 KiB, quick (defect 5)."""
    g = "bounds"
    pod = s.pod()
    path = {"CNI_NETNS": "/run/netns/" + pod}
    huge = "x" * 100000
    for annotation in ("traffic.sidecar.istio.io/excludeOutboundPorts", "traffic.sidecar.istio.io/excludeInterfaces",
                       "sidecar.istio.io/interceptionMode"):
        s.case(g, "a 100 kB %s" % annotation, "ADD", s.conf(annotations=dict(STATUS_ANNOTATION, **{annotation: huge})),
               env=path, code=7, mentions=annotation, max_stdout=1000)
    s.case(g, "a 100 kB unknown key", "ADD", s.conf(**{huge: 1}), env=path, code=7, max_stdout=1000)
    s.case(g, "a 100 kB config value", "ADD", s.conf(**{"envoy-port": huge}), env=path, code=7, max_stdout=1000)
    big = b'{"cniVersion":"1.0.0","name":"n","type":"meshinit","x":"' + b"y" * (50 << 20) + b'"}'
    s.case(g, "50 MB on stdin", "ADD", big, env=path, codes=[7], max_seconds=5, max_stdout=1000)
    s.case(g, "50 MB on stdin, DEL still succeeds", "DEL", big, env=path, ok=True, max_seconds=5)
    s.case(g, "50 MB on stdin, VERSION still answers", "VERSION", big, ok=True, max_seconds=5)
    s.check_state(g, "nothing installed", pod, False)
    s.drop(pod)


@group
def rollback(s):
    """A failed ADD: every rollback step runs, and what stayed is named (defect 6)."""
    g = "rollback"
    if "iptables" not in s.backends or not shutil.which("iptables-nft-restore"):
        return s.fail(g, "needs the iptables backend and iptables-nft-restore")
    wrap = os.path.join(s.work, "faulty")
    os.makedirs(wrap, exist_ok=True)
    real = shutil.which("iptables-nft-restore")
    with open(os.path.join(wrap, "iptables-nft-restore"), "w") as f:
        # Installs go through; the IPv4 cleanup payload (it deletes our chains) is refused.
        f.write("#!/bin/sh\npayload=$(cat)\ncase \"$payload\" in *'-X ISTIO'*) echo 'iptables-nft-restore: "
                "injected failure' >&2; exit 1;; esac\nprintf '%%s\\n' \"$payload\" | exec %s \"$@\"\n" % real)
    os.chmod(os.path.join(wrap, "iptables-nft-restore"), 0o755)
    pod = s.pod()
    for key in ("all", "default", "lo"):
        sh(["ip", "netns", "exec", pod, "sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % key])
    path = {"CNI_NETNS": "/run/netns/" + pod}

    def reported(rc, out):
        error = json.loads(out)
        text = error["msg"] + " " + error.get("details", "")
        if "injected failure" not in text or "rollback" not in text:
            return "the rollback's failure is not reported: %s" % out[:400]
        v6 = sh(["ip", "netns", "exec", pod, "ip6tables-nft-save"], check=False).stdout
        if "ISTIO" in v6:
            return "the rollback stopped at its first failure: IPv6 rules remain"
        v4 = sh(["ip", "netns", "exec", pod, "iptables-nft-save"], check=False).stdout
        if "ISTIO" not in v4:
            return "the fault injection did not work (no IPv4 rules left)"
        return None
    s.case(g, "IPv4 cleanup refused: IPv6 still removed, the failure named", "ADD",
           s.conf(backend="iptables", ipv6="on"), env=path, path=wrap + ":" + PATH, codes=list(range(100, 110)),
           after=reported)
    s.case(g, "the runtime's DEL then removes the rest", "DEL", s.conf(), env=path, ok=True)
    s.check_state(g, "nothing left after DEL", pod, False)
    # DEL that cannot remove something: an error naming it (the rest removed).
    sh(["ip", "netns", "exec", pod, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0"])
    sh(["ip", "netns", "exec", pod, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=0"])
    s.install(pod, "iptables")
    s.case(g, "DEL whose IPv4 cleanup fails: error naming it", "DEL", s.conf(), env=path, path=wrap + ":" + PATH,
           codes=list(range(100, 110)), mentions="injected failure",
           after=lambda rc, out: "IPv6 rules remain" if "ISTIO" in sh(
               ["ip", "netns", "exec", pod, "ip6tables-nft-save"], check=False).stdout else None)
    s.case(g, "DEL again, without the fault", "DEL", s.conf(), env=path, ok=True)
    s.check_state(g, "nothing left", pod, False)
    s.drop(pod)
    s.node_clean(g)


@group
def check(s):
    """CHECK: 0 after ADD, 100 after drift, 7 without prevResult, 0 for a skipped pod."""
    g = "check"
    for backend in s.backends:
        pod = s.pod()
        path = {"CNI_NETNS": "/run/netns/" + pod}
        prev = {"prevResult": RESULTS["1.0.0"]}
        s.case(g, "ADD (%s)" % backend, "ADD", s.conf(backend=backend, **prev), env=path, ok=True,
               result_version="1.0.0")
        s.case(g, "CHECK right after ADD (%s)" % backend, "CHECK", s.conf(backend=backend, **prev), env=path, ok=True)
        s.case(g, "CHECK without prevResult (%s)" % backend, "CHECK", s.conf(backend=backend), env=path, code=7,
               mentions="prevResult")
        s.case(g, "CHECK with a prevResult of an unknown version (%s)" % backend, "CHECK",
               s.conf(backend=backend, prevResult={"cniVersion": "9.9.9"}), env=path, code=1)
        s.case(g, "CHECK of a skipped pod (%s)" % backend, "CHECK", s.conf(annotations={}, backend=backend, **prev),
               env=path, ok=True)
        if backend == "nftables":
            sh(["ip", "netns", "exec", pod, "nft", "flush", "chain", "inet", "istio-proxy-nat", "istio-redirect"])
        else:
            sh(["ip", "netns", "exec", pod, "iptables-nft", "-t", "nat", "-F", "ISTIO_REDIRECT"])
        s.case(g, "CHECK after a rule was deleted (%s)" % backend, "CHECK", s.conf(backend=backend, **prev), env=path,
               code=100)
        s.case(g, "DEL (%s)" % backend, "DEL", s.conf(), env=path, ok=True)
        s.check_state(g, "nothing left (%s)" % backend, pod, False)
        s.drop(pod)


# ----------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--backend", default="nftables,iptables")
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    binary = os.path.abspath(a.bin)
    missing = [x for x in ("ip", "nft", "iptables-nft-save", "ip6tables-nft-save", "sysctl") if not shutil.which(x)]
    if os.geteuid() != 0:
        missing.append("root")
    if not os.access(binary, os.X_OK):
        missing.append(binary)
    if missing:
        print("cni-protocol: missing prerequisites: %s" % ", ".join(missing))
        if os.environ.get("CI") == "true":
            print("cni-protocol: 0 passed, 1 failed")
            return 1
        print("cni-protocol: 0 passed, 0 failed, 1 skipped")
        return 77
    work = tempfile.mkdtemp(prefix="meshinit-cni-protocol-")
    os.chmod(work, 0o755)
    host_before = host_state()
    s = Suite(binary, [b for b in a.backend.split(",") if b], work)
    start = time.time()
    try:
        sh(["ip", "netns", "add", NODE])
        sh(["ip", "netns", "exec", NODE, "ip", "link", "set", "lo", "up"])
        for fn in GROUPS:
            if a.only and fn.__name__ not in a.only:
                continue
            t = time.time()
            before = s.failed
            try:
                fn(s)
            except Exception as e:  # a harness failure is a failure
                s.fail(fn.__name__, "%s: %s" % (type(e).__name__, e))
            print("%s %s (%.1fs): %s" % ("ok  " if s.failed == before else "FAIL", fn.__name__, time.time() - t,
                                         " ".join(fn.__doc__.split())[:110]), flush=True)
    finally:
        for line in sh(["ip", "netns", "list"], check=False).stdout.splitlines():
            name = line.split(" ")[0]
            if name.startswith(PREFIX + "-"):
                sh(["ip", "netns", "del", name], check=False)
        shutil.rmtree(work, ignore_errors=True)
    if host_state() != host_before:
        s.fail("host", "the host namespace's ruleset changed")
    else:
        s.passed += 1
    if s.passed + s.failed < 2:
        s.fail("suite", "ran nothing")
    print("cni-protocol: %d calls and state checks in %.0f s" % (s.passed + s.failed, time.time() - start))
    print("cni-protocol: %d passed, %d failed" % (s.passed, s.failed))
    return 1 if s.failed else 0


if __name__ == "__main__":
    sys.exit(main())
