#!/usr/bin/env python3
"""meshinit as a chained CNI plugin, driven by a real runtime (cni-run.py) with Debian's
/usr/lib/cni plugins, in throwaway network namespaces only.

Topology (all namespaces named cni<pid>-*, removed at the end, also on failure):

    node   cni<pid>-node: the bridge cni<pid>br (10.99.0.1/24, isGateway) and every plugin
           process (the runtime execs them through `ip netns exec cni<pid>-node`, as a runtime
           on that node would); a server on :80 and :81 answering "node <addr>:<port>"
    pod    cni<pid>-podN, one per scenario: loopback ADDed first (ifname lo, a separate
           single-plugin list, as containerd does), then the network list
           [bridge (host-local, dataDir in the temp dir, ipMasq false) -> meshinit] on eth0;
           in the pod: proxy listeners on :15001/:15006 answering
           "proxy <port> orig <SO_ORIGINAL_DST>", an app on :8080 answering "app 8080";
           clients run as the app uid 1000 or the proxy uid 1337 (setpriv)

The host namespace is never used: nothing runs in it but `ip netns add/del/exec`, and the host's
ruleset and ip_forward are compared before and after.

Modes:
    cni-test.py --bin PATH                 everything (needs meshinit to act as a CNI plugin
                                           when CNI_COMMAND is set)
    cni-test.py --without-meshinit         the chain minus meshinit: validates the harness (the
                                           pod gets an address, traffic flows uncaptured, CHECK,
                                           DEL, DEL again, DEL of a vanished netns); the checks
                                           that need the plugin are listed as "skip [plugin]"
Options: --backend nftables,iptables (the plugin conf's "backend"; the lifecycle scenario runs
once per backend), --only NAME..., --keep (leave the temp dir for inspection).

Prints one line per scenario, details indented below it, and "cni: N passed, M failed"; exits 1 on
any failure. With CI=true a missing prerequisite is a failure, never a skip.
"""
import argparse
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
PREFIX = "cni%d" % os.getpid()
NODE = PREFIX + "-node"
BRIDGE = PREFIX + "br"
SUBNET, GATEWAY = "10.99.0.0/24", "10.99.0.1"
NETWORK = PREFIX + "-net"
APP_UID, PROXY_UID = 1000, 1337
SO_ORIGINAL_DST = 80
CNI_DIR = "/usr/lib/cni"
ANNOTATIONS_CAP = "io.kubernetes.cri.pod-annotations"
# What the injector writes in CNI mode (istio-validation, not istio-init, as the init container).
SIDECAR_STATUS = json.dumps({"initContainers": ["istio-validation"], "containers": ["istio-proxy"],
                             "volumes": ["workload-socket", "credential-socket", "workload-certs", "istio-envoy",
                                         "istio-data", "istio-podinfo", "istio-token", "istiod-ca-cert"],
                             "imagePullSecrets": None, "revision": "default"}, separators=(",", ":"))
ISTIO_ANNOTATIONS = {"sidecar.istio.io/status": SIDECAR_STATUS, "kubectl.kubernetes.io/default-container": "app",
                     "prometheus.io/port": "15020", "prometheus.io/scrape": "true"}
EXCLUDED_NS = PREFIX + "-excluded"
# The meshinit plugin's object in the conflist: Istio flag long names as keys (the injector's
# defaults), plus the plugin's own keys.
MESHINIT_FLAGS = {
    "envoy-port": "15001",
    "inbound-capture-port": "15006",
    "proxy-uid": "1337",
    "proxy-gid": "1337",
    "istio-inbound-interception-mode": "REDIRECT",
    "istio-service-cidr": "*",
    "istio-service-exclude-cidr": "",
    "istio-inbound-ports": "*",
    "istio-local-exclude-ports": "15090,15021,15020",
}
PLUGIN_KEYS = {"type", "capabilities", "excludeNamespaces", "backend", "requireAnnotation", "logFile",
               "cniVersion", "name", "prevResult", "runtimeConfig"}
# Pod annotation -> meshinit flag, for the annotations these tests use.
ANNOTATION_FLAGS = {"traffic.sidecar.istio.io/excludeOutboundPorts": "--istio-local-outbound-ports-exclude"}


def load_runtime():
    spec = importlib.util.spec_from_file_location("cni_run", os.path.join(os.path.dirname(HERE), "cni-run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


cni_run = load_runtime()
CNIError = cni_run.CNIError


# ----------------------------------------------------------------------------------------
# Servers and clients (this same script, re-executed inside a namespace)

def original_dst(conn):
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, addr = struct.unpack("!2xH4s8x", raw)
    return "%s:%d" % (socket.inet_ntoa(addr), port)


def serve(kind, ports):
    import select
    socks = {}
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(64)
        socks[s] = port
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select(list(socks), [], [])
        for s in ready:
            conn, peer = s.accept()
            try:
                if kind == "proxy":
                    try:
                        orig = original_dst(conn)
                    except OSError:
                        orig = "none"
                    msg = "proxy %d orig %s" % (socks[s], orig)
                elif kind == "node":
                    msg = "node %s:%d" % conn.getsockname()
                else:
                    msg = "%s %d" % (kind, socks[s])
                conn.sendall((msg + "\n").encode())
            except OSError:
                pass
            finally:
                conn.close()


def client(host, port):
    s = socket.create_connection((host, port), timeout=3)
    s.settimeout(3)
    data = b""
    while True:
        chunk = s.recv(512)
        if not chunk:
            break
        data += chunk
    print(data.decode().strip())


# ----------------------------------------------------------------------------------------
# Orchestration

class Failure(Exception):
    pass


def sh(cmd, check=True, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise Failure("%s -> %d: %s" % (" ".join(cmd), p.returncode, (p.stderr or p.stdout).strip()[:800]))
    return p


def in_ns(ns, cmd, **kw):
    return sh(["ip", "netns", "exec", ns] + cmd, **kw)


def note(line):
    print("    " + line, flush=True)


class Env:
    """The run's shared state: temp dir, node namespace, plugin dir, binary."""

    def __init__(self, binary, plugin, with_meshinit, backends, keep):
        self.binary = binary
        self.plugin = plugin
        self.with_meshinit = with_meshinit
        self.backends = backends
        self.keep = keep
        self.procs = []
        self.work = tempfile.mkdtemp(prefix="meshinit-cni-")
        os.chmod(self.work, 0o755)
        self.script = os.path.join(self.work, "cni-test.py")  # readable by uid 1000/1337
        for src, dst in ((HERE, self.script), (os.path.join(os.path.dirname(HERE), "cni-run.py"),
                                                os.path.join(self.work, "cni-run.py"))):
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o644)
        self.plugins = os.path.join(self.work, "plugins")
        os.makedirs(self.plugins)
        if with_meshinit:
            os.symlink(plugin, os.path.join(self.plugins, "meshinit"))
        self.cni_path = [self.plugins, CNI_DIR]
        self.ipam = os.path.join(self.work, "ipam")
        self.cache = os.path.join(self.work, "cache")
        self.log = os.path.join(self.work, "meshinit-cni.log")
        self.host_before = host_state()

    def up(self):
        sh(["ip", "netns", "add", NODE])
        in_ns(NODE, ["ip", "link", "set", "lo", "up"])
        self.start(NODE, "node", "80", "81")

    def down(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()
        self.procs = []
        for ns in sh(["ip", "netns", "list"], check=False).stdout.split("\n"):
            name = ns.split(" ")[0]
            if name == PREFIX or name.startswith(PREFIX + "-"):
                sh(["ip", "netns", "del", name], check=False)
        if self.keep:
            print("cni: temp dir kept: %s" % self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def start(self, ns, kind, *ports):
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, self.script, "serve", kind] + list(ports),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        if p.stdout.readline().strip() != "ready":
            raise Failure("server %s %s in %s did not start: %s" % (kind, ports, ns, p.stderr.read()[:400]))
        self.procs.append(p)
        return p

    # -- conflists ---------------------------------------------------------------------------

    def bridge_plugin(self):
        return {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": False,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": self.ipam}}

    def meshinit_plugin(self, backend="nftables", **overrides):
        conf = {"type": "meshinit", "capabilities": {ANNOTATIONS_CAP: True}}
        conf.update(MESHINIT_FLAGS)
        conf.update({"excludeNamespaces": ["kube-system", EXCLUDED_NS], "backend": backend,
                     "requireAnnotation": True, "logFile": self.log})
        conf.update(overrides)
        return conf

    def conflist(self, meshinit=None, version="1.0.0"):
        """bridge -> meshinit (the bridge of containernetworking-plugins 1.1.1 speaks up to
        1.0.0, so the chain's cniVersion is 1.0.0). meshinit=None: the chain minus meshinit."""
        plugins = [self.bridge_plugin()] + ([meshinit] if meshinit else [])
        return {"cniVersion": version, "name": NETWORK, "plugins": plugins}

    def runtime(self, conflist):
        return cni_run.Runtime(conflist, self.cni_path, prefix=["ip", "netns", "exec", NODE], cache_dir=self.cache)

    def loopback_runtime(self):
        return self.runtime({"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}]})


class Pod:
    counter = 0

    def __init__(self, env, conflist, namespace="default", annotations=None, name=None, caps=None):
        Pod.counter += 1
        self.env = env
        self.ns = "%s-pod%d" % (PREFIX, Pod.counter)
        self.path = "/run/netns/" + self.ns
        self.cid = hashlib.sha256(self.ns.encode()).hexdigest()
        self.name = name or "app-%d" % Pod.counter
        self.namespace = namespace
        self.args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_INFRA_CONTAINER_ID=%s" % (
            namespace, self.name, self.cid)
        self.caps = caps if caps is not None else {
            ANNOTATIONS_CAP: dict(annotations if annotations is not None else ISTIO_ANNOTATIONS)}
        self.rt = env.runtime(conflist)
        self.lo = env.loopback_runtime()
        self.procs = []
        self.deleted = False
        self.ip = None

    def __enter__(self):
        sh(["ip", "netns", "add", self.ns])
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()
        if not self.deleted:  # best effort, as a runtime's teardown
            for rt, ifname, caps in ((self.rt, "eth0", self.caps), (self.lo, "lo", None)):
                try:
                    rt.delete(self.cid, self.path, ifname, self.args, caps)
                except Exception:
                    pass
        sh(["ip", "netns", "del", self.ns], check=False)

    # -- CNI operations, as the runtime does them ---------------------------------------------

    def add(self):
        self.lo.add(self.cid, self.path, "lo", self.args)
        result = self.rt.add(self.cid, self.path, "eth0", self.args, self.caps)
        for ip in result.get("ips", []):
            if ip["address"].startswith("10.99."):
                self.ip = ip["address"].split("/")[0]
        return result

    def check(self):
        self.rt.check(self.cid, self.path, "eth0", self.args, self.caps)

    def delete(self):
        self.rt.delete(self.cid, self.path, "eth0", self.args, self.caps)
        self.lo.delete(self.cid, self.path, "lo", self.args)

    def servers(self):
        self.procs.append(self.env.start(self.ns, "proxy", "15001", "15006"))
        self.procs.append(self.env.start(self.ns, "app", "8080"))

    def connect(self, host, port, uid=APP_UID):
        cmd = ["ip", "netns", "exec", self.ns, "setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups",
               sys.executable, self.env.script, "client", host, str(port)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
        if p.returncode != 0:
            return "error: " + (p.stderr.strip().splitlines() or ["?"])[-1]
        return p.stdout.strip()

    def connect_from_node(self, port):
        p = subprocess.run(["ip", "netns", "exec", NODE, sys.executable, self.env.script, "client", self.ip, str(port)],
                           capture_output=True, text=True, timeout=15)
        if p.returncode != 0:
            return "error: " + (p.stderr.strip().splitlines() or ["?"])[-1]
        return p.stdout.strip()

    def meshinit_call(self, command):
        calls = [c for c in self.rt.calls if c["plugin"] == "meshinit" and c["command"] == command]
        return calls[-1] if calls else None

    def plugin_result(self, plugin, command="ADD"):
        calls = [c for c in self.rt.calls if c["plugin"] == plugin and c["command"] == command]
        return json.loads(calls[-1]["stdout"]) if calls else None


def host_state():
    """What the host namespace must still look like at the end."""
    rules = sh(["nft", "list", "ruleset"], check=False).stdout
    rules = re.sub(r"counter packets \d+ bytes \d+", "counter", rules)
    fwd = open("/proc/sys/net/ipv4/ip_forward").read().strip()
    links = [l for l in sh(["ip", "-o", "link"], check=False).stdout.splitlines() if PREFIX in l]
    return {"nft list ruleset": rules, "ip_forward": fwd, "links named %s*" % PREFIX: "\n".join(links)}


def dumps(ns):
    """Everything a meshinit install could leave, by command (comments dropped)."""
    out = {}
    for tool in ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save",
                 "nft list ruleset", "ip -4 rule", "ip -6 rule", "ip -4 route show table all",
                 "ip -6 route show table all", "ip addr"):
        p = in_ns(ns, tool.split(), check=False)
        out[tool] = "\n".join(l for l in p.stdout.splitlines() if not l.startswith("#"))
    return out


def ours(ns):
    """Lines of ours in a namespace: ISTIO_* chains/jumps (iptables), inet istio-proxy-*
    tables (netlink), the TPROXY fwmark 0x539 rules, ::6 on lo."""
    left = []
    for tool, text in dumps(ns).items():
        for l in text.splitlines():
            if "ISTIO" in l or "istio-proxy" in l or "0x539" in l or "::6/128" in l:
                left.append("%s: %s" % (tool, l.strip()))
    return left


def nothing_ours(ns, when):
    left = ours(ns)
    if left:
        raise Failure("%s: rules of ours in %s:\n      %s" % (when, ns, "\n      ".join(left[:12])))


def expect(got, want, what):
    if not got.startswith(want):
        raise Failure("%s: got %r, want %r..." % (what, got, want))


def verify_flags(conf, annotations=None):
    """The meshinit flags equivalent to a plugin conf (+ pod annotations): what `meshinit plan`
    and `verify` are given to describe what ADD must install."""
    flags = []
    for key, value in conf.items():
        if key in PLUGIN_KEYS:
            continue
        if isinstance(value, bool):
            flags.append("--%s=%s" % (key, "true" if value else "false"))
        else:
            flags += ["--" + key, str(value)]
    for annotation, flag in ANNOTATION_FLAGS.items():
        if annotations and annotation in annotations:
            flags += [flag, annotations[annotation]]
    if conf.get("backend") == "nftables":
        flags.append("--native-nftables")
    return flags


def meshinit_verify(env, pod, flags):
    """`meshinit verify FLAGS` in the pod. With "backend": "auto" the plugin chooses: verify
    the netlink backend's plan when our inet istio-proxy-* tables are there."""
    if "--native-nftables" not in flags and "istio-proxy" in in_ns(pod.ns, ["nft", "list", "tables"]).stdout:
        flags = flags + ["--native-nftables"]
    return sh(["ip", "netns", "exec", pod.ns, env.binary, "verify"] + flags, check=False, timeout=60)


def delete_one_rule(pod):
    """Removes our outbound REDIRECT rule (drift), from whichever backend installed it."""
    text = in_ns(pod.ns, ["nft", "-a", "list", "ruleset"]).stdout
    table = chain = None
    for line in text.splitlines():
        m = re.match(r"table (\S+) (\S+) \{", line)
        if m:
            table = m.group(1, 2)
        m = re.match(r"\s+chain (\S+) \{", line)
        if m:
            chain = m.group(1)
        m = re.search(r"redirect to :15001 # handle (\d+)", line)
        if m and table and table[1].startswith("istio-proxy"):
            in_ns(pod.ns, ["nft", "delete", "rule", table[0], table[1], chain, "handle", m.group(1)])
            return "nft delete rule %s %s %s handle %s (%s)" % (table[0], table[1], chain, m.group(1), line.strip())
    for variant in ("nft", "legacy"):
        saved = in_ns(pod.ns, ["iptables-%s-save" % variant, "-t", "nat"], check=False).stdout
        for line in saved.splitlines():
            if line.startswith("-A ISTIO_") and "--to-ports 15001" in line:
                argv = shlex.split(line)
                in_ns(pod.ns, ["iptables-%s" % variant, "-t", "nat", "-D"] + argv[1:])
                return "iptables-%s -t nat -D %s" % (variant, " ".join(argv[1:]))
    raise Failure("no REDIRECT-to-15001 rule of ours found to delete")


def normalized(result):
    r = dict(result or {})
    r.pop("cniVersion", None)
    if r.get("dns") == {}:
        r.pop("dns")
    return r


def record(pod, command="ADD"):
    c = pod.meshinit_call(command)
    if not c:
        return
    note("meshinit %s env: %s" % (command, " ".join("%s=%s" % kv for kv in sorted(c["env"].items()))))
    conf = json.loads(c["stdin"])
    shown = {k: v for k, v in conf.items() if k in ("cniVersion", "name", "runtimeConfig")}
    shown["prevResult"] = "<%d interfaces, %d ips>" % (len(conf.get("prevResult", {}).get("interfaces", [])),
                                                      len(conf.get("prevResult", {}).get("ips", [])))
    note("meshinit %s stdin (abridged): %s" % (command, json.dumps(shown)[:700]))


def expect_cni_error(fn, what, code=None, min_code=None, mentions=None):
    try:
        fn()
    except CNIError as e:
        if e.code is None or not isinstance(e.error, dict):
            raise Failure("%s: no error JSON on stdout (exit %s): %s / %s" % (what, e.rc, e.stdout[:300], e.stderr[-300:]))
        if not isinstance(e.code, int) or not isinstance(e.msg, str) or "cniVersion" not in e.error:
            raise Failure("%s: error JSON lacks cniVersion/int code/msg: %s" % (what, e.stdout.strip()[:300]))
        if code is not None and e.code != code:
            raise Failure("%s: code %s, want %s: %s" % (what, e.code, code, e.stdout.strip()[:400]))
        if min_code is not None and e.code < min_code:
            raise Failure("%s: code %s, want >= %s: %s" % (what, e.code, min_code, e.stdout.strip()[:400]))
        if mentions and mentions not in "%s %s" % (e.msg, e.details):
            raise Failure("%s: error does not name %r: %s" % (what, mentions, e.stdout.strip()[:400]))
        note("%s -> exit %s: %s" % (what, e.rc, json.dumps(e.error)[:400]))
        return e
    raise Failure("%s: succeeded, want a CNI error" % what)


# ----------------------------------------------------------------------------------------
# Scenarios

SCENARIOS = []


def scenario(needs_plugin, per_backend=False):
    def wrap(fn):
        fn.needs_plugin = needs_plugin
        fn.per_backend = per_backend
        SCENARIOS.append(fn)
        return fn
    return wrap


@scenario(needs_plugin=False)
def harness_bridge_chain(env, backend):
    """The chain minus meshinit: the pod gets an address, traffic is not captured; CHECK, DEL,
    DEL again and DEL of a vanished netns succeed."""
    with Pod(env, env.conflist(None)) as pod:
        result = pod.add()
        note("CNI_ARGS=%s" % pod.args)
        if not pod.ip:
            raise Failure("no 10.99.x address in the ADD result: %s" % json.dumps(result))
        addr = in_ns(pod.ns, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        if pod.ip + "/24" not in addr:
            raise Failure("eth0 lacks %s: %s" % (pod.ip, addr))
        if "via %s" % GATEWAY not in in_ns(pod.ns, ["ip", "route"]).stdout:
            raise Failure("no default route via %s" % GATEWAY)
        if "state UP" not in in_ns(pod.ns, ["ip", "link", "show", "lo"]).stdout and \
                "UNKNOWN" not in in_ns(pod.ns, ["ip", "link", "show", "lo"]).stdout:
            raise Failure("lo not up after the loopback ADD")
        lease = os.path.join(env.ipam, NETWORK, pod.ip)
        if not os.path.exists(lease):
            raise Failure("host-local lease %s missing" % lease)
        note("pod %s: eth0 %s/24, default via %s, lease in %s" % (pod.ns, pod.ip, GATEWAY, os.path.dirname(lease)))
        pod.servers()
        expect(pod.connect(GATEWAY, 80), "node %s:80" % GATEWAY, "app uid to the node (uncaptured)")
        expect(pod.connect(GATEWAY, 80, uid=PROXY_UID), "node %s:80" % GATEWAY, "proxy uid to the node")
        expect(pod.connect_from_node(8080), "app 8080", "node to the pod's app (uncaptured)")
        pod.check()
        pod.delete()
        pod.deleted = True
        if "eth0" in in_ns(pod.ns, ["ip", "link"]).stdout:
            raise Failure("eth0 still there after DEL")
        if os.path.exists(lease):
            raise Failure("host-local lease not released by DEL")
        pod.delete()
        sh(["ip", "netns", "del", pod.ns])
        pod.delete()
        note("CHECK ok; DEL removed eth0 and the lease; DEL again ok; DEL after the netns was deleted ok")


@scenario(needs_plugin=True)
def version_and_status(env, backend):
    """VERSION lists 0.4.0, 1.0.0, 1.1.0; STATUS (a 1.1.0 list of meshinit alone) succeeds."""
    rt = env.runtime({"cniVersion": "1.1.0", "name": NETWORK, "plugins": [env.meshinit_plugin(backend)]})
    v = rt.version("meshinit", "1.1.0")
    note("VERSION -> %s" % json.dumps(v))
    if not isinstance(v, dict) or v.get("cniVersion") != "1.1.0":
        raise Failure("VERSION: want cniVersion 1.1.0, got %r" % v)
    missing = {"0.4.0", "1.0.0", "1.1.0"} - set(v.get("supportedVersions") or [])
    if missing:
        raise Failure("VERSION: supportedVersions lacks %s" % sorted(missing))
    asked = rt.status()
    c = rt.calls[-1]
    note("STATUS -> exit %s, stdout %r" % (c["rc"], c["stdout"].strip()[:200]))
    if asked != ["meshinit"]:
        raise Failure("STATUS was not asked: %r" % asked)
    nothing_ours(NODE, "after VERSION/STATUS")


@scenario(needs_plugin=True, per_backend=True)
def lifecycle(env, backend):
    """ADD -> the plan installed (verify), app captured with its original destination, proxy uid
    straight out, inbound captured; CHECK ok; one rule deleted -> CHECK fails (>= 100); DEL ->
    nothing of ours; DEL again; DEL after the netns is gone."""
    plugin = env.meshinit_plugin(backend)
    with Pod(env, env.conflist(plugin)) as pod:
        result = pod.add()
        record(pod)
        bridge = pod.plugin_result("bridge")
        if result.get("cniVersion") != "1.0.0":
            raise Failure("ADD result cniVersion %r, want the list's 1.0.0" % result.get("cniVersion"))
        if normalized(result) != normalized(bridge):
            raise Failure("chained ADD result is not prevResult passed through:\n  meshinit: %s\n  bridge:   %s" %
                          (json.dumps(result), json.dumps(bridge)))
        flags = verify_flags(plugin)
        v = meshinit_verify(env, pod, flags)
        if v.returncode != 0:
            raise Failure("installed rules are not the plan of %s (verify exit %d):\n%s" %
                          (" ".join(flags), v.returncode, (v.stdout + v.stderr)[-1200:]))
        note("meshinit verify %s -> 0" % " ".join(shlex.quote(f) for f in flags))
        nothing_ours(NODE, "after ADD (the node namespace)")
        pod.servers()
        expect(pod.connect(GATEWAY, 80), "proxy 15001 orig %s:80" % GATEWAY, "app uid outbound captured")
        expect(pod.connect(GATEWAY, 80, uid=PROXY_UID), "node %s:80" % GATEWAY, "proxy uid goes straight out")
        expect(pod.connect_from_node(8080), "proxy 15006 orig %s:8080" % pod.ip, "inbound captured")
        note("app -> %s:80 captured by :15001 with its original destination; uid 1337 reached the node; "
             "inbound :8080 -> :15006" % GATEWAY)
        pod.check()
        note("CHECK ok")
        what = delete_one_rule(pod)
        note("drift: %s" % what)
        if meshinit_verify(env, pod, flags).returncode != 3:
            raise Failure("meshinit verify does not see the drift (the test's own check)")
        expect_cni_error(pod.check, "CHECK after the drift", min_code=100)
        pod.delete()
        pod.deleted = True
        nothing_ours(pod.ns, "after DEL")
        pod.delete()
        sh(["ip", "netns", "del", pod.ns])
        pod.delete()
        nothing_ours(NODE, "after DEL (the node namespace)")
        note("DEL left nothing of ours; DEL again ok; DEL after the netns was deleted ok")


@scenario(needs_plugin=True)
def annotation_excludes_outbound_port(env, backend):
    """traffic.sidecar.istio.io/excludeOutboundPorts=81 (from runtimeConfig): :81 goes out, :80
    is captured, and the rules are the plan of the conf's flags plus -o 81."""
    plugin = env.meshinit_plugin(backend)
    annotations = dict(ISTIO_ANNOTATIONS, **{"traffic.sidecar.istio.io/excludeOutboundPorts": "81"})
    with Pod(env, env.conflist(plugin), annotations=annotations) as pod:
        pod.add()
        record(pod)
        conf = json.loads(pod.meshinit_call("ADD")["stdin"])
        if conf.get("runtimeConfig", {}).get(ANNOTATIONS_CAP) != annotations:
            raise Failure("the runtime did not pass the annotations (harness bug): %s" % conf.get("runtimeConfig"))
        flags = verify_flags(plugin, annotations)
        v = meshinit_verify(env, pod, flags)
        if v.returncode != 0:
            raise Failure("rules are not the plan of %s:\n%s" % (" ".join(flags), (v.stdout + v.stderr)[-1200:]))
        pod.servers()
        expect(pod.connect(GATEWAY, 81), "node %s:81" % GATEWAY, "excluded outbound port 81")
        expect(pod.connect(GATEWAY, 80), "proxy 15001 orig %s:80" % GATEWAY, "port 80 still captured")
        pod.check()
        pod.delete()
        pod.deleted = True
        nothing_ours(pod.ns, "after DEL")


def skipped_pod(env, backend, why, namespace="default", annotations=None):
    with Pod(env, env.conflist(env.meshinit_plugin(backend)), namespace=namespace, annotations=annotations) as pod:
        result = pod.add()
        note("%s; CNI_ARGS=%s" % (why, pod.args))
        if normalized(result) != normalized(pod.plugin_result("bridge")):
            raise Failure("skipped pod: ADD result is not prevResult passed through: %s" % json.dumps(result))
        nothing_ours(pod.ns, "skipped pod after ADD")
        nothing_ours(NODE, "skipped pod after ADD (the node namespace)")
        pod.servers()
        expect(pod.connect(GATEWAY, 80), "node %s:80" % GATEWAY, "skipped pod: app uid not captured")
        pod.check()
        pod.delete()
        pod.deleted = True
        nothing_ours(pod.ns, "skipped pod after DEL")


@scenario(needs_plugin=True)
def skip_without_sidecar_status(env, backend):
    """No sidecar.istio.io/status annotation (requireAnnotation true): ADD succeeds, nothing done."""
    skipped_pod(env, backend, "annotations without sidecar.istio.io/status",
                annotations={"kubectl.kubernetes.io/default-container": "app"})


@scenario(needs_plugin=True)
def skip_inject_false(env, backend):
    """sidecar.istio.io/inject=false skips even with a status annotation."""
    skipped_pod(env, backend, "sidecar.istio.io/inject=false",
                annotations=dict(ISTIO_ANNOTATIONS, **{"sidecar.istio.io/inject": "false"}))


@scenario(needs_plugin=True)
def skip_excluded_namespace(env, backend):
    """K8S_POD_NAMESPACE in excludeNamespaces skips."""
    skipped_pod(env, backend, "namespace %s is in excludeNamespaces" % EXCLUDED_NS, namespace=EXCLUDED_NS)


def direct(env, command, stdin, pod_path, drop=(), args=None):
    """Execs meshinit alone, as a runtime would for its place in the chain."""
    rt = env.runtime({"cniVersion": "1.0.0", "name": NETWORK, "plugins": []})
    e = {"CNI_CONTAINERID": "c" + PREFIX, "CNI_NETNS": pod_path, "CNI_IFNAME": "eth0",
         "CNI_ARGS": args or "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=direct"}
    for k in drop:
        e.pop(k)
    return lambda: rt.run_plugin("meshinit", command, stdin, e)


def fake_prev_result(path):
    return {"cniVersion": "1.0.0",
            "interfaces": [{"name": BRIDGE, "mac": "02:00:00:00:00:01"}, {"name": "veth0", "mac": "02:00:00:00:00:02"},
                           {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": path}],
            "ips": [{"interface": 2, "address": "10.99.0.200/24", "gateway": GATEWAY}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}


@scenario(needs_plugin=True)
def error_paths(env, backend):
    """Bad JSON -> 6; ADD without CNI_NETNS -> 4; unknown cniVersion -> 1; a vanished netns ->
    ADD/CHECK error, DEL ok; a bad conf value -> 7; a bad annotation -> 7 naming it; nothing
    installed after any error (pod and node namespaces)."""
    with Pod(env, env.conflist(env.meshinit_plugin(backend))) as pod:
        def conf(**kw):
            c = env.runtime(env.conflist(env.meshinit_plugin(backend))).plugin_conf(
                env.meshinit_plugin(backend), fake_prev_result(pod.path), {ANNOTATIONS_CAP: ISTIO_ANNOTATIONS})
            c.update(kw)
            return c
        expect_cni_error(direct(env, "ADD", b'{"cniVersion": "1.0.0", "name": ', pod.path), "ADD, bad JSON", code=6)
        expect_cni_error(direct(env, "ADD", conf(), pod.path, drop=("CNI_NETNS",)), "ADD without CNI_NETNS", code=4)
        expect_cni_error(direct(env, "ADD", conf(cniVersion="99.0.0"), pod.path), "ADD, cniVersion 99.0.0", code=1)
        bad_conf = conf()
        bad_conf["envoy-port"] = "0"
        expect_cni_error(direct(env, "ADD", bad_conf, pod.path), "ADD, envoy-port \"0\" in the conf", code=7)
        for ns in (pod.ns, NODE):
            nothing_ours(ns, "after the direct errors")

        gone = PREFIX + "-gone"
        sh(["ip", "netns", "add", gone])
        sh(["ip", "netns", "del", gone])
        gone_path = "/run/netns/" + gone
        expect_cni_error(direct(env, "ADD", conf(prevResult=fake_prev_result(gone_path)), gone_path),
                         "ADD into a vanished netns")
        expect_cni_error(direct(env, "CHECK", conf(prevResult=fake_prev_result(gone_path)), gone_path),
                         "CHECK of a vanished netns")
        direct(env, "DEL", conf(prevResult=fake_prev_result(gone_path)), gone_path)()
        note("DEL of a vanished netns -> 0")
        nothing_ours(NODE, "after the vanished-netns calls")

    annotation = "traffic.sidecar.istio.io/excludeOutboundPorts"
    bad = dict(ISTIO_ANNOTATIONS, **{annotation: "81,eighty"})
    with Pod(env, env.conflist(env.meshinit_plugin(backend)), annotations=bad) as pod:
        e = expect_cni_error(pod.add, "chained ADD, %s=81,eighty" % annotation, code=7, mentions=annotation)
        if e.plugin != "meshinit":
            raise Failure("the error came from %s, not meshinit" % e.plugin)
        nothing_ours(pod.ns, "after the failed ADD")
        nothing_ours(NODE, "after the failed ADD (the node namespace)")
        pod.delete()  # what the runtime does after a failed ADD
        pod.deleted = True
        nothing_ours(pod.ns, "after the DEL that follows the failed ADD")
        note("the runtime's DEL after the failed ADD -> 0")

    # The kernel refuses part of the install after the rules went in: IPv6 is disabled in the
    # pod (so adding ::6/128 to lo is refused) while the conf asks for IPv6 rules. ADD must
    # fail with an error of ours and leave nothing behind (the rules it had installed removed).
    with Pod(env, env.conflist(env.meshinit_plugin(backend, ipv6="on"))) as pod:
        for key in ("all", "default", "lo"):
            in_ns(pod.ns, ["sysctl", "-qw", "net.ipv6.conf.%s.disable_ipv6=1" % key])
        e = expect_cni_error(pod.add, "chained ADD, IPv6 rules in a pod with IPv6 disabled", min_code=100,
                             mentions="::6")
        if e.plugin != "meshinit":
            raise Failure("the error came from %s, not meshinit" % e.plugin)
        nothing_ours(pod.ns, "after the kernel refused part of the install")
        pod.delete()
        pod.deleted = True


def torn_down(pod, lease, what):
    """The runtime's DEL went through the whole chain: eth0 and the host-local lease gone."""
    if "eth0" in in_ns(pod.ns, ["ip", "link"]).stdout:
        raise Failure("%s: eth0 still there after DEL (the bridge's DEL did not run)" % what)
    if os.path.exists(lease):
        raise Failure("%s: the host-local lease %s leaked (the primary's DEL did not run)" % (what, lease))


@scenario(needs_plugin=True, per_backend=True)
def pod_without_annotations(env, backend):
    """containerd's runtimeConfig for a pod without annotations is {"...pod-annotations": null}:
    ADD succeeds (no sidecar: skipped), DEL goes through the chain (IP released, eth0 gone)."""
    with Pod(env, env.conflist(env.meshinit_plugin(backend)), caps={ANNOTATIONS_CAP: None}) as pod:
        result = pod.add()
        conf = json.loads(pod.meshinit_call("ADD")["stdin"])
        if conf.get("runtimeConfig") != {ANNOTATIONS_CAP: None}:
            raise Failure("the runtime did not pass a null annotation map (harness): %s" % conf.get("runtimeConfig"))
        if normalized(result) != normalized(pod.plugin_result("bridge")):
            raise Failure("ADD result is not prevResult passed through: %s" % json.dumps(result))
        nothing_ours(pod.ns, "a pod without annotations after ADD")
        lease = os.path.join(env.ipam, NETWORK, pod.ip)
        pod.delete()
        pod.deleted = True
        torn_down(pod, lease, "a pod without annotations")
        note("runtimeConfig %s: ADD skipped, DEL released %s" % (json.dumps(conf["runtimeConfig"]), pod.ip))


@scenario(needs_plugin=True, per_backend=True)
def del_with_changed_config(env, backend):
    """The DEL gets the config cached at ADD time, from before an upgrade that renamed a key
    (or with a typo): it removes our rules and the chain's DEL goes on (IP released)."""
    plugin = env.meshinit_plugin(backend)
    with Pod(env, env.conflist(plugin)) as pod:
        pod.add()
        lease = os.path.join(env.ipam, NETWORK, pod.ip)
        if not ours(pod.ns):
            raise Failure("ADD installed nothing")
        stale = env.runtime(env.conflist(dict(plugin, **{"envoy-prot": "15001", "foo": 1})))
        bad = dict(pod.caps[ANNOTATIONS_CAP], **{"traffic.sidecar.istio.io/excludeOutboundPorts": "eighty"})
        stale.delete(pod.cid, pod.path, "eth0", pod.args, {ANNOTATIONS_CAP: bad},
                     prev_result=pod.rt.cached_result(pod.cid, "eth0"))
        pod.lo.delete(pod.cid, pod.path, "lo", pod.args)
        pod.deleted = True
        nothing_ours(pod.ns, "after the DEL with an unknown key and a bad annotation")
        torn_down(pod, lease, "DEL with an unknown key")
        note("DEL with keys envoy-prot, foo and excludeOutboundPorts=eighty: rules removed, lease released")


@scenario(needs_plugin=True)
def gc_keeps_valid_attachments(env, backend):
    """GC (1.1.0) listing a live attachment as valid leaves its rules in place."""
    plugin = env.meshinit_plugin(backend)
    with Pod(env, env.conflist(plugin)) as pod:
        pod.add()
        gc_rt = env.runtime({"cniVersion": "1.1.0", "name": NETWORK, "plugins": [plugin]})
        valid = [{"containerID": pod.cid, "ifname": "eth0"}]
        gc_rt.gc(valid)
        note("GC cni.dev/valid-attachments=%s -> exit %s" % (json.dumps(valid), gc_rt.calls[-1]["rc"]))
        v = meshinit_verify(env, pod, verify_flags(plugin))
        if v.returncode != 0:
            raise Failure("GC changed a valid attachment's rules:\n%s" % (v.stdout + v.stderr)[-800:])
        pod.delete()
        pod.deleted = True
        nothing_ours(pod.ns, "after DEL")


# ----------------------------------------------------------------------------------------

def speaks_cni(binary):
    """VERSION in a throwaway namespace (a binary that does not know CNI would install Istio's
    defaults wherever it runs): (True, output) when it answers with supportedVersions."""
    ns = PREFIX + "-probe"
    sh(["ip", "netns", "add", ns])
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env.update(CNI_COMMAND="VERSION", CNI_PATH=CNI_DIR)
        try:
            p = subprocess.run(["ip", "netns", "exec", ns, binary], input='{"cniVersion":"1.1.0"}', text=True,
                               capture_output=True, env=env, timeout=30)
        except subprocess.TimeoutExpired:
            return False, "timed out"
        try:
            ok = "supportedVersions" in json.loads(p.stdout)
        except ValueError:
            ok = False
        if ours(ns):
            return False, "it installed rules instead of answering: not a CNI plugin yet"
        return ok, (p.stdout.strip() or p.stderr.strip())[:300]
    finally:
        sh(["ip", "netns", "del", ns], check=False)


def prerequisites(a):
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for b in ("ip", "setpriv", "nft", "iptables-nft-save"):
        if not shutil.which(b):
            missing.append(b)
    for plugin in ("bridge", "host-local", "loopback"):
        if not os.access(os.path.join(CNI_DIR, plugin), os.X_OK):
            missing.append("%s/%s (containernetworking-plugins)" % (CNI_DIR, plugin))
    for path in (sorted({a.bin, a.plugin}) if not a.without_meshinit else []):
        if not os.access(path, os.X_OK):
            missing.append("%s (build it, or give --bin)" % path)
    return missing


def install_plugins():
    if os.access(os.path.join(CNI_DIR, "bridge"), os.X_OK) or os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    print("cni: installing containernetworking-plugins (apt)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run("apt-get update -qq && apt-get install -y -qq containernetworking-plugins >/dev/null",
                   shell=True, env=env)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        return serve(sys.argv[2], [int(p) for p in sys.argv[3:]])
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        return client(sys.argv[2], int(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, ".build", "release", "meshinit"))
    ap.add_argument("--plugin", help="what CNI_PATH's `meshinit` links to (default: --bin)")
    ap.add_argument("--without-meshinit", action="store_true",
                    help="the chain minus meshinit: checks the harness; plugin checks are skipped")
    ap.add_argument("--backend", default="nftables,iptables",
                    help="comma-separated plugin backends for the lifecycle scenario (the first one for the rest)")
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, IPAM, cache)")
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    a.plugin = os.path.abspath(a.plugin or a.bin)
    os.environ["MESHINIT_BIN"] = a.bin  # for --plugin stand-ins; the runtime's env reaches plugins
    backends = [b for b in a.backend.split(",") if b]
    mode = "harness mode (chain minus meshinit)" if a.without_meshinit else "bridge -> meshinit (%s)" % a.plugin
    install_plugins()
    missing = prerequisites(a)
    if missing:
        msg = "cni: missing prerequisites: %s" % ", ".join(missing)
        if os.environ.get("CI") == "true":
            print(msg)
            print("cni: 0 passed, 1 failed")
            return 1
        print(msg + " (skipped; CI would fail)")
        print("cni: 0 passed, 0 failed")
        return 77  # skipped (scripts/test counts it so)
    print("cni: %s; namespaces %s-*; CNI_PATH=<tmp>/plugins:%s" % (mode, PREFIX, CNI_DIR), flush=True)
    env = Env(a.bin, a.plugin, not a.without_meshinit, backends, a.keep)
    passed = failed = skipped = ran = 0
    signal.signal(signal.SIGTERM, lambda *x: sys.exit(143))
    try:
        try:
            env.up()
        except Exception as e:
            print("FAIL node namespace setup: %s" % e, flush=True)
            failed += 1
            ran += 1
            raise
        plugin_ok, plugin_why = (False, "") if a.without_meshinit else speaks_cni(a.plugin)
        if not a.without_meshinit:
            print("cni: meshinit VERSION probe: %s" % plugin_why, flush=True)
        for fn in SCENARIOS:
            for backend in (backends if fn.per_backend else backends[:1]):
                label = fn.__name__ + ("[%s]" % backend if fn.per_backend else "")
                if a.only and fn.__name__ not in a.only and label not in a.only:
                    continue
                if fn.needs_plugin and a.without_meshinit:
                    skipped += 1
                    summary = " ".join(fn.__doc__.split())
                    print("skip [plugin] %s: %s" % (label, summary[:150] + ("..." if len(summary) > 150 else "")),
                          flush=True)
                    continue
                start = time.time()
                ran += 1
                try:
                    if fn.needs_plugin and not plugin_ok:
                        raise Failure("meshinit does not act as a CNI plugin (VERSION probe: %s)" % plugin_why)
                    fn(env, backend)
                    passed += 1
                    print("ok   %s%s (%.1fs)" % ("[plugin] " if fn.needs_plugin else "", label, time.time() - start),
                          flush=True)
                except Exception as e:
                    failed += 1
                    print("FAIL %s%s: %s" % ("[plugin] " if fn.needs_plugin else "", label, e), flush=True)
                    if not isinstance(e, (Failure, CNIError)):
                        traceback.print_exc()
                    if os.path.exists(env.log) and fn.needs_plugin and plugin_ok:
                        tail = open(env.log, errors="replace").read().strip().splitlines()[-8:]
                        for line in tail:
                            note("logFile: " + line)
    except Exception:
        if not ran:
            traceback.print_exc()
    finally:
        env.down()
    after = host_state()
    changed = [k for k in after if after[k] != env.host_before[k]]
    if changed:
        failed += 1
        print("FAIL host namespace changed: %s" % ", ".join(changed), flush=True)
    else:
        passed += 1
        print("ok   host namespace unchanged (nft ruleset, ip_forward, no %s* links)" % PREFIX, flush=True)
    if ran == 0 and not skipped:
        print("cni: no scenario ran (an --only that matches nothing?)", flush=True)
        failed += 1
    if skipped:
        print("cni: %d scenario(s) need the meshinit plugin and were skipped (--without-meshinit)" % skipped)
    print("cni: %d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
