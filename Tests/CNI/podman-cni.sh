#!/usr/bin/env bash
# meshinit as a chained CNI plugin under a real runtime: podman 4.3 with its CNI backend.
#
#   node     a throwaway netns cni<pid>-pnode. Every podman command runs as
#            `nsenter --net=/run/netns/cni<pid>-pnode podman ...` (only the network namespace
#            changes; mounts are the host's), so podman execs the CNI plugins there: the bridge
#            cni<pid>pbr (10.98.0.1/24), its veths, ip_forward=1 and the plugins' processes all
#            live in that namespace, never in the host's. A server there answers
#            "node <addr>:<port>" on :80 and :81.
#   podman   a private store (--root/--runroot/--tmpdir in the temp dir: the host's images,
#            containers and networks are never seen or touched) and a private containers.conf:
#            network_backend "cni", cni_plugin_dirs [<tmp>/plugins, /usr/lib/cni],
#            network_config_dir <tmp>/net.d, runc and pinned rlimits (this host's quirks, as
#            scripts/containers.conf).
#   network  <tmp>/net.d/cni<pid>.conflist: bridge (host-local with dataDir in the temp dir,
#            isGateway, ipMasq false: no iptables rule anywhere) -> meshinit (requireAnnotation
#            false: podman passes no pod annotations). No portmap, firewall or tuning plugin.
#   plugins  <tmp>/plugins/{bridge,meshinit}: wrappers that record each call (CNI_* env, stdin,
#            stdout, exit status) under <tmp>/calls, then run the real plugin (/usr/lib/cni/bridge;
#            the meshinit binary, or --plugin, with MESHINIT_BIN set: DEL can come from conmon's
#            `podman container cleanup`, whose environment has only ~8 variables) with the same
#            stdin; printed below.
#   pod      "proxy" container (uid 1337, Tests/Pod/origdst-proxy.c: answers
#            "proxy orig <SO_ORIGINAL_DST>" on :15001) on the network; "app" containers
#            (uid 1000, --network container:proxy) connect to 10.98.0.1:80.
#            A second pod started with CNI_ARGS=K8S_POD_NAMESPACE=<excluded> in podman's
#            environment (podman appends it to the CNI_ARGS it passes) must be skipped.
#
# Host side: nothing in the host netns changes (its nft ruleset, ip_forward and links are
# compared). podman's libcni caches results in /var/lib/cni/results (not configurable in 4.3):
# the test removes the files of its network, and /var/lib/cni itself when it created it.
#
# Usage: Tests/CNI/podman-cni.sh [--bin PATH] [--plugin PATH] [--backend nftables|iptables|auto]
#                                [--without-meshinit] [--keep]
#   --bin      the meshinit CLI (default .build/release/meshinit), used for verify
#   --plugin   what the wrapper runs as the meshinit plugin (default --bin)
#   --without-meshinit  the chain minus meshinit: checks the harness (the container gets an
#              address from host-local, traffic flows uncaptured, DEL cleans up); the checks
#              that need the plugin print "skip [plugin]"
# Prints ok/FAIL/skip lines and "podman-cni: N passed, M failed"; exits 1 on failure. With
# CI=true a missing prerequisite is a failure; otherwise a skip.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
ci=${CI:-false}
id=$$
prefix=cni$id
node=$prefix-pnode
net=$prefix
bridge=${prefix}pbr
subnet=10.98.0.0/24
gateway=10.98.0.1
excluded_ns=$prefix-excluded
image=localhost/meshinit-cnitest:$id
proxy=$prefix-proxy
proxy2=$prefix-proxy2

bin=$root/.build/release/meshinit
plugin=""
backend=nftables
with_meshinit=true
keep=false
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) bin=$2; shift 2 ;;
    --plugin) plugin=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --without-meshinit) with_meshinit=false; shift ;;
    --keep) keep=true; shift ;;
    *) echo "usage: $0 [--bin PATH] [--plugin PATH] [--backend B] [--without-meshinit] [--keep]" >&2; exit 64 ;;
    esac
done
bin=$(realpath -m "$bin")
plugin=$(realpath -m "${plugin:-$bin}")

# The meshinit plugin object: Istio flag long names as keys, then the plugin's own keys; the
# verify flags are derived from the same list.
conf_flags=(envoy-port 15001 inbound-capture-port 15006 proxy-uid 1337 proxy-gid 1337
    istio-inbound-interception-mode REDIRECT istio-service-cidr '*' istio-service-exclude-cidr ''
    istio-inbound-ports '*' istio-local-exclude-ports 15090,15021,15020)
verify_flags=()
for ((i = 0; i < ${#conf_flags[@]}; i += 2)); do verify_flags+=("--${conf_flags[i]}" "${conf_flags[i + 1]}"); done
[ "$backend" = nftables ] && verify_flags+=(--native-nftables)

passed=0
failed=0
ok() {
    passed=$((passed + 1))
    echo "ok   $1"
}
fail() {
    failed=$((failed + 1))
    echo "FAIL $1"
}
skip_plugin() { echo "skip [plugin] $1 (needs the meshinit plugin; --without-meshinit)"; }
note() { sed 's/^/    /'; }
finished=false
finish() {
    finished=true
    echo "podman-cni: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}
prerequisite() { # a missing prerequisite: failure under CI, skip otherwise
    if [ "$ci" = true ]; then
        fail "prerequisite: $1"
        finish
        exit 1
    fi
    echo "skip podman-cni: $1 (CI would fail)"
    finished=true
    echo "podman-cni: 0 passed, 0 failed"
    exit 77 # skipped (scripts/test counts it so)
}

[ "$(id -u)" -eq 0 ] || prerequisite "needs root"
for p in podman runc busybox-static containernetworking-plugins iproute2 util-linux; do
    if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]; then
        echo "podman-cni: installing podman runc busybox-static containernetworking-plugins iproute2 (apt)"
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq &&
            apt-get install -y -qq podman runc busybox-static containernetworking-plugins iproute2 >/dev/null; } ||
            prerequisite "podman, runc, busybox-static, containernetworking-plugins cannot be installed"
        break
    fi
done
for tool in podman runc ip nsenter nft python3 busybox; do
    command -v "$tool" >/dev/null || prerequisite "$tool missing"
done
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] ||
    prerequisite "/usr/lib/cni/bridge, host-local missing (containernetworking-plugins)"
cc=$(command -v cc || command -v gcc || command -v clang || true)
[ -n "$cc" ] || prerequisite "no C compiler (cc, gcc or clang) for Tests/Pod/origdst-proxy.c"
if $with_meshinit; then
    [ -x "$bin" ] || prerequisite "meshinit binary $bin missing (build it, or give --bin)"
    [ -x "$plugin" ] || prerequisite "plugin $plugin missing"
fi
echo "podman-cni: $(podman --version); chain: bridge$($with_meshinit && echo " -> meshinit ($plugin, backend $backend)" || echo " only (harness mode)")"

work=$(mktemp -d /tmp/meshinit-podcni.XXXXXX)
chmod 755 "$work"
mkdir -p "$work"/{plugins,net.d,ipam,calls,ctx/rootfs/bin,tmp}
export CONTAINERS_CONF=$work/containers.conf
export MESHINIT_BIN=$bin # for --plugin stand-ins: podman's environment reaches the plugins
unset CNI_ARGS
P=(nsenter "--net=/run/netns/$node" timeout 120 podman --root "$work/storage" --runroot "$work/run" --tmpdir "$work/tmp")
podman_() { "${P[@]}" "$@"; }

host_state() {
    nft list ruleset 2>&1 | sed -E 's/counter packets [0-9]+ bytes [0-9]+/counter/'
    echo "ip_forward=$(cat /proc/sys/net/ipv4/ip_forward)"
    ip -o link | grep -F "$prefix" || true
}
host_before=$(host_state)
cni_cache_existed=false
[ -e /var/lib/cni ] && cni_cache_existed=true
node_server=""
sandboxes=()
cleanup() {
    local rc=$?
    set +e
    if ! $finished; then
        fail "aborted: a command exited $rc (above)"
        finish
        rc=1
    fi
    if [ -d "$work/storage" ]; then
        podman_ rm -af -t 0 >/dev/null 2>&1
        podman_ rmi -af >/dev/null 2>&1
    fi
    for sb in "${sandboxes[@]}"; do # podman removes them on rm; not after a crash
        [ -e "$sb" ] && { umount "$sb" 2>/dev/null; rm -f "$sb"; }
    done
    [ -n "$node_server" ] && kill "$node_server" 2>/dev/null && wait "$node_server" 2>/dev/null
    ip netns del "$node" 2>/dev/null
    grep -F " $work/" /proc/self/mounts | cut -d' ' -f2 | sort -r | while read -r m; do umount "$m"; done
    rm -f /var/lib/cni/results/"$net"-* 2>/dev/null
    if ! $cni_cache_existed; then
        rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null
    fi
    if $keep; then echo "podman-cni: temp dir kept: $work"; else rm -rf "$work"; fi
    return $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- node namespace, plugin wrappers, network, podman config ---------------------------------
ip netns add "$node"
ip netns exec "$node" ip link set lo up
ip netns exec "$node" python3 "$root/Tests/CNI/cni-test.py" serve node 80 81 >"$work/node-server.log" 2>&1 &
node_server=$!

wrap() { # wrap NAME REAL: a plugin NAME that records the call and runs REAL
    cat >"$work/plugins/$1" <<EOF
#!/bin/sh
# Records one CNI call ($1), then runs the real plugin with the same stdin and env.
call=$work/calls/\$(date +%s%N).\$\$.\$CNI_COMMAND.$1
cat >"\$call.stdin"
env | grep '^CNI_' | sort >"\$call.env"
env | sort >"\$call.fullenv"
tr '\\0' ' ' </proc/\$PPID/cmdline >"\$call.parent"
tr '\\0' '\\n' </proc/\$PPID/environ | sort >"\$call.parentenv"
MESHINIT_BIN=$bin "$2" <"\$call.stdin" >"\$call.stdout" 2>"\$call.stderr"
rc=\$?
echo \$rc >"\$call.rc"
cat "\$call.stdout"
cat "\$call.stderr" >&2
exit \$rc
EOF
    chmod 755 "$work/plugins/$1"
}
wrap bridge /usr/lib/cni/bridge
if $with_meshinit; then
    # a binary that does not speak CNI installs Istio's defaults wherever it runs: ask it
    # VERSION in a throwaway namespace first
    probe_ns=$prefix-probe
    ip netns add "$probe_ns"
    probe=$(echo '{"cniVersion":"1.1.0"}' | ip netns exec "$probe_ns" env CNI_COMMAND=VERSION "$plugin" 2>&1 || true)
    probe_rules=$(ip netns exec "$probe_ns" nft list ruleset 2>/dev/null | grep -ciE 'istio' || true)
    ip netns del "$probe_ns"
    if [ "$probe_rules" -gt 0 ] || ! grep -q supportedVersions <<<"$probe"; then
        fail "[plugin] meshinit does not act as a CNI plugin (VERSION -> $(tr "\n\t" "  " <<<"${probe:0:200}"); $probe_rules rule lines installed); try --without-meshinit"
        finish
        exit 1
    fi
    ok "[plugin] meshinit VERSION: $probe"
    wrap meshinit "$plugin"
fi

python3 - "$work" "$net" "$bridge" "$subnet" "$gateway" "$with_meshinit" "$backend" "$excluded_ns" "${conf_flags[@]}" <<'EOF'
import json, sys
work, net, bridge, subnet, gateway, with_meshinit, backend, excluded = sys.argv[1:9]
flags = sys.argv[9:]
plugins = [{"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False, "hairpinMode": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet, "gateway": gateway}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": work + "/ipam"}}]
if with_meshinit == "true":
    m = {"type": "meshinit", "capabilities": {"io.kubernetes.cri.pod-annotations": True}}
    m.update(dict(zip(flags[0::2], flags[1::2])))
    m.update({"excludeNamespaces": ["kube-system", excluded], "backend": backend, "requireAnnotation": False,
              "logFile": work + "/meshinit-cni.log"})
    plugins.append(m)
with open("%s/net.d/%s.conflist" % (work, net), "w") as f:
    json.dump({"cniVersion": "1.0.0", "name": net, "plugins": plugins}, f, indent=2)
EOF
cat >"$CONTAINERS_CONF" <<EOF
# this host's quirks (see scripts/containers.conf), and the CNI backend with private dirs
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
[network]
network_backend = "cni"
cni_plugin_dirs = ["$work/plugins", "/usr/lib/cni"]
network_config_dir = "$work/net.d"
EOF

backend_seen=$(podman_ info --format '{{.Host.NetworkBackend}}' 2>&1 || true)
networks=$(podman_ network ls --format '{{.Name}}' 2>&1 || true)
if [ "$backend_seen" = cni ] && grep -qx "$net" <<<"$networks"; then
    ok "podman uses the CNI backend and sees network $net ($work/net.d/$net.conflist)"
else
    fail "podman backend '$backend_seen', networks: $(tr '\n' ' ' <<<"$networks")"
fi

# ---- image: busybox + origdst-proxy, built offline into the private store ---------------------
"$cc" -static -O2 -o "$work/ctx/rootfs/origdst-proxy" Tests/Pod/origdst-proxy.c
cp /bin/busybox "$work/ctx/rootfs/bin/busybox"
for applet in sh nc sleep cat ip; do ln -s busybox "$work/ctx/rootfs/bin/$applet"; done
printf 'FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\n' >"$work/ctx/Containerfile"
if podman_ build --pull=never --layers=false --quiet -t "$image" -f "$work/ctx/Containerfile" "$work/ctx" >"$work/build.log" 2>&1; then
    ok "test image (busybox, origdst-proxy) built offline in the private store"
else
    fail "image build: $(tail -3 "$work/build.log")"
    finish
    exit 1
fi

# ---- what podman passes -------------------------------------------------------------------
calls() { # calls COMMAND PLUGIN: the recorded calls, oldest first
    ls "$work/calls" | grep -E "\.$1\.$2\.rc$" | sort | sed "s|^|$work/calls/|; s|\.rc$||" || true
}
show_call() { # show_call PREFIX: env, stdin (prevResult abridged), exit status
    python3 - "$1" <<'EOF'
import json, sys
p = sys.argv[1]
env = open(p + ".env").read().split("\n")
print("env: " + " ".join(l for l in env if l))
raw = open(p + ".stdin").read()
try:
    conf = json.loads(raw)
    if "prevResult" in conf:
        pr = conf["prevResult"]
        conf["prevResult"] = "<%s: %d interfaces, ips %s>" % (pr.get("cniVersion"), len(pr.get("interfaces", [])),
                                                             [i.get("address") for i in pr.get("ips", [])])
    if conf.get("ipam"):
        conf["ipam"] = "<%s>" % conf["ipam"].get("type")
    print("stdin: " + json.dumps(conf))
except ValueError:
    print("stdin (not JSON): " + raw[:300])
out = open(p + ".stdout").read().strip()
try:
    out = json.dumps(json.loads(out)) if out else ""
except ValueError:
    pass
print("exit %s; stdout %s" % (open(p + ".rc").read().strip(), out[:600]))
EOF
}
env_of() { grep "^$2=" "$1.env" | cut -d= -f2- || true; }

# ---- pod 1: captured ----------------------------------------------------------------------
if podman_ run -d --name "$proxy" --network "$net" --user 1337:1337 "$image" /origdst-proxy 15001 >"$work/run1.log" 2>&1; then
    ok "proxy container started on network $net (uid 1337)"
else
    fail "podman run $proxy: $(tail -3 "$work/run1.log")"
    finish
    exit 1
fi
sb=$(podman_ inspect "$proxy" --format '{{.NetworkSettings.SandboxKey}}')
sandboxes+=("$sb")
for _ in $(seq 1 20); do
    grep -q listening <<<"$(podman_ logs "$proxy" 2>&1 || true)" && break
    sleep 0.2
done

add_bridge=$(calls ADD bridge | tail -1)
echo "    what podman 4.3 passed (CNI ADD, bridge):"
show_call "$add_bridge" | note | note
for v in $(calls VERSION bridge | sed -n 1p); do
    echo "    podman's VERSION call (made before ADD/DEL):"
    show_call "$v" | note | note
done
cni_args=$(env_of "$add_bridge" CNI_ARGS)
if [ "$cni_args" = "IgnoreUnknown=1;K8S_POD_NAME=$proxy" ]; then
    ok "CNI_ARGS from podman: $cni_args"
else
    fail "CNI_ARGS from podman: '$cni_args' (want IgnoreUnknown=1;K8S_POD_NAME=$proxy)"
fi
pod_addr=$(nsenter --net="$sb" ip -4 -o addr show dev eth0 2>&1 | grep -oE '10\.98\.0\.[0-9]+/24' || true)
pod_routes=$(nsenter --net="$sb" ip route 2>&1 || true)
if [ -n "$pod_addr" ] && grep -q "default via $gateway" <<<"$pod_routes" &&
    [ -e "$work/ipam/$net/${pod_addr%/24}" ]; then
    ok "container netns $sb: eth0 $pod_addr from host-local (lease in the temp dir), default via $gateway"
else
    fail "container addressing: eth0 '${pod_addr}', routes: $(tr '\n' ';' <<<"$pod_routes"), leases: $(ls "$work/ipam/$net" | tr '\n' ' ')"
fi

if $with_meshinit; then
    add_mesh=$(calls ADD meshinit | tail -1)
    if [ -n "$add_mesh" ]; then
        echo "    what podman 4.3 passed (CNI ADD, meshinit):"
        show_call "$add_mesh" | note | note
    fi
    if [ -n "$add_mesh" ] && [ "$(cat "$add_mesh.rc")" = 0 ] &&
        python3 - "$add_mesh" "$add_bridge" <<'EOF'; then
import json, sys
mesh, bridge = sys.argv[1:3]
out = json.load(open(mesh + ".stdout"))
prev = json.load(open(bridge + ".stdout"))
norm = lambda r: {k: v for k, v in r.items() if k != "cniVersion" and not (k == "dns" and v == {})}
sys.exit(0 if norm(out) == norm(prev) and out.get("cniVersion") == "1.0.0" else 1)
EOF
        ok "[plugin] meshinit ADD exited 0 and printed prevResult back"
    else
        fail "[plugin] meshinit ADD: $( [ -n "$add_mesh" ] && show_call "$add_mesh" | tr '\n' ' ' || echo 'never called')"
    fi
    # "backend": "auto" lets the plugin choose: verify the netlink plan if our nft tables are there
    if [ "$backend" = auto ] && grep -q istio-proxy <<<"$(nsenter --net="$sb" nft list tables 2>&1 || true)"; then
        verify_flags+=(--native-nftables)
    fi
    if v=$(nsenter --net="$sb" "$bin" verify "${verify_flags[@]}" 2>&1); then
        ok "[plugin] container netns holds the plan (meshinit verify ${verify_flags[*]})"
    else
        fail "[plugin] meshinit verify in the container netns:"
        note <<<"$v" | tail -15
    fi
else
    skip_plugin "meshinit ADD exited 0 and printed prevResult back"
    skip_plugin "container netns holds the plan (meshinit verify)"
fi

app() { # app UID TARGET: a fresh container in the proxy's netns connects once
    podman_ run --rm --network "container:$1" --user "$2:$2" "$image" /bin/busybox nc -w 3 "$3" 80 </dev/null 2>&1 | sed -n 1,3p || true
}
want_app="proxy orig $gateway:80"
$with_meshinit || want_app="node $gateway:80"
got=""
for _ in 1 2 3; do
    got=$(app "$proxy" 1000 "$gateway")
    [ "$got" = "$want_app" ] && break
    sleep 0.5
done
if [ "$got" = "$want_app" ]; then
    ok "$($with_meshinit && echo "[plugin] app (uid 1000) -> $gateway:80 captured: $got" || echo "app (uid 1000) -> $gateway:80 not captured (no meshinit): $got")"
else
    fail "app (uid 1000) -> $gateway:80: got '$got', want '$want_app'"
    podman_ logs "$proxy" 2>&1 | tail -3 | note
fi
got=$(podman_ exec --user 1337:1337 "$proxy" /bin/busybox nc -w 3 "$gateway" 80 </dev/null 2>&1 | sed -n 1,3p || true)
if [ "$got" = "node $gateway:80" ]; then
    ok "proxy uid 1337 -> $gateway:80 goes straight out: $got"
else
    fail "proxy uid 1337 -> $gateway:80: got '$got', want 'node $gateway:80'"
fi

# ---- pod 2: CNI_ARGS from podman's environment; an excluded namespace is skipped --------------
if CNI_ARGS="K8S_POD_NAMESPACE=$excluded_ns" podman_ run -d --name "$proxy2" --network "$net" --user 1337:1337 \
    "$image" /origdst-proxy 15001 >"$work/run2.log" 2>&1; then
    sb2=$(podman_ inspect "$proxy2" --format '{{.NetworkSettings.SandboxKey}}')
    sandboxes+=("$sb2")
    add2=$(calls ADD bridge | tail -1)
    args2=$(env_of "$add2" CNI_ARGS)
    if [ "$args2" = "IgnoreUnknown=1;K8S_POD_NAME=$proxy2;K8S_POD_NAMESPACE=$excluded_ns" ]; then
        ok "podman appends CNI_ARGS from its environment: $args2"
    else
        fail "CNI_ARGS with CNI_ARGS=K8S_POD_NAMESPACE=$excluded_ns in podman's env: '$args2'"
    fi
    if $with_meshinit; then
        left=$(nsenter --net="$sb2" nft list ruleset 2>&1 | grep -icE 'istio' || true)
        got=$(app "$proxy2" 1000 "$gateway")
        if [ "$(cat "$(calls ADD meshinit | tail -1).rc")" = 0 ] && [ "$left" -eq 0 ] && [ "$got" = "node $gateway:80" ]; then
            ok "[plugin] pod in excludeNamespaces ($excluded_ns) skipped: ADD 0, no rules, app not captured ($got)"
        else
            fail "[plugin] excluded namespace: $left istio rule lines, app got '$got'"
        fi
    else
        skip_plugin "pod in excludeNamespaces skipped"
    fi
else
    fail "podman run $proxy2: $(tail -3 "$work/run2.log")"
fi

# ---- teardown through podman: DEL ----------------------------------------------------------
# pod 2 is stopped first, then both are removed (pod 1 still running). Which process does a
# DEL varies from run to run: the podman command itself (stop, rm) or `podman container
# cleanup`, which conmon runs when the container exits, with a ~10-variable environment.
# Either way the DEL's CNI_ARGS are the ADD's (libcni's cache), not the caller's environment.
id2=$(podman_ inspect "$proxy2" --format '{{.Id}}' 2>/dev/null || true)
podman_ stop -t 0 "$proxy2" >"$work/stop.log" 2>&1 || true
for _ in $(seq 1 50); do
    grep -lqs "CNI_CONTAINERID=$id2" "$work"/calls/*.DEL.bridge.env 2>/dev/null && break
    sleep 0.2
done
if podman_ rm -f -t 0 "$proxy" "$proxy2" >"$work/rm.log" 2>&1; then
    ok "podman stop of pod 2, then podman rm of both containers"
else
    fail "podman rm: $(tail -3 "$work/rm.log")"
fi
for c in $(calls DEL bridge) $(calls DEL meshinit); do
    vars=$(grep -v '^CNI_' "$c.fullenv" | cut -d= -f1)
    n="$(wc -w <<<"$vars") vars"
    [ "${n% vars}" -le 12 ] && n="$n ($(tr '\n' ' ' <<<"$vars" | sed 's/ $//'); $(grep '^PATH=' "$c.fullenv"))"
    printf '    DEL %s of %s, called by `podman %s` (%s); plugin env besides CNI_*: %s; CNI_ARGS in the caller'"'"'s env: %s\n' \
        "${c##*.}" "$(env_of "$c" CNI_ARGS | sed 's/.*K8S_POD_NAME=//; s/;.*//')" \
        "$(grep -m1 -oE '(container cleanup|rm|stop)' "$c.parent" | sed -n 1p)" "$(cut -d' ' -f1 "$c.parent")" "$n" \
        "$(grep '^CNI_ARGS=' "$c.parentenv" | cut -d= -f2- || echo none)"
done
del_bridge=$(calls DEL bridge | sed -n 1p)
if [ -n "$del_bridge" ]; then
    echo "    what podman 4.3 passed (CNI DEL, bridge):"
    show_call "$del_bridge" | note | note
fi
if $with_meshinit; then
    dels=$(calls DEL meshinit)
    bad=$(for c in $dels; do [ "$(cat "$c.rc")" = 0 ] || echo "$c"; done)
    if [ "$(wc -w <<<"$dels")" -eq 2 ] && [ -z "$bad" ]; then
        first=$(head -1 <<<"$dels")
        ok "[plugin] meshinit DEL called for both containers (CNI_NETNS=$(env_of "$first" CNI_NETNS), still there), exit 0"
    else
        fail "[plugin] meshinit DEL: $(wc -w <<<"$dels") calls, failed: $(for c in $bad; do show_call "$c"; done | tr '\n' ' ')"
    fi
else
    skip_plugin "meshinit DEL called for both containers, exit 0"
fi
leases=$(ls "$work/ipam/$net" 2>/dev/null | grep -E '^10\.' || true)
links=$(ip netns exec "$node" ip -o link 2>/dev/null | grep -c veth || true)
left_sb=$(for s in "${sandboxes[@]}"; do if [ -e "$s" ]; then echo "$s"; fi; done)
cache=$(ls /var/lib/cni/results 2>/dev/null | grep -F "$net-" || true)
if [ -z "$leases" ] && [ "$links" -eq 0 ] && [ -z "$left_sb" ] && [ -z "$cache" ]; then
    ok "after rm: leases released, veths gone, podman's netns files and /var/lib/cni/results entries removed"
else
    fail "after rm: leases '$leases', $links veths in the node, netns left '$left_sb', cache '$cache'"
fi
if grep -qv '^ready$' "$work/node-server.log"; then
    note <"$work/node-server.log" | tail -3
fi

finished=true # the host check runs after the cleanup
trap - EXIT
cleanup
if [ "$(host_state)" = "$host_before" ]; then
    ok "host namespace unchanged (nft ruleset, ip_forward, no $prefix links); /var/lib/cni as before"
else
    fail "host namespace changed:"
    diff <(echo "$host_before") <(host_state) | note
fi
if ! $cni_cache_existed && [ -e /var/lib/cni ]; then
    fail "/var/lib/cni left behind"
fi
finished=false
finish
