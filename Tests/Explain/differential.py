#!/usr/bin/env python3
"""Differential test of `meshinit explain` against the kernel.

For random configurations (every flag family: inbound and outbound port lists and ranges,
CIDRs of both families and long lists, proxy uids and gids, numbers and user/group names,
owner groups, excluded and kube-virt interfaces, REDIRECT and TPROXY with their mark and
table, DNS capture, drop-invalid, IPv6 on and off, the loopback CIDR) and both backends, it
installs the plan in a throwaway pod namespace, asks `explain` (one batch, `--pod-ip` naming
the pod's addresses) where each of many candidate packets goes, picks packets that together
meet every rule the candidates reach, and sends them for real: a socket as that uid/gid with
its SO_MARK (out), from the world namespace (in on eth0), from the VM namespace (in on eth1,
the kube-virt side), including packets routed through the pod both ways (world -> VM,
VM -> world and elsewhere). Listeners in the pod on the proxy ports (15001/15101 outbound,
15006/15106 inbound, transparent), on 15053 (DNS) and on the app ports, and a catch-all in the
world and in the VM, each report what they got (SO_ORIGINAL_DST, the local address).
explain's verdict must equal what happened:

    redirect P  -> the listener on P got it, SO_ORIGINAL_DST = the packet's destination, local
                   address = explain's localAddress (when it names one)
    tproxy P    -> the listener on P got it at the packet's destination, or, when nat rewrote it
                   after TPROXY (`rewritten`: -m TPROXY -k), at localAddress with SO_ORIGINAL_DST
                   = the packet's destination
    pass        -> where=local: the app on the port got it (at localAddress);
                   where=leaves/forwarded: the catch-all behind `interface` got it (eth0: the
                   world, eth1: the VM), addressed as sent
    drop        -> nobody got it

Beside the packets: every "why" must name a rule of the printed path the way it says (the
decisive rule; the last rule, for "sent it to CHAIN" and "after rule N"); three packets per
configuration (one right after an inbound packet) explained alone must print exactly the
batch's line for them; every fifth configuration is also explained with --live (the rules
read back from the kernel, the namespace's own addresses and routes): it must agree with the
plan (exit 0, no divergence, the same kind, where, interface and localAddress).

Topology (forwarding on in the pod):

    world (veth1 10.200.0.1/24, fd00:200::1/64; routes 10.201.0.0/24, fd00:201::/64 via the pod)
      <-> pod (eth0 10.200.0.2/24, fd00:200::2/64, default routes via the world;
               eth1 10.201.0.1/24, fd00:201::1/64)
      <-> VM (vm0 10.201.0.2/24, fd00:201::2/64, default routes via the pod)

The world and the VM redirect (nat prerouting) every TCP/UDP packet reaching them to their
catch-all on 9999, so any destination address "exists". TPROXY's ISTIO_DIVERT marks the
replies of every established TCP connection arriving, so a forwarded TCP connection cannot
complete in TPROXY mode: there TCP packets explain says are forwarded are not sent (UDP is).

Mutation (run once, see the report of issue 18): make TPROXY end the hook instead of the
mangle table — in Sources/MeshExplain/Explainer.swift `traverse`, `case .tproxied`: add
`walk.done = true; walk.result.verdict = .tproxied(port: port, mark: mark);
walk.result.decisive = i; return false` — and the configurations with -m TPROXY and a
kube-virt interface fail (run once, iptables, 60 configurations: 2 failed, e.g. seed
20261203036: "in tcp 10.201.0.2:443 iface=eth0: explain: TPROXY keeping 10.201.0.2:443; the
listener's address is 10.200.0.2:15101", and an IPv6 `:PORT` from the VM likewise). Keying Report.ReasonKey without the path's last
rule (`last: -1`, the state leak of issue 18) fails the command-line checks ("explain batch: out
tcp 10.66.0.2:80 ...: why: 'no rule captured it: rule 1 sent it to ISTIO_INBOUND, where no rule
matched it', but path rule 1 is 'add rule inet istio-proxy-nat output counter jump
istio-output'"; run once: 2 problems).

Usage: differential.py --bin PATH [--configs N] [--seed S] [--backend iptables|nft|both]
    [--only N]
Seeds are fixed and printed; a failure prints the configuration and the packet. With
CI=true a missing prerequisite fails; zero configurations run is a failure.
"""
import argparse
import ctypes
import grp
import json
import os
import pwd
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.abspath(__file__)
PREFIX = "mx%d" % os.getpid()
SO_ORIGINAL_DST = 80
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
POD4, POD6 = "10.200.0.2", "fd00:200::2"
WORLD4, WORLD6 = "10.200.0.1", "fd00:200::1"
# The pod's side of the VM link (its kube-virt interface eth1) and the VM behind it.
PODK4, PODK6 = "10.201.0.1", "fd00:201::1"
VM4, VM6 = "10.201.0.2", "fd00:201::2"
POD_IPS = "eth0=%s/24,eth0=%s/64,eth1=%s/24,eth1=%s/64" % (POD4, POD6, PODK4, PODK6)
SO_MARK = 36
DNS4, DNS6 = "10.96.0.10", "fd00:96::a"
OUTBOUND = (15001, 15101)
INBOUND = (15006, 15106)
DNS_PORT = 15053
CATCH = 9999
APP_PORTS = [22, 53, 80, 443, 3306, 6379, 8080, 9000, 9090, 15008, 15020, 15021, 15090, 20000, 30000]


# ---------------------------------------------------------------------------------------
# The agent: runs in a namespace, listens, sends packets on request, reports as JSON lines.

def fmt(addr):
    return ("[%s]:%d" if ":" in addr[0] else "%s:%d") % (addr[0], addr[1])


def original_dst(conn, family):
    try:
        if family == socket.AF_INET:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, addr = struct.unpack("!2xH4s8x", raw)
            return "%s:%d" % (socket.inet_ntop(socket.AF_INET, addr), port)
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port, addr = struct.unpack("!2xH4x16s4x", raw)
        return "[%s]:%d" % (socket.inet_ntop(socket.AF_INET6, addr), port)
    except OSError:
        return None


def emit(event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def agent(role):
    socks = {}
    if role == "pod":
        plan = [(p, "tcp", "outbound") for p in OUTBOUND] + [(p, "tcp", "inbound") for p in INBOUND]
        plan += [(DNS_PORT, "tcp", "dns"), (DNS_PORT, "udp", "dns")]
        plan += [(p, proto, "app") for p in APP_PORTS for proto in ("tcp", "udp")]
    else:  # the world and the VM: a catch-all each
        plan = [(CATCH, "tcp", role), (CATCH, "udp", role)]
    for port, proto, kind in plan:
        for fam, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if fam == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if kind == "inbound":  # TPROXY needs a transparent listener; REDIRECT works too
                if fam == socket.AF_INET:
                    s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                else:
                    s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
            s.bind((host, port))
            if proto == "tcp":
                s.listen(128)
            s.setblocking(False)
            socks[s.fileno()] = (s, fam, proto, kind, port)
    emit({"ev": "ready"})
    children = {}
    stdin = sys.stdin.fileno()
    buffered = b""
    udp_sent = 0
    while True:
        fds = list(socks) + [stdin]
        ready, _, _ = select.select(fds, [], [], 0.02)
        for fd in ready:
            if fd == stdin:
                chunk = os.read(stdin, 65536)
                if not chunk:
                    return
                buffered += chunk
                while b"\n" in buffered:
                    line, buffered = buffered.split(b"\n", 1)
                    command = json.loads(line)
                    if command["proto"] == "udp":
                        # A source port of its own for every UDP packet of the run: with the
                        # kernel's random one, two packets to the same destination could share
                        # a conntrack entry, and the second would get the first one's NAT
                        # (nat rules see a flow's first packet only), not what its rules say.
                        command["sport"] = UDP_SOURCE_PORTS[0] + udp_sent % UDP_SOURCE_PORTS[1]
                        udp_sent += 1
                    pid = os.fork()
                    if pid == 0:
                        os._exit(send(command))
                    children[pid] = command["id"]
                continue
            s, fam, proto, kind, port = socks[fd]
            try:
                if proto == "udp":
                    data, peer = s.recvfrom(512)
                    emit({"ev": "got", "id": int(data.decode()), "kind": kind, "port": port, "orig": None,
                          "local": None, "peer": fmt(peer)})
                    continue
                conn, peer = s.accept()
            except (BlockingIOError, ValueError):
                continue
            try:
                conn.settimeout(1.0)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(64)
                    if not chunk:
                        break
                    data += chunk
                emit({"ev": "got", "id": int(data.decode().strip()), "kind": kind, "port": port,
                      "orig": original_dst(conn, fam), "local": fmt(conn.getsockname()[:2]),
                      "peer": fmt(peer[:2])})
            except (OSError, ValueError) as e:
                emit({"ev": "error", "error": str(e)})
            finally:
                conn.close()
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            emit({"ev": "sent", "id": children.pop(pid), "status": os.waitstatus_to_exitcode(status)})


# Source ports of the agents' UDP packets: above the ephemeral range (32768-60999), one per
# packet, 4,000 before a port is used again (a run sends fewer from one agent).
UDP_SOURCE_PORTS = (61000, 4000)


def send(c):
    """In a forked child: become the packet's owner and send it. Exit status 0: sent."""
    try:
        if c.get("mark"):  # SO_MARK needs CAP_NET_ADMIN: keep it across setuid
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(8, 1, 0, 0, 0)  # PR_SET_KEEPCAPS
        if c.get("gid") is not None:
            os.setgroups([])
            os.setgid(c["gid"])
        if c.get("uid") is not None:
            os.setuid(c["uid"])
        if c.get("mark"):
            header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
            data = (ctypes.c_uint32 * 6)(1 << 12, 1 << 12, 0, 0, 0, 0)  # CAP_NET_ADMIN effective, permitted
            if libc.capset(header, data) != 0:
                return 4
        fam = socket.AF_INET6 if ":" in c["dst"] else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM if c["proto"] == "tcp" else socket.SOCK_DGRAM)
        if c.get("mark"):
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, c["mark"])
        if c.get("src") or c.get("sport"):
            host = c.get("src") or ("::" if fam == socket.AF_INET6 else "0.0.0.0")
            try:
                s.bind((host, c.get("sport", 0)))
            except OSError:
                s.bind((host, 0))  # that port is a listener's here: the kernel's choice, as before
        payload = b"%d" % c["id"]
        if c["proto"] == "udp":
            s.sendto(payload, (c["dst"], c["port"]))
            return 0
        s.settimeout(1.5)
        s.connect((c["dst"], c["port"]))
        s.sendall(payload + b"\n")
        s.recv(1)  # the listener closes after reading
        return 0
    except OSError:
        return 3


# ---------------------------------------------------------------------------------------
# Orchestration

class Failure(Exception):
    pass


def sh(cmd, check=True, stdin=None, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, input=stdin, env=env)
    if check and p.returncode != 0:
        raise Failure("%s -> %d: %s" % (" ".join(cmd), p.returncode, (p.stderr or p.stdout).strip()[:800]))
    return p


class Agent:
    def __init__(self, ns, role):
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, HERE, "agent", role],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        self.buffer = b""
        line = self.p.stdout.readline()
        if b"ready" not in line:
            raise Failure("agent %s did not start" % role)

    def send(self, commands):
        for c in commands:
            self.p.stdin.write((json.dumps(c) + "\n").encode())
        self.p.stdin.flush()

    def events(self):
        out = []
        while True:
            ready, _, _ = select.select([self.p.stdout], [], [], 0)
            if not ready:
                return out
            chunk = os.read(self.p.stdout.fileno(), 65536)
            if not chunk:
                return out
            self.buffer += chunk
            while b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                out.append(json.loads(line))

    def stop(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except OSError:
            pass
        self.p.wait()


class Topology:
    """world <-> pod <-> VM: the pod routes between them (forwarding on), as a pod with a VM
    behind a kube-virt interface does."""

    CATCH_ALL = """
table inet catch {
    chain pre { type nat hook prerouting priority -100; policy accept; meta l4proto { tcp, udp } redirect to :%d; }
}
""" % CATCH

    def __init__(self):
        self.pod = PREFIX + "-pod"
        self.world = PREFIX + "-world"
        self.vm = PREFIX + "-vm"
        self.agents = []

    def __enter__(self):
        for ns in (self.pod, self.world, self.vm):
            sh(["ip", "netns", "add", ns])
            self.ns(ns, ["ip", "link", "set", "lo", "up"])
        sh(["ip", "link", "add", "eth0", "netns", self.pod, "type", "veth", "peer", "name", "veth1", "netns",
            self.world])
        sh(["ip", "link", "add", "eth1", "netns", self.pod, "type", "veth", "peer", "name", "vm0", "netns", self.vm])
        for ns, dev, v4, v6 in ((self.pod, "eth0", POD4 + "/24", POD6 + "/64"),
                                (self.world, "veth1", WORLD4 + "/24", WORLD6 + "/64"),
                                (self.pod, "eth1", PODK4 + "/24", PODK6 + "/64"),
                                (self.vm, "vm0", VM4 + "/24", VM6 + "/64")):
            self.ns(ns, ["ip", "addr", "add", v4, "dev", dev])
            self.ns(ns, ["ip", "-6", "addr", "add", v6, "dev", dev, "nodad"])
            self.ns(ns, ["ip", "link", "set", dev, "up"])
        self.ns(self.pod, ["ip", "route", "add", "default", "via", WORLD4])
        self.ns(self.pod, ["ip", "-6", "route", "add", "default", "via", WORLD6])
        self.ns(self.world, ["ip", "route", "add", "10.201.0.0/24", "via", POD4])
        self.ns(self.world, ["ip", "-6", "route", "add", "fd00:201::/64", "via", POD6])
        self.ns(self.vm, ["ip", "route", "add", "default", "via", PODK4])
        self.ns(self.vm, ["ip", "-6", "route", "add", "default", "via", PODK6])
        self.ns(self.pod, ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                           "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])
        # Every TCP/UDP packet reaching the world or the VM is its catch-all's, whatever its address.
        for ns in (self.world, self.vm):
            self.ns(ns, ["nft", "-f", "-"], stdin=self.CATCH_ALL)
        self.pod_agent = Agent(self.pod, "pod")
        self.agents.append(self.pod_agent)
        self.world_agent = Agent(self.world, "world")
        self.agents.append(self.world_agent)
        self.vm_agent = Agent(self.vm, "vm")
        self.agents.append(self.vm_agent)
        return self

    def __exit__(self, *exc):
        for a in self.agents:
            a.stop()
        for ns in (self.pod, self.world, self.vm):
            sh(["ip", "netns", "del", ns], check=False)

    def ns(self, ns, cmd, **kw):
        return sh(["ip", "netns", "exec", ns] + cmd, **kw)


# ---------------------------------------------------------------------------------------
# Random configurations and candidate packets

def v4net(r):
    return "10.%d.0.0/16" % r.randrange(1, 100)


def v6net(r):
    return "fd00:%x::/32" % r.randrange(1, 0x100)


def port_list(r, long_ok=True):
    choice = r.randrange(6)
    if choice == 0:
        return ""
    if choice == 1:
        return ",".join(str(p) for p in r.sample(APP_PORTS, r.randrange(1, 4)))
    if choice == 2:
        a = r.choice(APP_PORTS)
        return "%d-%d" % (a, a + r.randrange(1, 200))
    if choice == 3 and long_ok:  # more than 16: nft matches it with one set
        return ",".join(str(p) for p in sorted(r.sample(APP_PORTS, 12)) + ["%d" % (40000 + i) for i in range(6)])
    return ",".join([str(r.choice(APP_PORTS)), "%d-%d" % (9000, 9100)])


def cidr_list(r, ipv6):
    choice = r.randrange(5)
    if choice == 0:
        return []
    if choice == 1:  # a long list: a set in nft
        return ["10.%d.0.0/16" % i for i in r.sample(range(1, 100), 20)]
    items = [v4net(r) for _ in range(r.randrange(1, 4))]
    if ipv6 or r.randrange(2):
        items += [v6net(r) for _ in range(r.randrange(1, 3))]
    if r.randrange(4) == 0:
        items.append(DNS4 + "/32")
    return items


def random_config(r):
    """Flags (a list), environment (a dict) and the facts the packet drawing needs."""
    ipv6 = r.randrange(2) == 0
    tproxy = r.randrange(3) == 0
    uids = ["1337"] if r.randrange(3) else ["1337", "1500"]
    # User and group names too (resolved as the kernel's owner match sees them: numbers).
    if r.randrange(3) == 0:
        uids.append(r.choice(["daemon", "bin"]))
    gid_flag = r.choice(["", "", "1337", "1600", "daemon", "bin"])
    include = r.choice(["*", "*", "", "list"])
    include_list = cidr_list(r, ipv6) if include == "list" else []
    exclude = cidr_list(r, ipv6)
    inbound = r.choice(["*", "*", "", "list"])
    f = {
        "-p": str(r.choice(OUTBOUND)),
        "-z": str(r.choice(INBOUND)),
        "-u": ",".join(uids),
        "-g": gid_flag,
        "-m": "TPROXY" if tproxy else r.choice(["REDIRECT", "REDIRECT", ""]),
        "-i": ",".join(include_list) if include == "list" else include,
        "-x": ",".join(exclude),
        "-b": (port_list(r) or "80,8080") if inbound == "list" else inbound,
        "-d": port_list(r),
        "-q": port_list(r, long_ok=False),
        "-o": port_list(r, long_ok=False),
        "-c": r.choice(["", "", "", "", "eth0", "eth+", "lo", "eth1"]),
        "-k": r.choice(["", "", "eth1", "eth1", "eth1", "eth0"]),
        "-t": r.choice(["1337", "1400"]),
        "-r": r.choice(["133", "140"]),
    }
    flags = []
    for k, v in f.items():
        flags += [k, v]
    flags.append("--ipv6=%s" % ("on" if ipv6 else "off"))
    dns = r.randrange(3)
    if dns:
        flags.append("--redirect-dns")
        if dns == 2:
            flags.append("--capture-all-dns")
    if r.randrange(3) == 0:
        flags.append("--drop-invalid")
    env = {}
    groups = []
    g = r.randrange(5)
    if g == 0:
        env["ISTIO_OUTBOUND_OWNER_GROUPS"] = "3000"
        groups = [3000]
    elif g == 1:
        env["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"] = "3000"
        groups = [3000]
    if r.randrange(5) == 0:
        env["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"] = "127.0.0.1/8"
    def uid(u):
        return int(u) if u.isdigit() else pwd.getpwnam(u).pw_uid

    def gid(g):
        return int(g) if g.isdigit() else grp.getgrnam(g).gr_gid
    facts = {"uids": [uid(u) for u in uids], "gids": [gid(gid_flag)] if gid_flag else [uid(u) for u in uids],
             "groups": groups, "include": include_list, "exclude": exclude, "ipv6": ipv6, "tproxy": tproxy,
             "mark": int(f["-t"]),
             "ports": sorted({int(p) for key in ("-b", "-d", "-q", "-o") for p in ports_in(f[key])})}
    return flags, env, facts


def ports_in(text):
    out = []
    for item in filter(None, text.split(",")):
        if item == "*":
            continue
        if "-" in item:
            a, b = item.split("-")
            out += [int(a), int(b)]
        else:
            out.append(int(item))
    return [p for p in out if p in APP_PORTS]


def address_in(cidr, r):
    """An address inside `cidr` (not its network address)."""
    net, length = cidr.split("/")
    if ":" in net:
        return "fd00:%x::%x" % (int(net.split(":")[1], 16), r.randrange(1, 0xffff)) if int(length) >= 32 else net
    a = [int(x) for x in net.split(".")]
    if int(length) >= 32:
        return net
    return "%d.%d.%d.%d" % (a[0], a[1], r.randrange(0, 256), r.randrange(1, 255))


def candidates(r, facts):
    """Packets to explain (a few hundred: explain takes them all in one call): every owner
    (app, root, each proxy uid and gid, the owner groups), destinations inside every listed
    CIDR and outside, every listed port, DNS servers, loopback, the pod's own address and the
    passthrough source over lo, inbound to every port; both families."""
    out = []
    owners = ["uid=1000", "uid=0"] + ["uid=%d" % u for u in facts["uids"]]
    owners += ["uid=1000 gid=%d" % g for g in facts["gids"] + facts["groups"]]
    ports = sorted(set(facts["ports"] + [80, 8080, 53, 15008, 22]))
    v4 = [address_in(c, r) for c in facts["include"] + facts["exclude"] if ":" not in c]
    v6 = [address_in(c, r) for c in facts["include"] + facts["exclude"] if ":" in c]
    v4 += ["192.168.7.%d" % r.randrange(1, 255), "10.%d.1.1" % r.randrange(100, 199)]
    v6 += ["2001:db8::%x" % r.randrange(1, 0xffff)]
    remote = [(h, False) for h in v4] + [(h, True) for h in v6]
    for host, six in remote:
        dst = "[%s]" % host if six else host
        for owner in owners:
            for port in set(r.sample(ports, min(3, len(ports))) + [80]):
                out.append("out %s %s:%d %s" % (r.choice(["tcp", "tcp", "udp"]), dst, port, owner))
    for port in ports:  # every listed port, from the app, to a destination no CIDR names
        for proto in ("tcp", "udp"):
            out.append("out %s 192.168.8.%d:%d uid=1000" % (proto, r.randrange(1, 255), port))
            out.append("out %s [2001:db8:8::%x]:%d uid=1000" % (proto, r.randrange(1, 0xffff), port))
    for server, six in ((DNS4, False), (DNS6, True), ("192.168.9.9", False)):
        dst = "[%s]" % server if six else server
        for owner in owners:
            for proto in ("udp", "tcp"):
                out.append("out %s %s:53 %s" % (proto, dst, owner))
    for six in (False, True):  # stays in the pod
        loop, pod, src = ("[::1]", "[%s]" % POD6, "::6") if six else ("127.0.0.1", POD4, "127.0.0.6")
        for owner in owners:
            for port in (8080, 15008, 53):
                for proto in ("tcp", "udp"):
                    out.append("out %s %s:%d %s" % (proto, loop, port, owner))
                    out.append("out %s %s:%d %s iface=lo" % (proto, pod, port, owner))
        for uid in facts["uids"] + [1000]:
            out.append("out tcp %s:8080 uid=%d iface=lo src=%s" % (pod, uid, src))
    for six in (False, True):
        pod, world = ("[%s]" % POD6, WORLD6) if six else (POD4, WORLD4)
        for port in sorted(set(ports + APP_PORTS)):
            out.append("in tcp %s:%d src=%s" % (pod, port, world))
            if r.randrange(3) == 0:
                out.append("in udp %s:%d src=%s" % (pod, port, world))
    # Through the pod and into its kube-virt side: world -> VM, VM -> world and elsewhere,
    # VM -> the pod's own addresses (`:PORT` is eth1's, given --pod-ip).
    for six in (False, True):
        vm, world, podk, pod = (VM6, WORLD6, PODK6, POD6) if six else (VM4, WORLD4, PODK4, POD4)
        elsewhere = "2001:db8:5::%x" % r.randrange(1, 0xffff) if six else "192.168.5.%d" % r.randrange(1, 255)

        def b(h):
            return "[%s]" % h if six else h
        for port in sorted(set(ports + r.sample(APP_PORTS, 4))):
            for proto in ("tcp", "udp"):
                out.append("in %s %s:%d src=%s" % (proto, b(vm), port, world))
                out.append("in %s %s:%d iface=eth1 src=%s" % (proto, b(world), port, vm))
                out.append("in %s %s:%d iface=eth1 src=%s" % (proto, b(elsewhere), port, vm))
                out.append("in %s :%d iface=eth1 src=%s%s" % (proto, port, vm, " family=ipv6" if six else ""))
                out.append("in %s %s:%d iface=eth1 src=%s" % (proto, b(pod), port, vm))
                out.append("out %s %s:%d uid=%d" % (proto, b(vm), port, r.choice([1000] + facts["uids"])))
    # Packet marks (SO_MARK): the TPROXY route's mark takes any destination through lo.
    for mark in sorted({facts["mark"], 1338, 7}):
        for owner in ("uid=1000", "uid=%d" % facts["uids"][0]):
            out.append("out tcp 192.168.6.%d:80 %s mark=%d" % (r.randrange(1, 255), owner, mark))
            out.append("out udp [2001:db8:6::%x]:8080 %s mark=%d" % (r.randrange(1, 0xffff), owner, mark))
            out.append("out tcp [2001:db8:6::%x]:80 %s mark=%d" % (r.randrange(1, 0xffff), owner, mark))
            out.append("out udp 192.168.6.%d:53 %s mark=%d" % (r.randrange(1, 255), owner, mark))
            out.append("out tcp %s:8080 %s mark=%d iface=lo" % (POD4, owner, mark))
    if not facts["ipv6"]:
        # Without IPv6 on, meshinit adds no ::6 to lo: nothing can send from it.
        out = [p for p in out if "src=::6" not in p]
    return out


def rule_keys(path):
    return {(s["table"], s["chain"], s["nft"]) for s in path}


def choose(explained, r, tproxy, extra=3):
    """Packets that together meet every rule and verdict the candidates reach, plus a few
    more at random. In TPROXY mode, not a TCP packet explain says is forwarded: ISTIO_DIVERT
    marks the replies of every established TCP connection arriving, so such a connection
    cannot complete to show where its first packet went (explain speaks of that packet)."""
    covered = set()
    chosen = []
    order = [i for i in range(len(explained)) if not (
        tproxy and explained[i]["protocol"] == "tcp" and explained[i]["verdict"].get("where") == "forwarded")]
    r.shuffle(order)
    for i in order:
        e = explained[i]
        v = e["verdict"]
        keys = rule_keys(e["path"]) | {("verdict", v["kind"], str(v.get("port"))),
                                       ("delivery", sender(e), e["family"], v["kind"], v.get("where"), v.get("rewritten"))}
        if keys - covered:
            covered |= keys
            chosen.append(i)
    rest = [i for i in order if i not in chosen]
    chosen += rest[:extra]
    return sorted(chosen), covered


def destination(e):
    """The packet's destination address (`:PORT`: the address of the pod's interface)."""
    if e["destination"]:
        return e["destination"]
    six = e["family"] == "ipv6"
    if e["interface"] == "eth1":
        return PODK6 if six else PODK4
    return POD6 if six else POD4


def endpoint(e):
    host = destination(e)
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, e["port"])


def sender(e):
    """Which namespace sends the packet: the pod, the world (in on eth0) or the VM (on eth1)."""
    if e["direction"] == "out":
        return "pod"
    return "vm" if e["interface"] == "eth1" else "world"


def command(e, pid):
    c = {"id": pid, "proto": e["protocol"], "dst": destination(e), "port": e["port"]}
    if e["direction"] == "out":
        c["uid"], c["gid"] = e["uid"], e["gid"]
        c["mark"] = e.get("mark", 0)
        if e["source"] and e["interface"] == "lo" and e["source"] != e["destination"] and \
                e["source"] not in ("127.0.0.1", "::1"):
            c["src"] = e["source"]
    else:
        c["src"] = e["source"]
    return c


def judge(e, got):
    """Empty when what happened is what explain said; else the difference."""
    v = e["verdict"]
    dst = endpoint(e)
    tcp = e["protocol"] == "tcp"
    local = v.get("localAddress")
    if v["kind"] == "uncertain":
        return "explain is uncertain about a plan it made"
    if v["kind"] == "drop":
        return "" if not got else "explain: dropped; got by %s" % got
    if len(got) != 1:
        return "explain: %s; %s" % (v["text"], "nobody got it" if not got else "got %d times: %s" % (len(got), got))
    g = got[0]
    if v["kind"] == "redirect":
        if g["port"] != v["port"]:
            return "explain: redirect to %d; got by %s %d" % (v["port"], g["kind"], g["port"])
        if tcp and g["orig"] != dst:
            return "explain: redirect keeping %s; the listener read SO_ORIGINAL_DST %s" % (dst, g["orig"])
        if tcp and local and g["local"] != local:
            return "explain: redirect to %s; the listener's address is %s" % (local, g["local"])
        return ""
    if v["kind"] == "tproxy":
        if g["port"] != v["port"]:
            return "explain: TPROXY to %d; got by %s %d" % (v["port"], g["kind"], g["port"])
        if tcp and v.get("rewritten"):  # then nat rewrote the destination (a REDIRECT after TPROXY)
            if g["local"] != local or g["orig"] != dst:
                return "explain: TPROXY, then nat to %s keeping %s; the listener's address is %s, " \
                    "SO_ORIGINAL_DST %s" % (local, dst, g["local"], g["orig"])
        elif tcp and g["local"] != dst:
            return "explain: TPROXY keeping %s; the listener's address is %s" % (dst, g["local"])
        return ""
    # pass
    if v.get("where") == "local":
        if g["kind"] != "app" or g["port"] != e["port"]:
            return "explain: not captured (the app on %d); got by %s %d" % (e["port"], g["kind"], g["port"])
        if tcp and g["local"] != (local or dst):
            return "explain: not captured; the app's address is %s, not %s" % (g["local"], local or dst)
        return ""
    expected = {"eth0": "world", "eth1": "vm"}.get(v.get("interface"))
    if v.get("where") not in ("leaves", "forwarded") or g["kind"] != expected:
        return "explain: %s through %s; got by %s %d" % (v.get("where"), v.get("interface"), g["kind"], g["port"])
    if tcp and g["orig"] != dst:
        return "explain: %s for %s; the %s saw %s" % (v["where"], dst, g["kind"], g["orig"])
    return ""


def why_on_path(e):
    """Empty when the "why" names a rule of the printed path the way it says; else what is wrong."""
    why, path, n = e["verdict"]["why"], e["path"], None
    m = re.search(r"rule (\d+)", why)
    if m:
        n = int(m.group(1))
        if not 1 <= n <= len(path):
            return "why names rule %d of a %d-rule path: %s" % (n, len(path), why)
    if why.startswith(("decided by rule", "let go by rule")) or why.startswith("rule "):
        return "" if n == e["decisive"] else "why names rule %s, the decisive rule is %s" % (n, e["decisive"])
    m = re.search(r"sent it to (\S+), where", why)
    if m:
        jump = "jump " + m.group(1).lower().replace("_", "-")
        if n != len(path) or not path[-1]["nft"].endswith(jump):
            return "why: %r, but path rule %d is %r" % (why, len(path), path[-1]["nft"])
        return ""
    if "after rule" in why:
        return "" if n == len(path) else "why: %r of a %d-rule path" % (why, len(path))
    if why == "no rule captured it":
        return "" if not path else "why: %r, but %d rules matched" % (why, len(path))
    if why == "":
        return "" if e["decisive"] is None and e["verdict"]["kind"] == "drop" else "no why for %s" % e["verdict"]
    return "why not understood: %r" % why


def run_config(topo, binary, backend, flags, env, facts, r, live, stats):
    pod = ["ip", "netns", "exec", topo.pod]
    environment = dict(os.environ, **env)
    extra = ["--native-nftables"] if backend == "nft" else []
    sh(pod + [binary, "clean"], env=environment)
    sh(pod + [binary] + flags + extra, env=environment)
    packets = candidates(r, facts)
    explain = pod + [binary, "explain", "--format", "json", "--pod-ip", POD_IPS] + flags + extra
    p = sh(explain + ["-"], stdin="\n".join(packets) + "\n", env=environment)
    lines = p.stdout.splitlines()
    explained = [json.loads(line) for line in lines]
    if len(explained) != len(packets):
        raise Failure("explain answered %d of %d packets" % (len(explained), len(packets)))
    failures = []
    for e in explained:
        problem = why_on_path(e)
        if problem:
            failures.append("%s\n      %s" % (e["packet"], problem))
    # A batch is N single calls: a few packets explained alone (one of them the one after
    # an inbound packet, where a reason once leaked) answer what the batch did.
    after_in = [i + 1 for i in range(len(packets) - 1) if packets[i].startswith("in ")][:1]
    for i in after_in + r.sample(range(len(packets)), 2):
        alone = sh(explain + [packets[i]], env=environment).stdout.strip()
        stats["alone"] += 1
        if alone != lines[i]:
            failures.append("%s\n      explained alone: %s\n      in the batch:    %s" % (packets[i], alone, lines[i]))
    chosen, covered = choose(explained, r, facts["tproxy"])
    planned = json.loads(sh(pod + [binary, "plan", "--format", "json"] + flags + extra, env=environment).stdout)
    rules = {(op["table"], op["chain"], "add rule inet istio-proxy-%s %s %s" % (
        op["table"], op["chain"].lower().replace("_", "-"), op["nft"])) for op in planned["operations"]}
    stats["rules"] += len(rules)
    stats["hit"] += len(rules & covered)
    if live:
        p = sh(pod + [binary, "explain", "--live", "--format", "json"] + flags + extra + ["-"],
               stdin="\n".join(packets[i] for i in chosen) + "\n", env=environment, check=False)
        if p.returncode != 0:
            diverging = [l for l in p.stdout.splitlines() if json.loads(l)["divergence"]]
            raise Failure("explain --live exit %d: %s %s" % (p.returncode, p.stderr.strip()[-400:],
                                                             " ".join(diverging)[-1500:]))
        for line, i in zip(p.stdout.splitlines(), chosen):
            l = json.loads(line)
            ours = {k: explained[i]["verdict"].get(k) for k in ("kind", "where", "interface", "localAddress")}
            theirs = {k: l["verdict"].get(k) for k in ours}
            if l["divergence"] or ours != theirs:
                raise Failure("explain --live (the namespace's addresses) disagrees with the plan (--pod-ip) for %s: "
                              "%s %s / %s" % (packets[i], l["divergence"], theirs, ours))
        stats["live"] += len(chosen)
    base = stats["sent"] * 1000 + 1000
    by_id = {}
    commands = {"pod": [], "world": [], "vm": []}
    for n, i in enumerate(chosen):
        pid = base + n
        by_id[pid] = explained[i]
        commands[sender(explained[i])].append(command(explained[i], pid))
    agents = {"pod": topo.pod_agent, "world": topo.world_agent, "vm": topo.vm_agent}
    for name, agent in agents.items():
        agent.send(commands[name])
    got = {pid: [] for pid in by_id}
    sent = set()
    deadline = time.time() + 3.0
    settle = None
    while time.time() < deadline:
        for agent in agents.values():
            for ev in agent.events():
                if ev["ev"] == "got" and ev["id"] in got:
                    got[ev["id"]].append(ev)
                elif ev["ev"] == "sent" and ev["id"] in got:
                    sent.add(ev["id"])
        if len(sent) == len(by_id):
            settle = settle or time.time() + 0.05
            if time.time() >= settle:
                break
        time.sleep(0.005)
    for pid, e in by_id.items():
        stats["sent"] += 1
        stats["kinds"][e["verdict"]["kind"]] = stats["kinds"].get(e["verdict"]["kind"], 0) + 1
        where = "%s %s" % (sender(e), e["verdict"].get("where"))
        stats["wheres"][where] = stats["wheres"].get(where, 0) + 1
        problem = judge(e, got[pid])
        if problem:
            failures.append("%s\n      %s\n      why: %s" % (e["packet"], problem, e["verdict"]["why"]))
    return failures


SEED = ["-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d",
        "15090,15021,15020", "--ipv6=on"]


def cli_checks(topo, binary):
    """The command line's contract: bad input is exit 64 with one line naming it. Run in the
    pod namespace, like every other run of the binary here (these change nothing)."""
    problems = []
    pod = ["ip", "netns", "exec", topo.pod]
    for args, fragment in (([], "explain needs a packet"),
                           (["out tcp 1.2.3.4"], 'invalid packet "out tcp 1.2.3.4"'),
                           (["out tcp 1.2.3.4:80 uid=x"], 'uid "x"'),
                           (["-p", "0", "out tcp 1.2.3.4:80"], "-p/--envoy-port"),
                           (["--format", "yaml", "out tcp 1.2.3.4:80"], "yaml"),
                           (["--bogus", "out tcp 1.2.3.4:80"], "--bogus")):
        p = sh(pod + [binary, "explain"] + args, check=False, stdin="")
        lines = p.stderr.strip().splitlines()
        if p.returncode != 64 or len(lines) != 1 or fragment not in lines[0] or p.stdout:
            problems.append("explain %s: exit %d, stderr %r, stdout %r (expected 64 and one line with %r)" % (
                args, p.returncode, p.stderr, p.stdout[:200], fragment))
    p = sh(pod + [binary, "explain"] + SEED + ["out tcp 10.0.0.5:80 uid=1000", "-"], stdin="in tcp :8080\n# a comment\n\n")
    if p.stdout.count("verdict: captured") != 2:
        problems.append("explain with a packet and two from stdin: %r" % p.stdout)
    # Issue 18's batch: an inbound packet's path (no decisive rule, one jump) must not lend the
    # next packet its reason.
    p = sh(pod + [binary, "explain", "--format", "json", "-u", "1337", "-i", "10.66.128.0/24", "-b", "80",
                  "in tcp :8011", "out tcp 10.66.0.2:80 uid=7", "in udp :9", "out udp 10.66.0.3:53 uid=7"])
    for line in p.stdout.splitlines():
        e = json.loads(line)
        if why_on_path(e):
            problems.append("explain batch: %s: %s" % (e["packet"], why_on_path(e)))
    # The CNI plugin's view: a conflist, an annotation named as the source of its rule.
    with tempfile.NamedTemporaryFile("w", suffix=".conflist") as f:
        f.write('{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"meshinit",'
                '"istio-service-exclude-cidr":"10.96.0.1/32"}]}')
        f.flush()
        p = sh(pod + [binary, "explain", "--cni-config", f.name, "--annotation", "sidecar.istio.io/status={}",
                "--annotation", "traffic.sidecar.istio.io/excludeOutboundPorts=6379", "out tcp 10.1.1.1:6379 uid=1000",
                "out tcp 10.96.0.1:443 uid=1000"], check=False)
        if p.returncode != 0 or 'from annotation traffic.sidecar.istio.io/excludeOutboundPorts "6379"' not in p.stdout \
                or 'from config key "istio-service-exclude-cidr" "10.96.0.1/32"' not in p.stdout:
            problems.append("explain --cni-config: exit %d %s %s" % (p.returncode, p.stdout[-600:], p.stderr))
        p = sh(pod + [binary, "explain", "--cni-config", f.name, "--annotation",
                "traffic.sidecar.istio.io/excludeOutboundPorts=x", "out tcp 10.1.1.1:80"], check=False)
        if p.returncode != 64 or "annotation traffic.sidecar.istio.io/excludeOutboundPorts" not in p.stderr:
            problems.append("explain --cni-config, bad annotation: exit %d %s" % (p.returncode, p.stderr))
    return problems


def live_drift(topo, binary):
    """explain --live against rules someone changed: it must say where, and exit 3."""
    problems = []
    pod = ["ip", "netns", "exec", topo.pod]
    packet = "out tcp 10.9.9.9:80 uid=1000"
    for backend, extra, remove, foreign in (
            ("iptables", [], ["iptables", "-t", "nat", "-D", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT"],
             ["iptables", "-t", "nat", "-I", "OUTPUT", "1", "-p", "tcp", "-j", "DNAT", "--to-destination",
              "10.0.0.1"]),
            ("nft", ["--native-nftables"], None, ["nft", "insert", "rule", "inet", "istio-proxy-nat",
                                                  "istio-output", "tcp", "dport", "80", "accept"])):
        sh(pod + [binary, "clean"])
        sh(pod + [binary] + SEED + extra)
        p = sh(pod + [binary, "explain", "--live"] + SEED + extra + [packet], check=False)
        if p.returncode != 0 or "agree with the plan" not in p.stdout:
            problems.append("%s: explain --live of an untouched install: exit %d %s" % (backend, p.returncode,
                                                                                         p.stdout[-300:]))
        if remove:
            sh(pod + remove)
            if backend == "iptables":  # the same jump is in ip6tables: remove it there too
                sh(pod + ["ip6tables"] + remove[1:])
            p = sh(pod + [binary, "explain", "--live", "--format", "json"] + SEED + extra + [packet], check=False)
            line = json.loads(p.stdout) if p.stdout.strip() else {}
            if p.returncode != 3 or line.get("verdict", {}).get("kind") != "pass" or \
                    "ISTIO_REDIRECT" not in " ".join(line.get("divergence", [])):
                problems.append("%s: a deleted jump: exit %d %s" % (backend, p.returncode, p.stdout[-400:]))
        sh(pod + foreign)
        p = sh(pod + [binary, "explain", "--live"] + SEED + extra + [packet], check=False)
        if p.returncode != 3 or ("uncertain" not in p.stdout and backend == "iptables") or \
                "live differs from the plan" not in p.stdout:
            problems.append("%s: a foreign rule: exit %d %s" % (backend, p.returncode, p.stdout[-400:]))
        sh(pod + [binary, "clean"])
        sh(pod + ["iptables", "-t", "nat", "-F", "OUTPUT"], check=False)
        sh(pod + ["nft", "delete", "table", "inet", "istio-proxy-nat"], check=False)
    return problems


def prerequisites():
    missing = [t for t in ("ip", "nft", "iptables-nft-restore", "ip6tables-nft-restore") if not shutil.which(t)]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "agent":
        agent(sys.argv[2])
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--configs", type=int, default=60, help="configurations per backend")
    ap.add_argument("--seed", type=int, default=20261203)
    ap.add_argument("--backend", choices=["iptables", "nft", "both"], default="both")
    ap.add_argument("--only", type=int, help="run only configuration N (as a failure names it: seed*1000+N)")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    missing = prerequisites()
    if missing:
        print("differential: missing %s" % ", ".join(missing))
        return 1 if os.environ.get("CI") == "true" else 77  # 77: skipped (scripts/test counts it so)
    # Clients run as other uids: the script they fork from is already loaded, nothing to read.
    backends = ["iptables", "nft"] if args.backend == "both" else [args.backend]
    resolv = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
    resolv.write("nameserver %s\nnameserver %s\n" % (DNS4, DNS6))
    resolv.close()
    os.chmod(resolv.name, 0o644)
    stats = {"configs": 0, "sent": 0, "hit": 0, "rules": 0, "live": 0, "alone": 0, "kinds": {}, "wheres": {},
             "problems": 1}
    failed = 0
    start = time.time()
    print("differential: seed %d, %d configurations per backend, backends %s" % (
        args.seed, args.configs, " ".join(backends)))
    try:
        with Topology() as topo:
            for backend in backends:
                for n in ([args.only] if args.only is not None else range(args.configs)):
                    seed = args.seed * 1000 + n
                    r = random.Random(seed)
                    flags, env, facts = random_config(r)
                    flags = flags + ["--resolv-conf", resolv.name]
                    try:
                        failures = run_config(topo, binary, backend, flags, env, facts, r, n % 5 == 0, stats)
                    except Failure as e:
                        failures = [str(e)]
                    stats["configs"] += 1
                    if failures:
                        failed += 1
                        print("FAIL %s config seed %d: %s%s" % (backend, seed, " ".join(
                            "%s=%s" % kv for kv in env.items()) + (" " if env else ""), " ".join(
                            "'%s'" % a if a == "" or " " in a or "*" in a else a for a in flags)))
                        for f in failures[:5]:
                            print("    " + f)
            sh(["ip", "netns", "exec", topo.pod, binary, "clean"], check=False)
            checks = cli_checks(topo, binary) + live_drift(topo, binary)
            for problem in checks:
                print("FAIL " + problem)
            stats["problems"] = len(checks)
            print("differential: command line and --live drift checks: %d problems" % len(checks))
    finally:
        os.unlink(resolv.name)
    elapsed = time.time() - start
    kinds = ", ".join("%s %d" % kv for kv in sorted(stats["kinds"].items()))
    print("differential: sent by / delivered: %s; %d packets also explained alone (equal to the batch)" % (
        ", ".join("%s %d" % kv for kv in sorted(stats["wheres"].items())), stats["alone"]))
    print("differential: %d configurations, %d packets sent (%s), %d also explained --live; rules met by the "
          "candidates: %d of %d planned (%.0f%%; a first packet cannot meet established/connmark/mark-1337 "
          "rules); %.1fs" % (stats["configs"], stats["sent"], kinds, stats["live"], stats["hit"], stats["rules"],
                             100.0 * stats["hit"] / max(stats["rules"], 1), elapsed))
    print("differential: %d configurations passed, %d failed" % (stats["configs"] - failed, failed))
    if stats["configs"] == 0 or stats["sent"] == 0:
        print("differential: nothing ran: a failure")
        return 1
    return 1 if failed or stats["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
