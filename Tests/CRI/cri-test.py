#!/usr/bin/python3
"""meshinit chained after bridge in the CNI conflist of a real containerd 1.6 CRI plugin, driven
through the CRI gRPC API (runtime.v1) the way kubelet drives it: RunPodSandbox, PodSandboxStatus,
StopPodSandbox (twice), RemovePodSandbox, ListPodSandbox.

Isolation (everything named h16b-<pid>-*, all of it removed at the end, also on failure):

    node       netns h16b-<pid>-node: containerd and every plugin it execs live here, so the
               bridge h16b<pid>br (10.97.0.1/24, isGateway), the host-side veths and
               ip_forward=1 are the node's, never the host's
    world      netns h16b-<pid>-world (10.97.200.2 and .3, via the node 10.97.200.1): servers
               on :80/:81 answer "world <addr:port> from <peer>"; the node's bridge address
               answers "node <addr:port> from <peer>" on :80
    containerd pid 1 of a new pid namespace (`unshare --pid --fork --kill-child --mount-proc`:
               killing it kills the shims and the pods), in a private mount namespace with a
               tmpfs on /run (its shim sockets, runc state), /sys mounted for the node netns
               with the host's cgroup mounts moved back on it, and a private /var/lib/cni
               (libcni's result cache); its config, root, state (the pods' netns files under
               it: netns_mounts_under_state_dir), grpc socket, CNI conf/bin dirs, runc root
               and temp dir are in the test's temp dir; pods get the cgroup parent
               /meshinit-h16b-<pid>, removed at the end
    image      a sandbox image built offline (busybox-static's sleep), imported with
               `ctr -n k8s.io images import`
    CNI        bin dir: bridge, host-local, loopback (/usr/lib/cni), `meshinit` (a wrapper that
               records each call: env, stdin, stdout, exit status, then runs the plugin) and
               `meshinit-direct` (the plugin itself, for timing)
               runtime handlers, each with its own cni_conf_dir, all on one network (name,
               bridge, host-local pool):
                 "runc" (default)  bridge -> meshinit (requireAnnotation true, conf key
                                   istio-service-exclude-cidr 10.97.0.1/32)
                 "bare"            bridge only
                 "mesh"            bridge -> meshinit-direct (requireAnnotation false)
                 "upgrade"         as "runc"; its conflist is rewritten by a case
                 "nocap"           as "runc" without the annotations capability

Inside a pod's netns (entered through /proc/<containerd>/root/<netns file>, and held open by
the test so what Stop leaves can be inspected): proxy listeners :15001/:15006 answering
"proxy <port> orig <original destination>", an app on :8080/:8081; clients run as the app
uid 1000 or the proxy uid 1337.

Usage: cri-test.py [--bin PATH] [--plugin PATH] [--rounds N] [--only CASE...] [--keep]
    --bin     the meshinit CLI used for `verify` (default .build/debug/meshinit)
    --plugin  what the CNI bin dir's meshinit runs (default --bin)
    --rounds  pod starts per handler for the timing (default 6; 0: no timing)
Prints "ok/FAIL <case>" lines and "cri: N passed, M failed"; exits 1 on failure. With CI=true
a missing prerequisite is a failure; otherwise the run prints "skip" and exits 77 (scripts/test counts it as skipped).
"""
import os
import sys

try:
    import grpc
except ImportError:  # python3-grpcio is Debian's: run under Debian's python3
    if os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3") and os.access("/usr/bin/python3", os.X_OK) \
            and os.environ.get("MESHINIT_CRI_REEXEC") != "1":
        os.environ["MESHINIT_CRI_REEXEC"] = "1"
        os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)
    grpc = None

import argparse
import json
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import tarfile
import hashlib
import io
import tempfile
import time
import traceback

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
PID = os.getpid()
TAG = "h16b"
PREFIX = "%s-%d" % (TAG, PID)
NODE, WORLD = PREFIX + "-node", PREFIX + "-world"
BRIDGE = "%s%dbr" % (TAG, PID)
NODE_WORLD_VETH, WORLD_VETH = "%s%dw0" % (TAG, PID), "%s%dw1" % (TAG, PID)
NETWORK = PREFIX
SUBNET, GATEWAY = "10.97.0.0/24", "10.97.0.1"
WORLD_NODE, WORLD_A, WORLD_B = "10.97.200.1", "10.97.200.2", "10.97.200.3"
EXCLUDED_NS = PREFIX + "-excluded"
CGROUP_PARENT = "/meshinit-%s-%d" % (TAG, PID)
IMAGE = "localhost/meshinit-%s-pause:%d" % (TAG, PID)
APP_UID, PROXY_UID = 1000, 1337
SO_ORIGINAL_DST, IP_TRANSPARENT = 80, 19
CNI_DIR = "/usr/lib/cni"
ANNOTATIONS_CAP = "io.kubernetes.cri.pod-annotations"
SIDECAR_STATUS = json.dumps({"initContainers": ["istio-validation"], "containers": ["istio-proxy"],
                             "volumes": ["istio-envoy", "istio-data", "istio-podinfo", "istio-token"],
                             "imagePullSecrets": None, "revision": "default"}, separators=(",", ":"))
# What kubelet and the injector put on a sidecar pod.
ISTIO = {"sidecar.istio.io/status": SIDECAR_STATUS, "kubectl.kubernetes.io/default-container": "app",
         "kubernetes.io/config.source": "api", "prometheus.io/port": "15020"}
# The config key the default handler's meshinit entry sets (annotations override it).
CONF_EXCLUDE_CIDR = GATEWAY + "/32"
# Istio's injected istio-init arguments: the plugin's defaults (README "CNI mode").
INJECTED = [("envoy-port", "15001"), ("inbound-capture-port", "15006"), ("proxy-uid", "1337"),
            ("istio-inbound-interception-mode", "REDIRECT"), ("istio-service-cidr", "*"),
            ("istio-service-exclude-cidr", ""), ("istio-inbound-ports", "*"),
            ("istio-local-exclude-ports", "15090,15021,15020")]
ALWAYS_EXCLUDED_INBOUND = ["15020", "15021", "15090"]
ANNOTATION_FLAGS = [
    ("sidecar.istio.io/interceptionMode", "istio-inbound-interception-mode"),
    ("traffic.sidecar.istio.io/includeOutboundIPRanges", "istio-service-cidr"),
    ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "istio-service-exclude-cidr"),
    ("traffic.sidecar.istio.io/includeInboundPorts", "istio-inbound-ports"),
    ("traffic.sidecar.istio.io/excludeInboundPorts", "istio-local-exclude-ports"),
    ("traffic.sidecar.istio.io/includeOutboundPorts", "istio-outbound-ports"),
    ("traffic.sidecar.istio.io/excludeOutboundPorts", "istio-local-outbound-ports-exclude"),
    ("traffic.sidecar.istio.io/excludeInterfaces", "istio-exclude-interfaces"),
    # the deprecated name first: istio.io/reroute-virtual-interfaces wins when both are set
    ("traffic.sidecar.istio.io/kubevirtInterfaces", "kube-virt-interfaces"),
    ("istio.io/reroute-virtual-interfaces", "kube-virt-interfaces"),
]


class Failure(Exception):
    pass


# A prefix that makes a child die with the test, even when the test is SIGKILLed
# (PR_SET_PDEATHSIG, kept across exec): containerd's unshare, whose --kill-child then takes the
# whole pid namespace down, and the servers.
DIE_WITH_TEST = ["setpriv", "--pdeathsig", "KILL", "--"]


def note(line):
    print("    " + line, flush=True)


# ----------------------------------------------------------------------------------------
# Protocol buffers, by hand: the few CRI messages the test sends and reads (field numbers
# from k8s.io/cri-api pkg/apis/runtime/v1/api.proto)

def varint(n):
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_bytes(num, data):
    return varint(num << 3 | 2) + varint(len(data)) + data


def pb_str(num, text):
    return pb_bytes(num, text.encode()) if text else b""


def pb_bool(num, flag):
    return varint(num << 3) + varint(1) if flag else b""


def pb_map(num, entries):
    return b"".join(pb_bytes(num, pb_str(1, k) + pb_str(2, v)) for k, v in sorted(entries.items()))


def pb_decode(data):
    """Field number -> list of values (int for varints, bytes for length-delimited)."""
    fields, i = {}, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 2:
            n, i = _read_varint(data, i)
            value, i = data[i:i + n], i + n
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError("protobuf wire type %d" % wire)
        fields.setdefault(num, []).append(value)
    return fields


def _read_varint(data, i):
    shift = n = 0
    while True:
        b = data[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def pb_first(fields, num, default=None):
    return fields.get(num, [default])[0]


def pb_text(fields, num):
    return pb_first(fields, num, b"").decode()


def pb_decode_map(values):
    out = {}
    for entry in values or []:
        f = pb_decode(entry)
        out[pb_text(f, 1)] = pb_text(f, 2)
    return out


class CRI:
    """runtime.v1 over containerd's socket, with hand-encoded messages."""

    def __init__(self, socket_path):
        self.channel = grpc.insecure_channel("unix://" + socket_path)

    def call(self, method, request, timeout=60, service="RuntimeService"):
        rpc = self.channel.unary_unary("/runtime.v1.%s/%s" % (service, method),
                                       request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return pb_decode(rpc(request, timeout=timeout))

    def version(self):
        f = self.call("Version", pb_str(1, "v1"), timeout=5)
        return "%s %s (CRI %s)" % (pb_text(f, 2), pb_text(f, 3), pb_text(f, 4))

    def conditions(self):
        status = pb_decode(pb_first(self.call("Status", b""), 1, b""))
        out = {}
        for c in status.get(1, []):
            c = pb_decode(c)
            out[pb_text(c, 1)] = (bool(pb_first(c, 2, 0)), pb_text(c, 3), pb_text(c, 4))
        return out

    def image_present(self, ref):
        f = self.call("ImageStatus", pb_bytes(1, pb_str(1, ref)), service="ImageService", timeout=10)
        return bool(pb_first(f, 1))

    def run(self, name, uid, namespace, annotations, handler=""):
        metadata = pb_str(1, name) + pb_str(2, uid) + pb_str(3, namespace)
        dns = pb_str(1, "10.97.0.10") + pb_str(2, "%s.svc.cluster.local" % namespace) + pb_str(3, "ndots:5")
        linux = pb_str(1, CGROUP_PARENT) + pb_bytes(2, pb_bytes(1, b""))  # namespace_options: all POD
        config = (pb_bytes(1, metadata) + pb_str(2, name) + pb_bytes(4, dns) + pb_map(6, {"app": name, "h16b": "1"}) +
                  pb_map(7, annotations) + pb_bytes(8, linux))
        return pb_text(self.call("RunPodSandbox", pb_bytes(1, config) + pb_str(2, handler), timeout=120), 1)

    def stop(self, sid, timeout=120):
        self.call("StopPodSandbox", pb_str(1, sid), timeout=timeout)

    def remove(self, sid, timeout=120):
        self.call("RemovePodSandbox", pb_str(1, sid), timeout=timeout)

    def status(self, sid):
        """(state, ip, info JSON) of a sandbox; state 0 READY, 1 NOTREADY."""
        f = self.call("PodSandboxStatus", pb_str(1, sid) + pb_bool(2, True))
        st = pb_decode(pb_first(f, 1, b""))
        net = pb_decode(pb_first(st, 5, b""))
        info = pb_decode_map(f.get(2))
        return pb_first(st, 3, 0), pb_text(net, 1), json.loads(info.get("info") or "{}")

    def list(self):
        """[(id, name, uid, namespace, state)] of every sandbox."""
        out = []
        for item in self.call("ListPodSandbox", b"").get(1, []):
            it = pb_decode(item)
            md = pb_decode(pb_first(it, 2, b""))
            out.append((pb_text(it, 1), pb_text(md, 1), pb_text(md, 2), pb_text(md, 3), pb_first(it, 3, 0)))
        return out


def rpc_error(e):
    if grpc and isinstance(e, grpc.RpcError):
        return "%s: %s" % (e.code().name, e.details())
    return str(e)


# ----------------------------------------------------------------------------------------
# Servers and clients (this script, re-executed inside a namespace)

def original_dst(conn):
    try:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, addr = struct.unpack("!2xH4s8x", raw)
        return "%s:%d" % (socket.inet_ntoa(addr), port)
    except OSError:  # TPROXY: no NAT, the socket's own address is the original destination
        return "%s:%d" % conn.getsockname()


def serve(kind, ports):
    import select
    socks = {}
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if kind == "proxy":
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)  # accepts TPROXY'd connections too
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
                    msg = "proxy %d orig %s" % (socks[s], original_dst(conn))
                elif kind == "app":
                    msg = "app %d" % socks[s]
                else:
                    msg = "%s %s:%d from %s" % ((kind,) + conn.getsockname() + (peer[0],))
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
# Shell helpers

def sh(cmd, check=True, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise Failure("%s -> %d: %s" % (" ".join(cmd), p.returncode, (p.stderr or p.stdout).strip()[:600]))
    return p


def in_ns(ns, cmd, **kw):
    return sh(["nsenter", "--net=/run/netns/" + ns, "--"] + cmd, **kw)


RULE_DUMPS = ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save", "ip6tables-legacy-save",
              "nft list ruleset", "ip -4 rule", "ip -6 rule", "ip -4 route show table all",
              "ip -6 route show table all", "ip addr")


def ours(enter):
    """Lines of ours in a namespace (enter: the nsenter prefix): ISTIO_* chains and jumps,
    inet istio-proxy-* tables, the TPROXY mark 0x539 rules, ::6 on lo."""
    left = []
    for tool in RULE_DUMPS:
        p = subprocess.run(enter + tool.split(), capture_output=True, text=True, pass_fds=_fds(enter))
        if p.returncode != 0 and tool in ("nft list ruleset", "ip addr"):  # never a vacuous "nothing"
            raise Failure("%s -> %d: %s" % (" ".join(enter + [tool]), p.returncode, p.stderr.strip()[:300]))
        for line in p.stdout.splitlines():
            if line.startswith("#"):
                continue
            if "ISTIO" in line or "istio-proxy" in line or "0x539" in line or "::6/128" in line:
                left.append("%s: %s" % (tool, line.strip()))
    return left


def _fds(cmd):
    return tuple(int(a.rsplit("/", 1)[1]) for a in cmd if a.startswith("--net=/proc/self/fd/"))


def nothing_ours(enter, where):
    left = ours(enter)
    if left:
        raise Failure("rules of ours in %s:\n      %s" % (where, "\n      ".join(left[:10])))


def node_enter():
    return ["nsenter", "--net=/run/netns/" + NODE, "--"]


def veths():
    out = in_ns(NODE, ["ip", "-o", "link", "show", "type", "veth"], check=False).stdout
    return {l.split(":")[1].strip().split("@")[0] for l in out.splitlines() if ":" in l} - {NODE_WORLD_VETH}


def verify_flags(conf, annotations):
    """The meshinit flags a pod's capture must equal: Istio's injected defaults < the conf's
    capture keys < the pod's annotations, 15020,15021,15090 always excluded inbound."""
    values = dict(INJECTED)
    for key, value in conf.items():
        if key in ("type", "capabilities", "excludeNamespaces", "backend", "requireAnnotation", "logFile"):
            continue
        values[key] = value
    for annotation, flag in ANNOTATION_FLAGS:
        if annotation in annotations:
            values[flag] = annotations[annotation]
    ports = [p for p in values["istio-local-exclude-ports"].split(",") if p]
    values["istio-local-exclude-ports"] = ",".join(ports + [p for p in ALWAYS_EXCLUDED_INBOUND if p not in ports])
    flags = []
    for key, value in values.items():
        flags += ["--" + key, value]
    if conf.get("backend") == "nftables":
        flags.append("--native-nftables")
    return flags


# ----------------------------------------------------------------------------------------
# The world: namespaces, containerd, image, CNI configuration

def static_elf(path):
    """True when path is an ELF executable without a program interpreter (statically linked)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
                return False
            end = "<" if head[5] == 1 else ">"
            if head[4] == 2:  # 64-bit
                phoff, = struct.unpack_from(end + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(end + "HH", head, 54)
            else:
                phoff, = struct.unpack_from(end + "I", head, 28)
                phentsize, phnum = struct.unpack_from(end + "HH", head, 42)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
        return all(struct.unpack_from(end + "I", table, i * phentsize)[0] != 3 for i in range(phnum))  # PT_INTERP
    except (OSError, struct.error):
        return False


def oci_image(busybox, out):
    """An OCI image layout tarball: one layer (busybox as /bin/busybox and /bin/sleep), the
    entrypoint `sleep 2147483647` (the sandbox's pause)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            t.addfile(info)
        data = open(busybox, "rb").read()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        t.addfile(info, io.BytesIO(data))
        for applet in ("sleep", "sh"):
            info = tarfile.TarInfo("bin/" + applet)
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(info)
    layer = layer.getvalue()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64"}.get(platform.machine(), platform.machine())
    digest = lambda b: "sha256:" + hashlib.sha256(b).hexdigest()
    config = json.dumps({"architecture": arch, "os": "linux",
                         "config": {"Entrypoint": ["/bin/sleep", "2147483647"], "Env": ["PATH=/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": [digest(layer)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": digest(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": digest(layer), "size": len(layer)}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(manifest), "size": len(manifest),
         "annotations": {"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": IMAGE.rsplit(":", 1)[1]}}]})
    with tarfile.open(out, "w") as t:
        for name, blob in [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index.encode())] + \
                [("blobs/sha256/" + digest(b)[7:], b) for b in (layer, config, manifest)]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(blob), 0o644
            t.addfile(info, io.BytesIO(blob))


LAUNCH = r"""#!/bin/sh
# containerd's world: pid 1 of its own pid namespace, a private mount namespace, the node netns.
set -eu
work=$1
mount -t tmpfs -o mode=0755,size=64m h16b-run /run              # shim sockets, runc state: private
mkdir -p "$work/cgroup-hold"
mount --rbind /sys/fs/cgroup "$work/cgroup-hold"
mount -t sysfs h16b-sys /sys                                     # /sys of the node netns
mount --move "$work/cgroup-hold" /sys/fs/cgroup                  # with the host's cgroup mounts
mount --bind "$work/cni-cache" /var/lib/cni                      # libcni's result cache: private
exec containerd --config "$work/containerd.toml"
"""

WRAPPER = r"""#!/bin/sh
# Records one CNI call (env, stdin, stdout, exit status), then is the plugin.
call=%(work)s/calls/$(date +%%s%%N).$$.$CNI_COMMAND
cat >"$call.stdin"
env | grep '^CNI_' | sort >"$call.env"
"%(plugin)s" <"$call.stdin" >"$call.stdout" 2>"$call.stderr"
rc=$?
cat "$call.stdout"
cat "$call.stderr" >&2
echo $rc >"$call.rc"
exit $rc
"""


class World:
    def __init__(self, a):
        self.bin, self.plugin, self.keep = a.bin, a.plugin, a.keep
        self.work = tempfile.mkdtemp(prefix="meshinit-cri-%s-" % TAG)
        os.chmod(self.work, 0o755)
        self.script = os.path.join(self.work, "cri-test.py")  # readable by the app and proxy uids
        shutil.copyfile(HERE, self.script)
        os.chmod(self.script, 0o644)
        self.ipam = os.path.join(self.work, "ipam")
        self.state = os.path.join(self.work, "state")
        self.calls_dir = os.path.join(self.work, "calls")
        self.log = os.path.join(self.work, "meshinit-cni.log")
        self.socket = os.path.join(self.work, "containerd.sock")
        self.procs = []
        self.containerd = None
        self.log_file = None
        self.init_pid = None
        self.cri = None
        self.created_var_lib_cni = False
        self.sandboxes = set()
        self.confs = {}

    # -- setup ---------------------------------------------------------------------------

    def up(self):
        for d in ("ipam", "calls", "cni-bin", "cni-cache", "root", "state", "tmp",
                  "runc", "opt"):
            os.makedirs(os.path.join(self.work, d))
        sh(["ip", "netns", "add", NODE])
        sh(["ip", "netns", "add", WORLD])
        in_ns(NODE, ["ip", "link", "set", "lo", "up"])
        in_ns(WORLD, ["ip", "link", "set", "lo", "up"])
        in_ns(NODE, ["ip", "link", "add", NODE_WORLD_VETH, "type", "veth", "peer", "name", WORLD_VETH])
        in_ns(NODE, ["ip", "link", "set", WORLD_VETH, "netns", "/run/netns/" + WORLD])
        in_ns(NODE, ["ip", "addr", "add", WORLD_NODE + "/24", "dev", NODE_WORLD_VETH])
        in_ns(NODE, ["ip", "link", "set", NODE_WORLD_VETH, "up"])
        in_ns(NODE, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for addr in (WORLD_A, WORLD_B):
            in_ns(WORLD, ["ip", "addr", "add", addr + "/24", "dev", WORLD_VETH])
        in_ns(WORLD, ["ip", "link", "set", WORLD_VETH, "up"])
        in_ns(WORLD, ["ip", "route", "add", "default", "via", WORLD_NODE])
        self.start(["nsenter", "--net=/run/netns/" + WORLD], "world", "80", "81")
        self.start(node_enter(), "node", "80")

        busybox = shutil.which("busybox")
        oci_image(busybox, os.path.join(self.work, "pause.tar"))
        bindir = os.path.join(self.work, "cni-bin")
        for p in ("bridge", "host-local", "loopback"):
            os.symlink(os.path.join(CNI_DIR, p), os.path.join(bindir, p))
        with open(os.path.join(bindir, "meshinit"), "w") as f:
            f.write(WRAPPER % {"work": self.work, "plugin": self.plugin})
        os.chmod(os.path.join(bindir, "meshinit"), 0o755)
        os.symlink(self.plugin, os.path.join(bindir, "meshinit-direct"))
        self.write_confs()
        self.write_containerd_config()
        if not os.path.isdir("/var/lib/cni"):
            os.makedirs("/var/lib/cni")
            self.created_var_lib_cni = True
        with open(os.path.join(self.work, "launch.sh"), "w") as f:
            f.write(LAUNCH)
        self.start_containerd()

    def start(self, enter, kind, *ports):
        p = subprocess.Popen(enter + DIE_WITH_TEST + [sys.executable, self.script, "serve", kind] + list(ports),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             pass_fds=_fds(enter))
        if p.stdout.readline().strip() != "ready":
            raise Failure("server %s %s did not start: %s" % (kind, ports, p.stderr.read()[:400]))
        self.procs.append(p)
        return p

    def bridge(self):
        return {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": False,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": self.ipam}}

    def write_confs(self):
        """One conflist per runtime handler, all on the same network (name, bridge, host-local
        pool); handler "" is containerd's default (runc) with the conf dir of the CNI section."""
        main = {"type": "meshinit", "capabilities": {ANNOTATIONS_CAP: True},
                "excludeNamespaces": ["kube-system", EXCLUDED_NS], "backend": "nftables", "requireAnnotation": True,
                "logFile": self.log, "istio-service-exclude-cidr": CONF_EXCLUDE_CIDR}
        mesh = dict(main, type="meshinit-direct", requireAnnotation=False)
        del mesh["istio-service-exclude-cidr"]
        nocap = {k: v for k, v in main.items() if k != "capabilities"}
        self.confs = {"": main, "bare": None, "mesh": mesh, "upgrade": dict(main), "nocap": nocap}
        for handler, plugin in self.confs.items():
            self.write_conf(handler, plugin)

    def conf_dir(self, handler):
        return os.path.join(self.work, "net-" + (handler or "default"))

    def write_conf(self, handler, plugin):
        conf = {"cniVersion": "1.0.0", "name": NETWORK, "plugins": [self.bridge()] + ([plugin] if plugin else [])}
        path = os.path.join(self.conf_dir(handler), "10-%s.conflist" % TAG)
        os.makedirs(self.conf_dir(handler), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(conf, f, indent=2)
        os.replace(path + ".tmp", path)

    def write_containerd_config(self):
        w = self.work
        runc = shutil.which("runc") or "/usr/sbin/runc"
        runtime = lambda name, conf_dir: """
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%(name)s]
  runtime_type = "io.containerd.runc.v2"
  %(confdir)s
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%(name)s.options]
  BinaryName = "%(runc)s"
  Root = "%(w)s/runc"
  SystemdCgroup = false
""" % {"name": name, "runc": runc, "w": w, "confdir": 'cni_conf_dir = "%s"' % conf_dir if conf_dir else ""}
        text = """# containerd for meshinit's CRI test: every path in %(w)s, nothing of the host's defaults
version = 2
root = "%(w)s/root"
state = "%(w)s/state"
temp = "%(w)s/tmp"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "%(w)s/containerd.sock"
[ttrpc]
  address = "%(w)s/containerd.sock.ttrpc"
[debug]
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "%(w)s/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "%(image)s"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "%(w)s/cni-bin"
  conf_dir = "%(w)s/net-default"
  max_conf_num = 1
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "native"
  default_runtime_name = "runc"
""" % {"w": w, "image": IMAGE}
        text += "".join(runtime(h or "runc", self.conf_dir(h) if h else None) for h in self.confs)
        with open(os.path.join(w, "containerd.toml"), "w") as f:
            f.write(text)

    def start_containerd(self):
        self.log_file = open(os.path.join(self.work, "containerd.log"), "w")
        cmd = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--",
               "nsenter", "--net=/run/netns/" + NODE, "--", "/bin/sh", os.path.join(self.work, "launch.sh"), self.work]
        self.containerd = subprocess.Popen(DIE_WITH_TEST + cmd, stdout=self.log_file, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline and self.init_pid is None:
            try:
                children = open("/proc/%d/task/%d/children" % ((self.containerd.pid,) * 2)).read().split()
                if children:
                    self.init_pid = int(children[0])
            except OSError:
                pass
            if self.containerd.poll() is not None:
                break
            time.sleep(0.05)
        if self.init_pid is None:
            raise Failure("unshare started no child (exit %s):\n%s" % (self.containerd.poll(), self.containerd_log(15)))
        self.cri = CRI(self.socket)
        version = None
        while time.time() < deadline:
            if self.containerd.poll() is not None:
                raise Failure("containerd exited %s:\n%s" % (self.containerd.returncode, self.containerd_log(15)))
            try:
                version = self.cri.version()
                break
            except Exception:
                time.sleep(0.2)
        if not version:
            raise Failure("containerd's CRI did not answer in 60 s:\n%s" % self.containerd_log(15))
        note("containerd up (pid %d on the host, pid 1 of its own pid namespace): %s" % (self.init_pid, version))
        p = sh(["ctr", "--address", self.socket, "-n", "k8s.io", "images", "import", "--snapshotter", "native",
                os.path.join(self.work, "pause.tar")], check=False, timeout=120)
        if p.returncode != 0:
            raise Failure("ctr images import: %s" % (p.stderr or p.stdout).strip()[-600:])
        while time.time() < deadline:
            conditions = self.cri.conditions()
            if self.cri.image_present(IMAGE) and conditions.get("NetworkReady", (False,))[0]:
                break
            time.sleep(0.2)
        else:
            raise Failure("sandbox image or CNI not ready: image %s, conditions %s" %
                          (self.cri.image_present(IMAGE), self.cri.conditions()))
        note("sandbox image %s imported offline (busybox-static sleep); NetworkReady" % IMAGE)

    def containerd_log(self, n=8, grep=None):
        try:
            lines = open(os.path.join(self.work, "containerd.log"), errors="replace").read().splitlines()
        except OSError:
            return ""
        if grep:
            lines = [l for l in lines if grep in l]
        return "\n".join("      " + l[:400] for l in lines[-n:])

    # -- observing -------------------------------------------------------------------------

    def calls(self, sid=None, command=None):
        """The recorded meshinit calls (the default handler's wrapper), oldest first."""
        out = []
        for name in sorted(os.listdir(self.calls_dir)):
            if not name.endswith(".rc"):
                continue
            base = os.path.join(self.calls_dir, name[:-3])
            env = dict(l.split("=", 1) for l in open(base + ".env").read().splitlines() if "=" in l)
            c = {"command": env.get("CNI_COMMAND"), "env": env, "rc": int(open(base + ".rc").read()),
                 "stdin": open(base + ".stdin").read(), "stdout": open(base + ".stdout").read()}
            if (sid is None or env.get("CNI_CONTAINERID") == sid) and (command is None or c["command"] == command):
                out.append(c)
        return out

    def leases(self):
        d = os.path.join(self.ipam, NETWORK)
        return {f for f in os.listdir(d) if f[0].isdigit()} if os.path.isdir(d) else set()

    def netns_files(self):
        d = os.path.join(self.state, "io.containerd.grpc.v1.cri", "netns")
        return set(os.listdir(d)) if os.path.isdir(d) else set()

    def cni_cache(self):
        d = os.path.join(self.work, "cni-cache", "results")
        return set(os.listdir(d)) if os.path.isdir(d) else set()

    def snapshot(self):
        return {"host-local leases": self.leases(), "veths on the node": veths(),
                "netns files": self.netns_files(), "libcni cache entries": self.cni_cache()}

    # -- teardown --------------------------------------------------------------------------

    def down(self):
        if self.cri:
            for sid in list(self.sandboxes):  # best effort, as a kubelet would
                for op in (self.cri.stop, self.cri.remove):
                    try:
                        op(sid, timeout=15)
                    except Exception:
                        pass
        if self.containerd and self.containerd.poll() is None:
            if self.init_pid:
                try:
                    os.kill(self.init_pid, signal.SIGTERM)
                except OSError:
                    pass
            try:
                self.containerd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                if self.init_pid:  # pid 1 of the pid namespace: its death kills the shims and pods
                    try:
                        os.kill(self.init_pid, signal.SIGKILL)
                    except OSError:
                        pass
                try:
                    self.containerd.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.containerd.kill()
                    self.containerd.wait()
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()
        self.procs = []
        if self.log_file:
            self.log_file.close()
        self.remove_cgroups()
        for ns in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
            if ns.startswith(PREFIX + "-"):  # node, world and any VM netns a failed case left
                sh(["ip", "netns", "del", ns], check=False)
        if self.created_var_lib_cni:
            for d in ("/var/lib/cni/results", "/var/lib/cni"):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
        mounts = [l.split()[4] for l in open("/proc/self/mountinfo") if l.split()[4].startswith(self.work)]
        for m in sorted(mounts, reverse=True):  # none expected: they were all in containerd's namespace
            sh(["umount", "-l", m], check=False)
        if self.keep:
            print("cri: temp dir kept: %s" % self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def cgroup_dirs(self):
        roots = set()
        for line in open("/proc/self/mountinfo"):
            parts = line.split()
            fstype = parts[parts.index("-") + 1]
            if fstype in ("cgroup", "cgroup2"):
                roots.add(parts[4])
        found = []
        for r in sorted(roots):
            top = r + CGROUP_PARENT
            if os.path.isdir(top):
                for dirpath, _, _ in os.walk(top):
                    found.append(dirpath)
        return found

    def remove_cgroups(self):
        deadline = time.time() + 10
        while True:
            left = self.cgroup_dirs()
            for d in sorted(left, key=len, reverse=True):
                try:
                    os.rmdir(d)
                except OSError:
                    pass
            left = self.cgroup_dirs()
            if not left or time.time() > deadline:
                return left
            time.sleep(0.2)


def host_state():
    rules = sh(["nft", "list", "ruleset"], check=False).stdout
    links = [l for l in sh(["ip", "-o", "link"], check=False).stdout.splitlines() if TAG + str(PID) in l]
    paths = {}
    for p in ("/run/containerd", "/var/lib/containerd", "/opt/containerd", "/etc/cni", "/var/lib/cni", "/opt/cni",
              "/etc/containerd"):
        paths[p] = sorted(os.listdir(p)) if os.path.isdir(p) else None
    netns = sorted(n for n in os.listdir("/run/netns") if not n.startswith(TAG)) if os.path.isdir("/run/netns") else []
    return {"nft ruleset": rules, "ip_forward": open("/proc/sys/net/ipv4/ip_forward").read().strip(),
            "links named %s%d*" % (TAG, PID): links, "containerd/CNI default paths": paths,
            "containerd netns in /run/netns": [n for n in netns if n.startswith("cni-")]}


# ----------------------------------------------------------------------------------------
# A pod sandbox through CRI

class Pod:
    counter = 0

    def __init__(self, world, annotations, handler="", namespace="default"):
        Pod.counter += 1
        self.w = world
        self.name = "%s-pod%d" % (PREFIX, Pod.counter)
        self.uid = "%s-uid-%d" % (PREFIX, Pod.counter)
        self.namespace = namespace
        self.annotations = dict(annotations)
        self.handler = handler
        self.sid = None
        self.ip = None
        self.fd = None
        self.procs = []
        self.removed = False
        self.before = None
        self.run_seconds = None
        self.leaked = []
        self.vms = []

    def __enter__(self):
        self.before = self.w.snapshot()
        return self

    def __exit__(self, *exc):
        self.kill_servers()
        if self.sid and not self.removed:
            for op in (self.w.cri.stop, self.w.cri.remove):
                try:
                    op(self.sid, timeout=15)
                except Exception:
                    pass
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        for ns in self.vms:
            sh(["ip", "netns", "del", ns], check=False)

    def kill_servers(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()
        self.procs = []

    # -- CRI --------------------------------------------------------------------------------

    def run(self):
        start = time.monotonic()
        try:
            self.sid = self.w.cri.run(self.name, self.uid, self.namespace, self.annotations, self.handler)
        except Exception as e:
            self.run_seconds = time.monotonic() - start
            self.after_failed_run()
            raise Failure("RunPodSandbox: %s%s" % (rpc_error(e), self.leak_report()))
        self.run_seconds = time.monotonic() - start
        self.w.sandboxes.add(self.sid)
        state, self.ip, info = self.w.cri.status(self.sid)
        if state != 0:
            raise Failure("sandbox %s not READY after RunPodSandbox (state %d)" % (self.sid[:12], state))
        path = next((n.get("path") for n in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", [])
                     if n.get("type") == "network"), None)
        if not path or not self.ip:
            raise Failure("sandbox status lacks the netns path or IP: ip %r, netns %r" % (self.ip, path))
        self.netns = path
        # the netns file is a bind mount in containerd's mount namespace: reach it through its root
        self.fd = os.open("/proc/%d/root%s" % (self.w.init_pid, path), os.O_RDONLY)
        self.cni_result = info.get("cniResult") or {}
        self.present()
        return self

    def present(self):
        """What the pod holds while it runs, where the leftover checks look for it (so that
        they cannot pass by looking in the wrong place)."""
        host_veths = [name for name, i in (self.cni_result.get("Interfaces") or {}).items()
                      if not i.get("Sandbox") and name != BRIDGE]
        have = {"host-local lease %s" % self.ip: self.ip in self.w.leases(),
                "netns file %s" % self.netns: os.path.basename(self.netns) in self.w.netns_files(),
                "node veth %s" % host_veths: bool(host_veths) and set(host_veths) <= veths(),
                "libcni cache entry": any(self.sid in e for e in self.w.cni_cache())}
        missing = [k for k, ok in have.items() if not ok]
        if missing:
            raise Failure("while the pod runs, not found where the leftover checks look: %s" % missing)

    def after_failed_run(self):
        """After a failed RunPodSandbox: did containerd keep the sandbox (SANDBOX_UNKNOWN)?"""
        try:
            self.leaked = [s for s in self.w.cri.list() if s[2] == self.uid]
        except Exception as e:
            raise Failure("ListPodSandbox after a failed RunPodSandbox: %s" % rpc_error(e))
        for sid, *_ in self.leaked:
            self.w.sandboxes.add(sid)

    def leak_report(self):
        if not self.leaked:
            return ""
        sid = self.leaked[0][0]
        try:
            self.w.cri.stop(sid)
            stop = "StopPodSandbox ok"
        except Exception as e:
            stop = "StopPodSandbox fails: %s" % rpc_error(e)[:300]
        after = self.w.snapshot()
        held = {k: sorted(after[k] - self.before[k]) for k in after if after[k] - self.before[k]}
        return "\n      containerd kept sandbox %s (state %s in ListPodSandbox: SANDBOX_UNKNOWN inside), holding %s; %s" % (
            sid[:12], self.leaked[0][4], held or "nothing", stop)

    def stop_and_remove(self):
        """Stop (twice) and Remove, and what each leaves: the netns (held open by the test) has
        no rules of ours and no eth0 once Stop returns; after Remove the sandbox, its IP, veth,
        netns file and libcni cache entries are gone; every meshinit DEL succeeded."""
        self.kill_servers()
        try:
            self.w.cri.stop(self.sid)
        except Exception as e:
            raise Failure("StopPodSandbox: %s" % rpc_error(e))
        nothing_ours(self.enter(), "the pod netns after StopPodSandbox")
        links = sh(self.enter() + ["ip", "-o", "link"], pass_fds=(self.fd,)).stdout
        if "eth0" in links:
            raise Failure("eth0 still in the pod netns after StopPodSandbox (the chain's DEL did not reach bridge)")
        try:
            self.w.cri.stop(self.sid)
        except Exception as e:
            raise Failure("the second StopPodSandbox: %s" % rpc_error(e))
        try:
            self.w.cri.remove(self.sid)
        except Exception as e:
            raise Failure("RemovePodSandbox: %s" % rpc_error(e))
        self.removed = True
        self.w.sandboxes.discard(self.sid)
        os.close(self.fd)
        self.fd = None
        self.nothing_left("after Stop and Remove")
        if self.recorded():
            dels = self.w.calls(self.sid, "DEL")
            bad = [c for c in dels if c["rc"] != 0]
            if not dels or bad:
                raise Failure("meshinit DEL: %d calls, failed: %s" % (len(dels), [c["stdout"][:300] for c in bad]))
            note("StopPodSandbox x2, RemovePodSandbox ok; meshinit DEL called %d times, all exit 0; the pod netns "
                 "had no rules of ours and no eth0 after Stop" % len(dels))
        else:
            note("StopPodSandbox x2, RemovePodSandbox ok; no rules of ours and no eth0 in the netns after Stop")

    def nothing_left(self, when):
        if any(s[2] == self.uid for s in self.w.cri.list()):
            raise Failure("%s: the sandbox is still listed" % when)
        after = self.w.snapshot()
        grown = {k: sorted(after[k] - self.before[k]) for k in after if after[k] - self.before[k]}
        if grown:
            raise Failure("%s: left behind: %s" % (when, grown))
        nothing_ours(node_enter(), "the node netns")
        note("%s: no sandbox, no lease, no veth, no netns file, no libcni cache entry, nothing of ours on the node"
             % when)

    # -- inside the pod ----------------------------------------------------------------------

    def enter(self):
        return ["nsenter", "--net=/proc/self/fd/%d" % self.fd, "--"]

    def servers(self):
        self.procs.append(self.w.start(self.enter(), "proxy", "15001", "15006"))
        self.procs.append(self.w.start(self.enter(), "app", "8080", "8081"))

    def connect(self, host, port, uid=APP_UID):
        cmd = self.enter() + ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups",
                              sys.executable, self.w.script, "client", host, str(port)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=15, pass_fds=(self.fd,))
        if p.returncode != 0:
            return "error: " + (p.stderr.strip().splitlines() or ["?"])[-1]
        return p.stdout.strip()

    def connect_in(self, port):
        """From the world to the pod's address."""
        p = subprocess.run(["nsenter", "--net=/run/netns/" + WORLD, "--", sys.executable, self.w.script, "client",
                            self.ip, str(port)], capture_output=True, text=True, timeout=15)
        if p.returncode != 0:
            return "error: " + (p.stderr.strip().splitlines() or ["?"])[-1]
        return p.stdout.strip()

    def verify(self):
        flags = verify_flags(self.w.confs[self.handler], self.annotations)
        p = sh(self.enter() + [self.w.bin, "verify"] + flags, check=False, timeout=60, pass_fds=(self.fd,))
        if p.returncode != 0:
            raise Failure("the pod's rules are not the plan of `meshinit verify %s` (exit %d):\n%s" %
                          (" ".join(flags), p.returncode, (p.stdout + p.stderr)[-1000:]))
        pairs = zip(flags[0::2], flags[1::2])
        shown = ["%s %s" % (k, repr(v) if v in ("", "*") else v) for k, v in pairs if dict(INJECTED).get(k[2:]) != v]
        note("meshinit verify in the pod netns -> 0 (the plugin's defaults%s)" % (
            " plus " + ", ".join(shown) if shown else ""))

    def expect(self, got, want, what):
        if got != want:
            raise Failure("%s: got %r, want %r" % (what, got, want))
        note("%s: %s" % (what, got))

    def captured(self, host, port, what=None):
        self.expect(self.connect(host, port), "proxy 15001 orig %s:%d" % (host, port),
                    what or "app uid 1000 -> %s:%d captured" % (host, port))

    def uncaptured(self, host, port, what=None):
        kind = "world" if host.startswith("10.97.200.") else "node"
        self.expect(self.connect(host, port), "%s %s:%d from %s" % (kind, host, port, self.ip),
                    what or "app uid 1000 -> %s:%d not captured" % (host, port))

    def inbound(self, port, captured):
        want = "proxy 15006 orig %s:%d" % (self.ip, port) if captured else "app %d" % port
        self.expect(self.connect_in(port), want, "world -> pod:%d %s" % (port, "captured" if captured else "to the app"))

    def vm(self, ifname, client_args):
        """Runs this script's client in a "VM" netns behind the pod's interface `ifname` (a
        veth made on first use; the VM is 192.168.N.2, the pod side 192.168.N.1)."""
        ns = "%s-vm-%s" % (PREFIX, ifname)
        if ns not in self.vms:
            n = 100 + len(self.vms)
            sh(["ip", "netns", "add", ns])
            self.vms.append(ns)
            sh(self.enter() + ["ip", "link", "add", ifname, "type", "veth", "peer", "name", "vm0", "netns",
                               "/run/netns/" + ns], pass_fds=(self.fd,))
            sh(self.enter() + ["ip", "addr", "add", "192.168.%d.1/24" % n, "dev", ifname], pass_fds=(self.fd,))
            sh(self.enter() + ["ip", "link", "set", ifname, "up"], pass_fds=(self.fd,))
            in_ns(ns, ["ip", "addr", "add", "192.168.%d.2/24" % n, "dev", "vm0"])
            in_ns(ns, ["ip", "link", "set", "vm0", "up"])
            in_ns(ns, ["ip", "route", "add", "default", "via", "192.168.%d.1" % n])
        p = subprocess.run(["nsenter", "--net=/run/netns/" + ns, "--", sys.executable, self.w.script] + client_args,
                           capture_output=True, text=True, timeout=15)
        if p.returncode != 0:
            return "error: " + (p.stderr.strip().splitlines() or ["?"])[-1]
        return p.stdout.strip()

    def recorded(self):
        """Whether this pod's handler runs meshinit through the recording wrapper."""
        return (self.w.confs[self.handler] or {}).get("type") == "meshinit"

    def add_call(self):
        """meshinit's last recorded ADD for this pod (also when RunPodSandbox failed), or None."""
        adds = [c for c in self.w.calls(command="ADD")
                if "K8S_POD_NAME=%s" % self.name in c["env"].get("CNI_ARGS", "").split(";")]
        return adds[-1] if adds else None

    def meshinit_add(self):
        add = self.add_call()
        if not add:
            raise Failure("meshinit was not called for ADD")
        return add


# ----------------------------------------------------------------------------------------
# Cases

CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def annotations_passed(pod):
    add = pod.meshinit_add()
    conf = json.loads(add["stdin"])
    got = (conf.get("runtimeConfig") or {}).get(ANNOTATIONS_CAP, "absent")
    env = add["env"]
    want_args = ["K8S_POD_NAMESPACE=" + pod.namespace, "K8S_POD_NAME=" + pod.name,
                 "K8S_POD_INFRA_CONTAINER_ID=" + pod.sid]
    if not all(a in env.get("CNI_ARGS", "").split(";") for a in want_args):
        raise Failure("CNI_ARGS %r lacks %s" % (env.get("CNI_ARGS"), want_args))
    return got


@case
def captured_pod(w):
    """A sidecar pod: containerd passes its annotations; the rules are the plan (defaults + the
    conf's exclude CIDR); app uid 1000 -> world captured with its original destination, the
    proxy uid 1337 straight out (the world sees the pod's address), the conf-excluded node
    address not captured, inbound captured; Stop/Remove leave nothing."""
    with Pod(w, ISTIO) as pod:
        pod.run()
        got = annotations_passed(pod)
        if got != ISTIO:
            raise Failure("runtimeConfig annotations: %s, want the pod's" % json.dumps(got)[:300])
        note("containerd passed CNI_ARGS %s and the pod's %d annotations" %
             (pod.meshinit_add()["env"]["CNI_ARGS"], len(got)))
        note("RunPodSandbox %.0f ms; pod %s, netns %s" % (pod.run_seconds * 1000, pod.ip, pod.netns))
        pod.verify()
        nothing_ours(node_enter(), "the node netns")
        pod.servers()
        pod.captured(WORLD_A, 80)
        pod.expect(pod.connect(WORLD_A, 80, uid=PROXY_UID), "world %s:80 from %s" % (WORLD_A, pod.ip),
                   "proxy uid 1337 -> %s:80 straight out" % WORLD_A)
        pod.uncaptured(GATEWAY, 80, "app -> %s:80 (config key istio-service-exclude-cidr) not captured" % GATEWAY)
        pod.inbound(8080, True)
        pod.stop_and_remove()


def family(w, annotations, checks):
    with Pod(w, dict(ISTIO, **annotations)) as pod:
        pod.run()
        got = annotations_passed(pod) if pod.recorded() else pod.annotations
        if got != pod.annotations:
            raise Failure("runtimeConfig annotations: %s" % json.dumps(got)[:300])
        pod.verify()
        pod.servers()
        checks(pod)
        pod.stop_and_remove()


@case
def interception_tproxy(w):
    """sidecar.istio.io/interceptionMode=TPROXY: the TPROXY plan; inbound reaches :15006 with
    its original destination, outbound still captured."""
    family(w, {"sidecar.istio.io/interceptionMode": "TPROXY"},
           lambda p: (p.inbound(8080, True), p.captured(WORLD_A, 80)))


@case
def include_outbound_ip_ranges(w):
    """traffic.sidecar.istio.io/includeOutboundIPRanges=<world .2>/32: .2 captured, .3 not."""
    family(w, {"traffic.sidecar.istio.io/includeOutboundIPRanges": WORLD_A + "/32"},
           lambda p: (p.captured(WORLD_A, 80), p.uncaptured(WORLD_B, 80)))


@case
def exclude_outbound_ip_ranges(w):
    """traffic.sidecar.istio.io/excludeOutboundIPRanges=<world .3>/32 replaces the conf's
    istio-service-exclude-cidr: .3 not captured, the node address now captured, .2 captured."""
    family(w, {"traffic.sidecar.istio.io/excludeOutboundIPRanges": WORLD_B + "/32"},
           lambda p: (p.uncaptured(WORLD_B, 80), p.captured(GATEWAY, 80), p.captured(WORLD_A, 80)))


@case
def include_inbound_ports(w):
    """traffic.sidecar.istio.io/includeInboundPorts=8080: inbound 8080 captured, 8081 not."""
    family(w, {"traffic.sidecar.istio.io/includeInboundPorts": "8080"},
           lambda p: (p.inbound(8080, True), p.inbound(8081, False)))


@case
def exclude_inbound_ports(w):
    """traffic.sidecar.istio.io/excludeInboundPorts=8080 (15020,15021,15090 added): 8080 to
    the app, 8081 captured."""
    family(w, {"traffic.sidecar.istio.io/excludeInboundPorts": "8080"},
           lambda p: (p.inbound(8080, False), p.inbound(8081, True)))


@case
def include_outbound_ports(w):
    """includeOutboundIPRanges="" + traffic.sidecar.istio.io/includeOutboundPorts=81: :81
    captured, :80 not."""
    family(w, {"traffic.sidecar.istio.io/includeOutboundIPRanges": "",
               "traffic.sidecar.istio.io/includeOutboundPorts": "81"},
           lambda p: (p.captured(WORLD_A, 81), p.uncaptured(WORLD_A, 80)))


@case
def exclude_outbound_ports(w):
    """traffic.sidecar.istio.io/excludeOutboundPorts=81: :81 goes out, :80 captured."""
    family(w, {"traffic.sidecar.istio.io/excludeOutboundPorts": "81"},
           lambda p: (p.uncaptured(WORLD_A, 81), p.captured(WORLD_A, 80)))


@case
def exclude_interfaces(w):
    """traffic.sidecar.istio.io/excludeInterfaces=eth0: the rules are installed (verify), and
    traffic through eth0 is not captured either way (Istio's -c returns PREROUTING -i and
    OUTPUT -o of the interface)."""
    def checks(p):
        if not ours(p.enter()):
            raise Failure("no rules of ours in the pod")
        p.inbound(8080, False)
        p.uncaptured(WORLD_A, 80)
    family(w, {"traffic.sidecar.istio.io/excludeInterfaces": "eth0"}, checks)


def from_vm(pod, ifname, port):
    """A connection to the pod's own address arriving on a virtual interface of the pod: a veth
    `ifname` whose peer is in a "VM" netns. Rerouted (-k), it is captured as outbound (:15001);
    otherwise it is ordinary inbound (:15006)."""
    return pod.vm(ifname, ["client", pod.ip, str(port)])


@case
def virtual_interfaces(w):
    """istio.io/reroute-virtual-interfaces=kv0 wins over the deprecated
    traffic.sidecar.istio.io/kubevirtInterfaces=old0: traffic arriving on kv0 is captured as
    outbound, on old0 it is ordinary inbound."""
    def checks(p):
        p.expect(from_vm(p, "kv0", 8080), "proxy 15001 orig %s:8080" % p.ip, "VM on kv0 -> pod:8080 rerouted")
        p.expect(from_vm(p, "old0", 8080), "proxy 15006 orig %s:8080" % p.ip, "VM on old0 -> pod:8080 inbound")
    family(w, {"istio.io/reroute-virtual-interfaces": "kv0", "traffic.sidecar.istio.io/kubevirtInterfaces": "old0"},
           checks)


@case
def virtual_interfaces_deprecated(w):
    """traffic.sidecar.istio.io/kubevirtInterfaces=old0 alone is read: traffic arriving on old0
    is captured as outbound."""
    family(w, {"traffic.sidecar.istio.io/kubevirtInterfaces": "old0"},
           lambda p: p.expect(from_vm(p, "old0", 8080), "proxy 15001 orig %s:8080" % p.ip,
                              "VM on old0 -> pod:8080 rerouted"))


def skipped(w, annotations, namespace="default", why=""):
    with Pod(w, annotations, namespace=namespace) as pod:
        pod.run()
        annotations_passed(pod)
        add = pod.meshinit_add()
        if add["rc"] != 0:
            raise Failure("meshinit ADD exit %d: %s" % (add["rc"], add["stdout"][:300]))
        note("%s: ADD exit 0" % why)
        nothing_ours(pod.enter(), "the skipped pod's netns")
        nothing_ours(node_enter(), "the node netns")
        pod.servers()
        pod.uncaptured(WORLD_A, 80)
        pod.inbound(8080, False)
        pod.stop_and_remove()


@case
def skip_without_status(w):
    """No sidecar.istio.io/status (requireAnnotation true): uncaptured, nothing of ours."""
    skipped(w, {"kubernetes.io/config.source": "api", "prometheus.io/port": "9090"}, why="no status annotation")


@case
def skip_inject_false(w):
    """sidecar.istio.io/inject=false skips a pod that has a status annotation."""
    skipped(w, dict(ISTIO, **{"sidecar.istio.io/inject": "false"}), why="sidecar.istio.io/inject=false")


@case
def skip_interception_none(w):
    """sidecar.istio.io/interceptionMode=NONE skips the pod."""
    skipped(w, dict(ISTIO, **{"sidecar.istio.io/interceptionMode": "NONE"}), why="interceptionMode NONE")


@case
def skip_excluded_namespace(w):
    """A pod of a namespace in excludeNamespaces (K8S_POD_NAMESPACE from the sandbox metadata)."""
    skipped(w, ISTIO, namespace=EXCLUDED_NS, why="namespace %s excluded" % EXCLUDED_NS)


def refused(w, annotations, mentions, handler="", code=None):
    """RunPodSandbox must fail with an error from meshinit's ADD naming `mentions`; the DEL
    containerd runs after it must succeed and nothing may be left."""
    with Pod(w, annotations, handler=handler) as pod:
        try:
            pod.run()
        except Failure as e:
            msg = str(e)
            if "containerd kept sandbox" in msg:
                raise
            if mentions not in msg:
                raise Failure("the error does not name %s: %s" % (mentions, msg[:600]))
            note("RunPodSandbox refused: %s" % msg[:300])
        else:
            add = pod.add_call()
            raise Failure("RunPodSandbox succeeded (meshinit ADD got runtimeConfig %s, exit %s; %d rule lines of ours "
                          "in the pod)" % (json.dumps(json.loads(add["stdin"]).get("runtimeConfig", "absent"))[:200]
                                           if add else "?", add and add["rc"], len(ours(pod.enter()))))
        add = pod.add_call()
        if not add or add["rc"] == 0:
            raise Failure("the refusal did not come from meshinit's ADD")
        err = json.loads(add["stdout"])
        if code is not None and err.get("code") != code:
            raise Failure("meshinit ADD error code %s, want %d: %s" % (err.get("code"), code, add["stdout"][:300]))
        if len(err.get("msg", "")) > 400:
            raise Failure("meshinit's error msg is %d characters" % len(err["msg"]))
        dels = w.calls(add["env"]["CNI_CONTAINERID"], "DEL")
        if not dels or any(c["rc"] != 0 for c in dels):
            raise Failure("the DEL after the failed ADD: %s" % [(c["rc"], c["stdout"][:200]) for c in dels])
        note("meshinit ADD code %s; containerd's DEL after it exit 0 (%d calls)" % (err.get("code"), len(dels)))
        pod.nothing_left("after the refused pod")
        return add


@case
def bad_annotation_refused(w):
    """traffic.sidecar.istio.io/excludeOutboundPorts=81,eighty: RunPodSandbox fails naming the
    annotation (meshinit code 7), the DEL that follows succeeds, nothing is left."""
    annotation = "traffic.sidecar.istio.io/excludeOutboundPorts"
    refused(w, dict(ISTIO, **{annotation: "81,eighty"}), annotation, code=7)


@case
def bad_interception_mode_refused(w):
    """sidecar.istio.io/interceptionMode=BOGUS: refused the same way, nothing left."""
    annotation = "sidecar.istio.io/interceptionMode"
    refused(w, dict(ISTIO, **{annotation: "BOGUS"}), annotation, code=7)


@case
def no_capability_refused(w):
    """A conflist whose meshinit entry does not declare the capability
    io.kubernetes.cri.pod-annotations: containerd passes no annotation map, so the plugin
    cannot tell a sidecar pod. ADD must fail naming the capability (issue 16, defect 4: it
    used to start the pod uncaptured), the DEL after it succeed, nothing be left."""
    add = refused(w, ISTIO, ANNOTATIONS_CAP, handler="nocap")
    rc = json.loads(add["stdin"]).get("runtimeConfig")
    if rc and ANNOTATIONS_CAP in rc:
        raise Failure("harness: containerd passed the annotations without the capability: %s" % json.dumps(rc)[:200])


FUTURE_KEY = "renamedInTheNextVersion"


def load_new_conf(w, handler, key):
    """Starts probe pods through `handler` until meshinit's ADD sees `key` (containerd reloads
    a conf dir on inotify); each probe is torn down and checked. Returns the problems seen."""
    problems = []
    deadline = time.time() + 15
    while time.time() < deadline:
        with Pod(w, ISTIO, handler=handler) as probe:
            try:
                probe.run()
                ran, err = True, ""
            except Failure as e:
                ran, err = False, str(e)
            add = probe.add_call()
            seen = bool(add) and key in json.loads(add["stdin"])
            if ran:
                try:
                    probe.stop_and_remove()
                except Failure as e:
                    problems.append("probe pod (%s the new key): %s" % ("with" if seen else "without", e))
            elif probe.leaked:
                problems.append("probe pod with the new key refused and kept by containerd: %s" % err[:900])
            else:
                probe.nothing_left("after the refused probe pod")
            if seen:
                note("a pod started after the change: meshinit ADD with %r -> exit %d %s" % (
                    key, add["rc"], add["stdout"].strip()[:160] if add["rc"] else "(started)"))
                return problems
        time.sleep(0.3)
    raise Failure("harness: containerd did not load the changed conflist of handler %r in 15 s" % handler)


@case
def del_after_conf_change(w):
    """The conflist changes under a running sidecar pod (an upgrade renames a key, or a typo):
    containerd hands StopPodSandbox's DEL the new conf, with a key this plugin does not know.
    Stop and Remove must still succeed and leave nothing (issue 16, defect 2)."""
    with Pod(w, ISTIO, handler="upgrade") as pod:
        pod.run()
        pod.verify()
        pod.servers()
        pod.captured(WORLD_A, 80)
        w.write_conf("upgrade", dict(w.confs["upgrade"], **{FUTURE_KEY: True}))
        problems = load_new_conf(w, "upgrade", FUTURE_KEY)
        try:
            pod.stop_and_remove()
        except Failure as e:
            problems.append("the pod started before the change: %s" % e)
        dels = w.calls(pod.sid, "DEL")
        if not any(FUTURE_KEY in json.loads(c["stdin"]) for c in dels):
            problems.append("harness: no DEL of the pod got the changed conf")
        if problems:
            raise Failure("\n      ".join(problems))


@case
def no_annotations(w):
    """A pod without annotations (issue 16, defect 1): containerd passes the annotation map as
    null; the pod runs (requireAnnotation true: no sidecar, uncaptured) and Stop/Remove
    succeed and leave nothing."""
    with Pod(w, {}) as pod:
        try:
            pod.run()
        finally:
            adds = [c for c in w.calls(command="ADD") if ("K8S_POD_NAME=%s;" % pod.name) in c["env"].get("CNI_ARGS", "") + ";"]
            if adds:
                rc = json.loads(adds[-1]["stdin"]).get("runtimeConfig", {})
                note("containerd passed runtimeConfig %s; meshinit ADD exit %d%s" % (
                    json.dumps(rc), adds[-1]["rc"], (": " + adds[-1]["stdout"].strip()[:200]) if adds[-1]["rc"] else ""))
        got = annotations_passed(pod)
        if got is not None:
            raise Failure("containerd passed %r for a pod without annotations (the test expects null)" % (got,))
        nothing_ours(pod.enter(), "the pod netns (no sidecar)")
        pod.servers()
        pod.uncaptured(WORLD_A, 80)
        pod.stop_and_remove()


@case
def no_annotations_capture_all(w):
    """A pod without annotations through the "mesh" handler (requireAnnotation false): null is
    an empty map, so the plugin's defaults are installed and capture works; clean removal."""
    with Pod(w, {}, handler="mesh") as pod:
        pod.run()
        pod.verify()
        pod.servers()
        pod.captured(WORLD_A, 80)
        pod.captured(GATEWAY, 80, "app -> %s:80 captured (no conf exclude in this handler)" % GATEWAY)
        pod.inbound(8080, True)
        pod.stop_and_remove()


def timing(w, rounds):
    """RunPodSandbox wall time, handlers "bare" (bridge) and "mesh" (bridge -> meshinit),
    alternating; sidecar pods, so meshinit installs the capture."""
    times = {"bare": [], "mesh": []}
    teardown = {"bare": [], "mesh": []}
    for i in range(rounds):
        for handler in (("bare", "mesh") if i % 2 == 0 else ("mesh", "bare")):
            with Pod(w, ISTIO, handler=handler) as pod:
                pod.run()
                times[handler].append(pod.run_seconds * 1000)
                if handler == "mesh":
                    nothing = not ours(pod.enter())
                    if nothing:
                        raise Failure("timing pod through \"mesh\" has no capture installed")
                start = time.monotonic()
                w.cri.stop(pod.sid)
                w.cri.remove(pod.sid)
                teardown[handler].append((time.monotonic() - start) * 1000)
                pod.removed = True
                w.sandboxes.discard(pod.sid)
    for h in ("bare", "mesh"):
        print("measure RunPodSandbox %-4s (%s): median %.0f ms, min %.0f ms [%s]; Stop+Remove median %.0f ms" % (
            h, "bridge" if h == "bare" else "bridge -> meshinit", statistics.median(times[h]), min(times[h]),
            " ".join("%.0f" % t for t in times[h]), statistics.median(teardown[h])), flush=True)
    print("measure meshinit in the chain adds %+.0f ms to the median pod start (%d pods each)" % (
        statistics.median(times["mesh"]) - statistics.median(times["bare"]), rounds), flush=True)


# ----------------------------------------------------------------------------------------

def prerequisites(a):
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    if grpc is None:
        missing.append("python3-grpcio (import grpc)")
    for b in ("containerd", "ctr", "containerd-shim-runc-v2", "runc", "ip", "nsenter", "unshare", "setpriv", "nft",
              "iptables-nft-save", "busybox", "mount"):
        if not shutil.which(b):
            missing.append(b)
    busybox = shutil.which("busybox")
    if busybox and not static_elf(busybox):
        missing.append("a static busybox (busybox-static; %s is dynamic)" % busybox)
    for plugin in ("bridge", "host-local", "loopback"):
        if not os.access(os.path.join(CNI_DIR, plugin), os.X_OK):
            missing.append("%s/%s (containernetworking-plugins)" % (CNI_DIR, plugin))
    for path in sorted({a.bin, a.plugin}):
        if not os.access(path, os.X_OK):
            missing.append("%s (build it, or give --bin)" % path)
    if not os.path.isdir("/sys/fs/cgroup") or not any(
            l.split()[l.split().index("-") + 1] in ("cgroup", "cgroup2") for l in open("/proc/self/mountinfo")):
        missing.append("a cgroup hierarchy mounted under /sys/fs/cgroup")
    return missing


def install_missing():
    packages = ["containerd", "python3-grpcio", "runc", "busybox-static", "containernetworking-plugins"]
    if os.geteuid() != 0 or not shutil.which("apt-get") or not shutil.which("dpkg-query"):
        return
    missing = [p for p in packages if subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True,
                                                     text=True).stdout != "install ok installed"]
    if missing:
        print("cri: installing %s (apt)" % " ".join(missing), flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run("apt-get update -qq && apt-get install -y -qq %s >/dev/null" % " ".join(missing), shell=True,
                       env=env)
        if grpc is None and "python3-grpcio" in missing and os.environ.get("MESHINIT_CRI_REEXEC") != "2":
            os.environ["MESHINIT_CRI_REEXEC"] = "2"
            os.execv("/usr/bin/python3", ["/usr/bin/python3"] + sys.argv)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        return serve(sys.argv[2], [int(p) for p in sys.argv[3:]])
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        return client(sys.argv[2], int(sys.argv[3]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(ROOT, ".build", "debug", "meshinit"))
    ap.add_argument("--plugin", help="what the CNI bin dir's meshinit runs (default: --bin)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    a.plugin = os.path.abspath(a.plugin or a.bin)
    path = os.environ.get("PATH", "").split(":")
    os.environ["PATH"] = ":".join(path + [d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin")
                                          if d not in path])  # runc, ip, nft, sysctl live in sbin
    install_missing()
    missing = prerequisites(a)
    if missing:
        msg = "cri: missing prerequisites: %s" % ", ".join(missing)
        if os.environ.get("CI") == "true":
            print("FAIL " + msg)
            print("cri: 0 passed, 1 failed")
            return 1
        print("skip " + msg + " (CI=true would fail)")
        print("cri: 0 passed, 0 failed, 1 skipped")
        return 77
    print("cri: containerd CRI, chain bridge -> meshinit (%s); namespaces %s-*" % (a.plugin, PREFIX), flush=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *x: sys.exit(143))
    host_before = host_state()
    w = World(a)
    passed = failed = ran = 0
    try:
        try:
            w.up()
            passed += 1
            print("ok   containerd in the node netns, private dirs, sandbox image imported", flush=True)
        except Exception as e:
            failed += 1
            print("FAIL containerd setup: %s" % e, flush=True)
            if not isinstance(e, Failure):
                traceback.print_exc()
            raise
        for fn in CASES:
            if a.only and fn.__name__ not in a.only:
                continue
            ran += 1
            start = time.time()
            try:
                fn(w)
                passed += 1
                print("ok   %s (%.1fs)" % (fn.__name__, time.time() - start), flush=True)
            except Exception as e:
                failed += 1
                print("FAIL %s: %s" % (fn.__name__, e), flush=True)
                if not isinstance(e, Failure):
                    traceback.print_exc()
                errors = w.containerd_log(3, grep="level=error")
                if errors:
                    note("containerd's last errors:\n" + errors)
        if a.rounds > 0 and not a.only:
            try:
                timing(w, a.rounds)
            except Exception as e:
                failed += 1
                print("FAIL timing: %s" % e, flush=True)
        if not a.only or ran:
            left = {k: sorted(v) for k, v in w.snapshot().items() if v}
            if left and not failed:
                failed += 1
                print("FAIL after every case, left: %s" % left, flush=True)
            elif left:
                note("left behind by the failures above (removed by the teardown): %s" % left)
    except Exception:
        pass
    except (SystemExit, KeyboardInterrupt):
        failed += 1
        print("FAIL interrupted (signal): tearing down", flush=True)
    finally:
        w.down()
    cgroups = w.cgroup_dirs()
    if cgroups:
        failed += 1
        print("FAIL cgroups left: %s" % cgroups[:5], flush=True)
    after = host_state()
    changed = [k for k in after if after[k] != host_before[k]]
    if changed:
        failed += 1
        print("FAIL host changed: %s" % ", ".join(changed), flush=True)
        for k in changed:
            note("%s: before %s, after %s" % (k, str(host_before[k])[:300], str(after[k])[:300]))
    else:
        passed += 1
        print("ok   host unchanged (nft ruleset, ip_forward, links, /run/netns, containerd and CNI default paths); "
              "containerd, shims and pods gone, cgroups removed", flush=True)
    if a.only and not ran:
        print("cri: --only matched no case")
        failed += 1
    print("cri: %d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
