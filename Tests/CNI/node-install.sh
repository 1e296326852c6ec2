#!/usr/bin/env bash
# `meshinit cni install|uninstall [--watch]` on a simulated node: temporary bin and conf
# directories (nothing of the machine's /opt/cni or /etc/cni is touched).
#   - install copies the binary and appends our entry to the primary .conflist, every other
#     byte kept; a second install changes nothing (same inode: no rewrite); settings are
#     validated before anything is written; a single-plugin .conf is refused, named;
#   - uninstall restores the file byte for byte and removes the binary;
#   - --watch puts the entry back when the primary CNI rewrites its file or a new primary
#     appears, and on SIGTERM exits 0 leaving it (or removing it with --uninstall-on-exit);
#     a failure that persists (single-plugin .conf, broken JSON) ends it with 1;
#   - edits are byte-exact (invalid UTF-8 kept), through exclusive temporary files; uninstall
#     removes our entry from every configuration and keeps the binary while one it cannot
#     read names meshinit.
# Usage: node-install.sh BIN     Ends with "node-install: N passed, M failed".
set -uo pipefail
bin=$(realpath "$1")
work=$(mktemp -d /tmp/meshinit-cni-node.XXXXXX)
watcher=
cleanup() {
    [ -n "$watcher" ] && kill "$watcher" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
passed=0
failed=0
check() {
    if eval "$2"; then passed=$((passed + 1)); echo "ok   $1"; else failed=$((failed + 1)); echo "FAIL $1"; fi
}
bindir=$work/bin
confdir=$work/net.d
mkdir -p "$bindir" "$confdir"
cat >"$work/primary.conflist" <<'JSON'
{
  "cniVersion": "1.0.0",
  "name": "podnet",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipam": { "type": "host-local", "subnet": "10.22.0.0/16", "routes": [ { "dst": "0.0.0.0/0" } ] }
    },
    { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
  ]
}
JSON
cp "$work/primary.conflist" "$confdir/10-podnet.conflist"
echo '{"cniVersion":"1.0.0","name":"later","plugins":[{"type":"ptp"}]}' >"$confdir/20-later.conflist"
settings='{"excludeNamespaces":["kube-system"],"istio-service-exclude-cidr":"10.96.0.1/32"}'
entry='{"type":"meshinit","excludeNamespaces":["kube-system"],"istio-service-exclude-cidr":"10.96.0.1/32","capabilities":{"io.kubernetes.cri.pod-annotations":true}}'
without_entry() { python3 -c 'import sys; t = open(sys.argv[1]).read(); print(t.replace(",\n    " + sys.argv[2], ""), end="")' "$1" "$entry"; }

out=$("$bin" cni install --bin-dir "$bindir" --conf-dir "$confdir" --config "$settings" 2>&1)
check "install exits 0" '[ $? = 0 ]'
check "the binary is copied, executable, identical" 'cmp -s "$bin" "$bindir/meshinit" && [ -x "$bindir/meshinit" ]'
check "the entry is appended to the primary's plugins" 'grep -qF "$entry" "$confdir/10-podnet.conflist" && python3 -c "import json,sys; p=json.load(open(sys.argv[1]))[\"plugins\"]; sys.exit(0 if [x[\"type\"] for x in p] == [\"bridge\",\"portmap\",\"meshinit\"] else 1)" "$confdir/10-podnet.conflist"'
check "every other byte of the primary is kept" '[ "$(without_entry "$confdir/10-podnet.conflist")" = "$(cat "$work/primary.conflist")" ]'
check "only the primary is changed" '! grep -q meshinit "$confdir/20-later.conflist"'
inode=$(stat -c %i "$confdir/10-podnet.conflist")
"$bin" cni install --bin-dir "$bindir" --conf-dir "$confdir" --config "$settings" >/dev/null 2>&1
check "a second install changes nothing (not even rewrites the file)" '[ $? = 0 ] && [ "$(stat -c %i "$confdir/10-podnet.conflist")" = "$inode" ] && [ "$(grep -c meshinit "$confdir/10-podnet.conflist")" = 1 ]'
before=$(cat "$confdir/10-podnet.conflist")
msg=$("$bin" cni install --bin-dir "$bindir" --conf-dir "$confdir" --config '{"istio-outbound-ports":"http"}' 2>&1)
rc=$?
check "bad settings are refused (64, one line naming the key) and nothing is written" '[ $rc = 64 ] && [ "$(echo "$msg" | wc -l)" = 1 ] && echo "$msg" | grep -q "config key \"istio-outbound-ports\"" && [ "$(cat "$confdir/10-podnet.conflist")" = "$before" ]'
"$bin" cni uninstall --bin-dir "$bindir" --conf-dir "$confdir" >/dev/null 2>&1
check "uninstall restores the primary byte for byte and removes the binary" '[ $? = 0 ] && cmp -s "$confdir/10-podnet.conflist" "$work/primary.conflist" && [ ! -e "$bindir/meshinit" ]'
mkdir -p "$work/single"
echo '{"cniVersion":"0.4.0","name":"x","type":"bridge"}' >"$work/single/10-x.conf"
msg=$("$bin" cni install --bin-dir "$bindir" --conf-dir "$work/single" 2>&1)
check "a single-plugin .conf primary is refused, named" '[ $? != 0 ] && echo "$msg" | grep -q "10-x.conf" && [ "$(cat "$work/single/10-x.conf")" = "{\"cniVersion\":\"0.4.0\",\"name\":\"x\",\"type\":\"bridge\"}" ]'

# --watch: the primary CNI rewrites its file (as after a node reboot) and a new primary appears.
wait_for() { for _ in $(seq 50); do eval "$1" && return 0; sleep 0.1; done; return 1; }
"$bin" cni install --bin-dir "$bindir" --conf-dir "$confdir" --config "$settings" --watch >"$work/watch.log" 2>&1 &
watcher=$!
check "--watch chains at start" 'wait_for "grep -qF \"\$entry\" \"$confdir/10-podnet.conflist\""'
cp "$work/primary.conflist" "$confdir/.10-podnet.tmp" && mv "$confdir/.10-podnet.tmp" "$confdir/10-podnet.conflist"
check "--watch re-inserts the entry after the primary CNI rewrote its file" 'wait_for "grep -qF \"\$entry\" \"$confdir/10-podnet.conflist\""'
cp "$work/primary.conflist" "$confdir/05-new.conflist"
check "--watch chains a new primary" 'wait_for "grep -qF \"\$entry\" \"$confdir/05-new.conflist\""'
kill -TERM "$watcher"
wait "$watcher"
rc=$?
watcher=
check "SIGTERM ends --watch with 0, the entry stays" '[ $rc = 0 ] && grep -qF "$entry" "$confdir/05-new.conflist"'
"$bin" cni install --bin-dir "$bindir" --conf-dir "$confdir" --config "$settings" --watch --uninstall-on-exit >"$work/watch2.log" 2>&1 &
watcher=$!
# SIGTERM once it is watching (its signalfd is set up before it says so): a fixed sleep lost
# that race on a loaded machine, and the default action of SIGTERM killed it (143).
wait_for "grep -q watching \"$work/watch2.log\"" || true
kill -TERM "$watcher"
wait "$watcher"
rc=$?
watcher=
check "--uninstall-on-exit removes exactly our entry on SIGTERM" '[ $rc = 0 ] && cmp -s "$confdir/05-new.conflist" "$work/primary.conflist" && [ ! -e "$bindir/meshinit" ]'

# Byte-exact edits: a primary with bytes that are not UTF-8 (a Latin-1 description) keeps them.
mkdir -p "$work/latin1"
printf '{"cniVersion":"1.0.0","name":"p","description":"caf\xe9","plugins":[{"type":"ptp","x":"\xff\xfe"}]}' >"$work/latin1/10-p.conflist"
cp "$work/latin1/10-p.conflist" "$work/latin1.orig"
"$bin" cni install --bin-dir "$bindir" --conf-dir "$work/latin1" --config "$settings" >/dev/null 2>&1
check "invalid UTF-8 in the primary is kept byte for byte (not turned into U+FFFD)" 'python3 -c "import sys; a=open(sys.argv[1],\"rb\").read(); b=open(sys.argv[2],\"rb\").read(); e=sys.argv[3].encode(); sys.exit(0 if a == b[:-2] + b\", \" + e + b\"]}\" and b.endswith(b\"}]}\") else 1)" "$work/latin1/10-p.conflist" "$work/latin1.orig" "$entry"'
"$bin" cni uninstall --bin-dir "$bindir" --conf-dir "$work/latin1" >/dev/null 2>&1
check "... and uninstall gives back the original bytes" 'cmp -s "$work/latin1/10-p.conflist" "$work/latin1.orig"'
check "no temporary file is left behind" '[ -z "$(find "$confdir" "$work/latin1" "$bindir" -name ".*.meshinit-*")" ]'

# uninstall: our entry goes from every configuration (not only the primary) before the binary.
mkdir -p "$work/multi"
cp "$work/primary.conflist" "$work/multi/10-podnet.conflist"
"$bin" cni install --bin-dir "$bindir" --conf-dir "$work/multi" --config "$settings" >/dev/null 2>&1
mv "$work/multi/10-podnet.conflist" "$work/multi/20-old.conflist"   # chained while it was the primary
cp "$work/primary.conflist" "$work/multi/10-podnet.conflist"
"$bin" cni install --bin-dir "$bindir" --conf-dir "$work/multi" --config "$settings" >/dev/null 2>&1
"$bin" cni uninstall --bin-dir "$bindir" --conf-dir "$work/multi" >/dev/null 2>&1
check "uninstall removes our entry from every configuration, then the binary" '[ $? = 0 ] && ! grep -q meshinit "$work/multi"/*.conflist && [ ! -e "$bindir/meshinit" ]'
"$bin" cni install --bin-dir "$bindir" --conf-dir "$work/multi" --config "$settings" >/dev/null 2>&1
echo '{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"meshinit"' >"$work/multi/30-broken.conflist"
msg=$("$bin" cni uninstall --bin-dir "$bindir" --conf-dir "$work/multi" 2>&1)
rc=$?
check "uninstall keeps the binary while a configuration it cannot read names meshinit (non-zero, named)" '[ $rc != 0 ] && [ -x "$bindir/meshinit" ] && echo "$msg" | grep -q "30-broken.conflist" && ! grep -q meshinit "$work/multi/10-podnet.conflist"'
rm -f "$work/multi/30-broken.conflist"

# --watch: a failure that persists (a single-plugin .conf primary, a primary that stays broken
# JSON) ends it non-zero, naming the file, so the node shows it (the DaemonSet restarts).
start=$SECONDS
msg=$(timeout 30 "$bin" cni install --bin-dir "$bindir" --conf-dir "$work/single" --watch --failure-timeout 2 2>&1)
rc=$?
check "--watch exits 1 when the primary stays a single-plugin .conf (named), within its --failure-timeout" '[ $rc = 1 ] && echo "$msg" | grep -q "10-x.conf" && echo "$msg" | grep -q "without capture" && [ $((SECONDS - start)) -le 10 ]'
mkdir -p "$work/breaks"
cp "$work/primary.conflist" "$work/breaks/10-podnet.conflist"
"$bin" cni install --bin-dir "$bindir" --conf-dir "$work/breaks" --config "$settings" --watch --failure-timeout 2 >"$work/watch3.log" 2>&1 &
watcher=$!
wait_for "grep -qF \"\$entry\" \"$work/breaks/10-podnet.conflist\""
echo '{"cniVersion": "1.0.0", "plugins": [' >"$work/breaks/10-podnet.conflist"
for _ in $(seq 100); do kill -0 "$watcher" 2>/dev/null || break; sleep 0.1; done
kill -0 "$watcher" 2>/dev/null && kill "$watcher"
wait "$watcher"
rc=$?
watcher=
check "--watch exits 1 once the primary stays broken JSON" '[ $rc = 1 ] && grep -q "10-podnet.conflist" "$work/watch3.log"'
sed 's/^/    watch: /' "$work/watch.log"
echo "node-install: $passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
