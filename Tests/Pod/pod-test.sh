#!/usr/bin/env bash
# A real Pod, played with `podman kube play --network none` (nothing changes on the host):
#
#   pod A  init 1 "netsetup"   adds a veth pair inside the pod netns, 10.9.0.1/24 and a default
#                              route (with --network none the pod has only lo, and Istio's rules
#                              deliberately let app traffic over lo through uncaptured)
#          init 2 "istio-init" the shipped image (scripts/image) with exactly Istio's injected args
#                              and securityContext (NET_ADMIN + NET_RAW, drop ALL, uid 0)
#          "proxy" (uid 1337)  origdst-proxy on :15001, answers "proxy orig <SO_ORIGINAL_DST>"
#          "app"   (uid 1000)  connects to 10.9.0.2:80 (routed via the veth) and prints the answer
#   pod B  the same meshinit init container without NET_ADMIN: the pod must not start, and
#          meshinit must exit 77 with one stderr line naming CAP_NET_ADMIN.
#   node   the node-cleanup image (scripts/image --iptables) run as deploy/node-cleanup.yaml
#          runs it (host network, NET_ADMIN + SYS_ADMIN + SYS_PTRACE, /run/netns mounted
#          rslave; but a private PID namespace, so that only the test's namespaces are seen):
#          `clean --all-namespaces` removes iptables- and netlink-installed rules from two
#          namespace files and leaves a foreign ruleset byte-identical.
#
# Builds the shipped image with scripts/image and a test-only image on top of it (busybox,
# iproute2's ip with its libraries, origdst-proxy compiled with cc -static). Removes every pod,
# container and image it made (localhost/podman-pause:* included), also on failure. Prints
# ok/FAIL lines and "pod: N passed, N failed". With CI=true a missing prerequisite is a
# failure; otherwise it is a skip.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
ci=${CI:-false}
id=$$
pod_ok=mipt-ok-$id
pod_nocap=mipt-nocap-$id
# The shipped image, built by scripts/image under a tag of the test's own (an image the user
# built as localhost/meshinit:<version> is left alone), and the test-only image on top of it.
meshinit_image=localhost/meshinit:podtest-$id
node_image=localhost/meshinit:podtest-iptables-$id
test_image=localhost/meshinit-podtest:$id
seed_args='["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info"]'

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
finished=false
finish() {
    finished=true
    echo "pod: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
}
prerequisite() { # a missing prerequisite: failure under CI, skip otherwise
    if [ "$ci" = true ]; then
        fail "prerequisite: $1"
        finish
        exit 1
    fi
    echo "skip pod test: $1"
    exit 77 # skipped (scripts/test counts it so)
}

[ "$(id -u)" -eq 0 ] || prerequisite "needs root"
for p in podman runc busybox-static iproute2; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        echo "pod-test: installing podman runc busybox-static iproute2 (apt)"
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq && apt-get install -y -qq podman runc busybox-static iproute2 >/dev/null; } ||
            prerequisite "podman, runc, busybox-static and iproute2 cannot be installed"
        break
    fi
done
cc=$(command -v cc || command -v gcc || command -v clang || true)
[ -n "$cc" ] || prerequisite "no C compiler (cc, gcc or clang)"
for tool in nft iptables-restore unshare nsenter; do
    command -v "$tool" >/dev/null || prerequisite "$tool missing (scripts/install-deps installs it)"
done
export CONTAINERS_CONF=$root/scripts/containers.conf

work=$(mktemp -d /tmp/meshinit-podtest.XXXXXX)
# Images present before the test are kept; every image the test adds is removed.
images_before=$(podman images -a --format '{{.ID}}' --no-trunc | sort -u)
host_rules() { nft list ruleset 2>&1 | sed -E 's/counter packets [0-9]+ bytes [0-9]+/counter/'; }
host_rules_before=$(host_rules)
cleanup() {
    local rc=$?
    set +e
    if ! $finished; then # a command failed outside the checks (set -e)
        fail "aborted: a command exited $rc (above)"
        finish
        rc=1
    fi
    for pod in "$pod_ok" "$pod_nocap"; do
        if podman pod exists "$pod" 2>/dev/null; then
            podman pod stop -t 0 "$pod" >/dev/null 2>&1
            podman pod rm -f "$pod" >/dev/null 2>&1
        fi
    done
    # by name first: untags, or deletes when it was the last tag
    podman rmi "$test_image" >/dev/null 2>&1
    podman rmi "$meshinit_image" >/dev/null 2>&1
    podman rmi "$node_image" >/dev/null 2>&1
    for ns in "$work"/netns/*; do [ -e "$ns" ] && umount "$ns" 2>/dev/null; done
    mountpoint -q "$work/netns" 2>/dev/null && umount "$work/netns"
    local added
    added=$(comm -13 <(echo "$images_before") <(podman images -a --format '{{.ID}}' --no-trunc | sort -u))
    for image in $added; do podman rmi -f "$image" >/dev/null 2>&1; done
    rm -rf "$work"
    local left
    left=$(podman ps -a --format '{{.Names}}' | grep -E "^mipt-(ok|nocap)-$id" || true)
    [ -z "$left" ] || echo "pod-test: WARNING: containers left: $left" >&2
    return $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- images ---------------------------------------------------------------------------------
start=$SECONDS
if scripts/image --tag "$meshinit_image" >"$work/image.log" 2>&1; then
    ok "scripts/image builds the image offline ($((SECONDS - start))s): $(tail -1 "$work/image.log" | sed 's/^image: //')"
else
    fail "scripts/image:"
    sed 's/^/    /' "$work/image.log" | tail -30
    finish
    exit 1
fi

mkdir -p "$work/ctx/rootfs/bin" "$work/ctx/rootfs/sbin"
"$cc" -static -O2 -o "$work/ctx/rootfs/origdst-proxy" Tests/Pod/origdst-proxy.c
cp /bin/busybox "$work/ctx/rootfs/bin/busybox"
for applet in sh nc sleep echo cat; do ln -s busybox "$work/ctx/rootfs/bin/$applet"; done
cp -L /usr/sbin/ip "$work/ctx/rootfs/sbin/ip"
for lib in $(ldd /usr/sbin/ip | grep -oE '/[^ ]+' | sort -u); do cp -L --parents "$lib" "$work/ctx/rootfs/"; done
printf 'FROM %s\nCOPY rootfs/ /\nENV PATH=/sbin:/bin\n' "$meshinit_image" >"$work/ctx/Containerfile"
if podman build --pull=never --layers=false --quiet -t "$test_image" -f "$work/ctx/Containerfile" "$work/ctx" >"$work/build.log" 2>&1; then
    ok "test image (meshinit image + busybox, ip, origdst-proxy)"
else
    fail "test image: $(tail -3 "$work/build.log")"
    finish
    exit 1
fi

# ---- pod A: captured ------------------------------------------------------------------------
cat >"$work/pod-ok.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $pod_ok
  annotations:
    io.podman.annotations.init.container.type: always   # keep init containers for inspection
spec:
  restartPolicy: Never
  initContainers:
  - name: netsetup
    image: $test_image
    imagePullPolicy: Never
    command: ["/bin/sh", "-c"]
    args:
    - |
      set -e
      # /sbin/ip is iproute2's (a bare "ip" would be busybox's applet, which cannot add a veth)
      /sbin/ip link add veth0 type veth peer name veth1
      /sbin/ip addr add 10.9.0.1/24 dev veth0
      /sbin/ip link set veth1 up
      /sbin/ip link set veth0 up
      /sbin/ip route add default via 10.9.0.2 dev veth0
      /sbin/ip -br addr
      /sbin/ip route
    securityContext:
      capabilities: {add: [NET_ADMIN], drop: [ALL]}
  - name: istio-init
    image: $meshinit_image
    imagePullPolicy: Never
    args: $seed_args
    securityContext:
      allowPrivilegeEscalation: false
      privileged: false
      readOnlyRootFilesystem: false
      runAsUser: 0
      runAsGroup: 0
      runAsNonRoot: false
      capabilities: {add: [NET_ADMIN, NET_RAW], drop: [ALL]}
  containers:
  - name: proxy
    image: $test_image
    imagePullPolicy: Never
    command: ["/origdst-proxy", "15001"]
    securityContext: {runAsUser: 1337, runAsGroup: 1337}
  - name: app
    image: $test_image
    imagePullPolicy: Never
    command: ["/bin/sh", "-c"]
    args:
    - |
      i=0
      while [ \$i -lt 20 ]; do
        i=\$((i + 1))
        out=\$(nc -w 2 10.9.0.2 80 </dev/null 2>&1)
        echo "try \$i: [\$out]"
        case "\$out" in "proxy orig"*) echo "app got: \$out"; exit 0;; esac
        sleep 1
      done
      echo "app: no proxy answer"
      exit 1
    securityContext: {runAsUser: 1000, runAsGroup: 1000}
EOF

if podman kube play --network none "$work/pod-ok.yaml" >"$work/play-ok.log" 2>&1; then
    ok "pod with meshinit as init container plays (--network none)"
else
    fail "kube play $pod_ok: $(grep -v syslog "$work/play-ok.log" | tail -3)"
fi
init_rc=$(podman inspect "$pod_ok-istio-init" --format '{{.State.Status}} {{.State.ExitCode}}' 2>/dev/null || echo none)
if [ "$init_rc" = "exited 0" ]; then
    ok "meshinit init container exited 0"
    podman logs "$pod_ok-istio-init" 2>&1 | sed 's/^/    istio-init: /' | tail -8
else
    fail "meshinit init container: $init_rc (want exited 0):"
    podman logs "$pod_ok-istio-init" 2>&1 | sed 's/^/    /' | tail -20
fi

app_line=""
for _ in $(seq 1 50); do
    app_line=$(podman logs "$pod_ok-app" 2>/dev/null | grep '^app' || true)
    [ -n "$app_line" ] && break
    sleep 0.5
done
if [ "$app_line" = "app got: proxy orig 10.9.0.2:80" ]; then
    ok "app's connection to 10.9.0.2:80 captured: $app_line"
else
    fail "app's connection not captured as expected (got '${app_line:-nothing}'):"
    podman logs "$pod_ok-app" 2>&1 | sed 's/^/    app: /' | tail -5
    podman logs "$pod_ok-netsetup" 2>&1 | sed 's/^/    netsetup: /'
    podman logs "$pod_ok-proxy" 2>&1 | sed 's/^/    proxy: /' | tail -5
fi

# The rules are in the pod's network namespace (seen from the host through the infra
# container's pid), and the host's own ruleset did not change.
infra_pid=$(podman inspect "$(podman pod inspect "$pod_ok" --format '{{.InfraContainerID}}')" --format '{{.State.Pid}}' 2>/dev/null || echo 0)
pod_rules=$( { [ "$infra_pid" -gt 0 ] && nsenter --net="/proc/$infra_pid/ns/net" nft list ruleset; } 2>&1 || true)
if grep -qE 'redirect to :15001' <<<"$pod_rules"; then
    ok "pod netns holds the capture rules (redirect to :15001)"
else
    fail "pod netns rules: ${pod_rules:0:400}"
fi
if [ "$(host_rules)" = "$host_rules_before" ]; then
    ok "host ruleset unchanged"
else
    fail "host ruleset changed"
fi
podman pod stop -t 0 "$pod_ok" >/dev/null 2>&1 || true
podman pod rm -f "$pod_ok" >/dev/null 2>&1 || true

# ---- pod B: no NET_ADMIN --------------------------------------------------------------------
cat >"$work/pod-nocap.yaml" <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $pod_nocap
spec:
  restartPolicy: Never
  initContainers:
  - name: istio-init
    image: $meshinit_image
    imagePullPolicy: Never
    args: $seed_args
    securityContext:
      allowPrivilegeEscalation: false
      privileged: false
      runAsUser: 0
      runAsNonRoot: false
      capabilities: {add: [NET_RAW], drop: [ALL]}   # NET_ADMIN missing
  containers:
  - name: app
    image: $test_image
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo app started"]
EOF

if podman kube play --network none "$work/pod-nocap.yaml" >"$work/play-nocap.log" 2>&1; then
    fail "kube play $pod_nocap succeeded without NET_ADMIN"
else
    ok "pod without NET_ADMIN fails to start (kube play: $(grep -o 'init container.*' "$work/play-nocap.log" | head -1))"
fi
nocap_rc=$(podman inspect "$pod_nocap-istio-init" --format '{{.State.Status}} {{.State.ExitCode}}' 2>/dev/null || echo none)
if [ "$nocap_rc" = "exited 77" ]; then
    ok "meshinit without NET_ADMIN exited 77"
else
    fail "meshinit without NET_ADMIN: $nocap_rc (want exited 77)"
fi
stderr_lines=$(podman logs "$pod_nocap-istio-init" 2>&1 >/dev/null | grep -v '^$' || true)
if [ "$(wc -l <<<"$stderr_lines")" -eq 1 ] && grep -q CAP_NET_ADMIN <<<"$stderr_lines"; then
    ok "one stderr line naming CAP_NET_ADMIN: $stderr_lines"
else
    fail "stderr of meshinit without NET_ADMIN is not one line naming CAP_NET_ADMIN:"
    sed 's/^/    /' <<<"$stderr_lines"
fi
app_state=$(podman inspect "$pod_nocap-app" --format '{{.State.Status}}' 2>/dev/null || echo none)
if [ "$app_state" = created ]; then
    ok "the app of the NET_ADMIN-less pod never started"
else
    fail "the app of the NET_ADMIN-less pod is '$app_state' (want created)"
fi

# ---- node cleanup ---------------------------------------------------------------------------
# deploy/node-cleanup.yaml must be one-shot (a reboot must not re-run it and strip capture from
# running pods): a Job, restartPolicy Never, one attempt; its container's args are used below.
manifest=deploy/node-cleanup.yaml
if grep -q '^kind: Job$' $manifest && ! grep -q 'kind: DaemonSet' $manifest &&
    grep -q '^ *restartPolicy: Never$' $manifest && grep -q '^ *backoffLimit: 0\b' $manifest; then
    ok "$manifest is a one-shot Job (restartPolicy Never, backoffLimit 0)"
else
    fail "$manifest is not a one-shot Job"
fi
read -r -a node_args <<<"$(sed -n 's/^ *args: \[\(.*\)\]$/\1/p' $manifest | tr -d ',')"
if scripts/image --bin dist/meshinit --iptables --tag "$node_image" >"$work/node-image.log" 2>&1; then
    ok "node-cleanup image (--iptables): $(tail -1 "$work/node-image.log" | sed 's/^image: //')"
    # Three namespace files on a private mount: iptables-installed rules, netlink-installed
    # rules, and a foreign ruleset.
    mkdir -p "$work/netns"
    mount --bind "$work/netns" "$work/netns"
    mount --make-private "$work/netns"
    for ns in ipt nl foreign; do
        touch "$work/netns/$ns"
        unshare --net="$work/netns/$ns" true
    done
    seed=(-p 15001 -z 15006 -u 1337 -m REDIRECT -i '*' -x '' -b '*' -d '15090,15021,15020')
    nsenter --net="$work/netns/ipt" dist/meshinit "${seed[@]}" >/dev/null 2>&1
    nsenter --net="$work/netns/nl" dist/meshinit "${seed[@]}" --native-nftables >/dev/null 2>&1
    printf 'table ip foreign {\n chain out {\n  type nat hook output priority -100;\n  tcp dport 80 redirect to :8080\n }\n}\n' |
        nsenter --net="$work/netns/foreign" nft -f -
    foreign_before=$(nsenter --net="$work/netns/foreign" nft list ruleset)
    had_ipt=$(nsenter --net="$work/netns/ipt" nft list ruleset 2>/dev/null | grep -c ISTIO_ || true)
    had_nl=$(nsenter --net="$work/netns/nl" nft list ruleset 2>/dev/null | grep -c istio || true)
    if [ "$had_ipt" -gt 0 ] && [ "$had_nl" -gt 0 ]; then
        ok "node set up: rules installed by iptables ($had_ipt ISTIO_ lines) and by netlink ($had_nl)"
    else
        fail "node setup: $had_ipt ISTIO_ lines (iptables), $had_nl istio lines (netlink)"
    fi
    if podman run --rm --pid=private --network=host --cap-drop ALL --cap-add NET_ADMIN,SYS_ADMIN,SYS_PTRACE \
        --security-opt no-new-privileges -v "$work/netns:/run/netns:ro,rslave" \
        "$node_image" "${node_args[@]}" >"$work/node.log" 2>&1; then
        ok "${node_args[*]} (the manifest's args) in the node-cleanup image exited 0"
    else
        fail "clean --all-namespaces in the node-cleanup image failed:"
        sed 's/^/    /' "$work/node.log"
    fi
    sed 's/^/    node: /' "$work/node.log"
    left_ipt=$(nsenter --net="$work/netns/ipt" nft list ruleset 2>/dev/null | grep -c ISTIO_ || true)
    left_nl=$(nsenter --net="$work/netns/nl" nft list ruleset 2>/dev/null | grep -c istio || true)
    if [ "$left_ipt" -eq 0 ] && [ "$left_nl" -eq 0 ]; then
        ok "iptables- and netlink-installed rules removed"
    else
        fail "rules left: $left_ipt ISTIO_ lines (iptables-installed), $left_nl istio lines (netlink-installed)"
    fi
    if [ "$(nsenter --net="$work/netns/foreign" nft list ruleset)" = "$foreign_before" ]; then
        ok "foreign ruleset byte-identical"
    else
        fail "foreign ruleset changed"
    fi
else
    fail "node-cleanup image:"
    sed 's/^/    /' "$work/node-image.log" | tail -20
fi

finish
