#!/usr/bin/env python3
"""A tiny CNI runtime (Debian has no cnitool), doing for one .conflist what libcni does.

    ADD    each plugin in list order; its stdin is the plugin's object with the list's
           cniVersion and name copied in, prevResult = the previous plugin's ADD result (from
           the second plugin on), runtimeConfig = the capability args the plugin declares
           (`"capabilities": {"io.kubernetes.cri.pod-annotations": true}`) and the runtime has;
           the last result is the attachment's result and is cached (like /var/lib/cni/results).
    CHECK  each plugin in list order, prevResult = the cached final ADD result (libcni does not
           thread CHECK results; list cniVersion >= 0.4.0).
    DEL    each plugin in reverse order, prevResult = the cached final ADD result (when there is
           one); the cache entry is removed when every plugin succeeded.
    STATUS each plugin, no prevResult/runtimeConfig, no container env (list cniVersion >= 1.1.0,
           as libcni; `force=True` runs it anyway).
    GC     each plugin with "cni.dev/valid-attachments": [{"containerID", "ifname"}]
           (list cniVersion >= 1.1.0, or force).
    VERSION one plugin by type, stdin {"cniVersion": V}.

The plugin is found by its `type` in the CNI_PATH dirs (a file or a symlink, as libcni's
FindInPath). It inherits this process's environment minus any CNI_* variables, plus CNI_COMMAND,
CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS and CNI_PATH (as libcni's invoke.Args). A plugin
error is its stdout JSON {"code","msg","details"} with a non-zero exit; a non-zero exit without
such JSON is reported with code None and its stderr.

Library use (from the tests):

    rt = load("cni-run.py").Runtime(conflist_dict_or_path, ["/usr/lib/cni", plugin_dir],
                                     prefix=["ip", "netns", "exec", "node"], cache_dir=DIR)
    result = rt.add("cid", "/run/netns/pod", "eth0", "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;...",
                    {"io.kubernetes.cri.pod-annotations": {...}})      # raises CNIError
    rt.check(...); rt.delete(...); rt.status(); rt.gc([...]); rt.version("meshinit")
    rt.calls   # every plugin exec: command, plugin, env (CNI_* only), stdin, rc, stdout, stderr

`prefix` runs every plugin through a command (e.g. `ip netns exec NODE`), so the plugins run in
another network namespace than the caller's, as a runtime on that node would.

Command line (prints the result JSON, or the error JSON on stdout and which plugin failed on
stderr, exit 1):

    cni-run.py [--cni-path DIR:DIR] [--cache-dir DIR] [--trace] \\
        ADD|CHECK|DEL CONFLIST --netns PATH --container-id ID [--ifname eth0] \\
        [--args 'IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p'] \\
        [--capability-args '{"io.kubernetes.cri.pod-annotations": {...}}'] [--prev-result FILE]
    cni-run.py STATUS CONFLIST [--force]
    cni-run.py GC CONFLIST --valid-attachments '[{"containerID": "c1", "ifname": "eth0"}]' [--force]
    cni-run.py VERSION TYPE [--cni-version 1.1.0]

Run it inside the node's namespace (`ip netns exec NODE cni-run.py ...`) so the bridge and the
plugins' state live there.
"""
import argparse
import copy
import json
import os
import subprocess
import sys

DEFAULT_CNI_PATH = ["/opt/cni/bin", "/usr/lib/cni"]


class CNIError(Exception):
    """A plugin failed. code/msg/details from its error JSON (code None: no error JSON)."""

    def __init__(self, command, plugin, rc, code, msg, details, stdout, stderr, error=None):
        self.command = command
        self.plugin = plugin
        self.rc = rc
        self.code = code
        self.msg = msg
        self.details = details
        self.stdout = stdout
        self.stderr = stderr
        self.error = error  # the parsed error object, when there is one
        super().__init__("%s %s: exit %s, code %s: %s%s" % (
            command, plugin, rc, code, msg, (" (%s)" % details) if details else ""))


def version_tuple(v):
    try:
        return tuple(int(x) for x in str(v).split("."))
    except ValueError:
        return (0,)


class Runtime:
    def __init__(self, conflist, cni_path=None, prefix=None, cache_dir=None, env=None, timeout=60):
        if isinstance(conflist, str):
            with open(conflist) as f:
                conflist = json.load(f)
        self.conflist = conflist
        self.name = conflist["name"]
        self.cni_version = conflist.get("cniVersion", "0.4.0")
        self.cni_path = list(cni_path or DEFAULT_CNI_PATH)
        self.prefix = list(prefix or [])
        self.cache_dir = cache_dir
        self.base_env = {k: v for k, v in (env if env is not None else os.environ).items()
                         if not k.startswith("CNI_")}
        self.timeout = timeout
        self.calls = []
        self._memory_cache = {}

    # -- plugin lookup and exec ------------------------------------------------------------

    def find(self, plugin_type):
        for d in self.cni_path:
            p = os.path.join(d, plugin_type)
            if os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        raise CNIError("FIND", plugin_type, None, None, "failed to find plugin %r in path %s" %
                       (plugin_type, self.cni_path), None, "", "")

    def exec_plugin(self, plugin_type, command, stdin, env):
        """Runs one plugin; returns (rc, stdout, stderr) and records the call."""
        path = self.find(plugin_type)
        full_env = dict(self.base_env, CNI_COMMAND=command, CNI_PATH=":".join(self.cni_path))
        full_env.update({k: v for k, v in env.items() if v is not None})
        data = stdin if isinstance(stdin, (bytes, str)) else json.dumps(stdin)
        if isinstance(data, str):
            data = data.encode()
        record = {"command": command, "plugin": plugin_type, "path": path,
                  "env": {k: v for k, v in full_env.items() if k.startswith("CNI_")},
                  "stdin": data.decode(errors="replace")}
        try:
            p = subprocess.run(self.prefix + [path], input=data, capture_output=True, env=full_env,
                               timeout=self.timeout)
            rc, out, err = p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired as e:
            rc, out, err = None, (e.stdout or b"").decode(errors="replace"), \
                "timed out after %ss; %s" % (self.timeout, (e.stderr or b"").decode(errors="replace"))
        record.update(rc=rc, stdout=out, stderr=err)
        self.calls.append(record)
        return rc, out, err

    def run_plugin(self, plugin_type, command, stdin, env):
        """Runs one plugin and returns its parsed stdout (None if empty); raises CNIError."""
        rc, out, err = self.exec_plugin(plugin_type, command, stdin, env)
        parsed = None
        if out.strip():
            try:
                parsed = json.loads(out)
            except ValueError:
                parsed = None
        if rc != 0:
            if isinstance(parsed, dict) and "code" in parsed:
                raise CNIError(command, plugin_type, rc, parsed.get("code"), parsed.get("msg"),
                               parsed.get("details"), out, err, parsed)
            raise CNIError(command, plugin_type, rc, None, "no error JSON on stdout: %r" % out.strip()[:300],
                           err.strip()[-500:], out, err)
        if out.strip() and parsed is None:
            raise CNIError(command, plugin_type, rc, None, "stdout is not JSON: %r" % out.strip()[:300],
                           err.strip()[-500:], out, err)
        return parsed

    # -- configuration as libcni builds it -------------------------------------------------

    def plugin_conf(self, plugin, prev_result=None, capability_args=None, extra=None):
        conf = copy.deepcopy(plugin)
        conf["cniVersion"] = self.cni_version
        conf["name"] = self.name
        if prev_result is not None:
            conf["prevResult"] = prev_result
        runtime_config = {}
        for cap, enabled in (plugin.get("capabilities") or {}).items():
            if enabled and capability_args and cap in capability_args:
                runtime_config[cap] = capability_args[cap]
        if runtime_config:
            conf["runtimeConfig"] = runtime_config
        if extra:
            conf.update(extra)
        return conf

    def container_env(self, container_id, netns, ifname, args):
        return {"CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_ARGS": args or ""}

    # -- the result cache ------------------------------------------------------------------

    def _cache_path(self, container_id, ifname):
        return os.path.join(self.cache_dir, "results", "%s-%s-%s" % (self.name, container_id, ifname))

    def cached_result(self, container_id, ifname):
        if self.cache_dir is None:
            return self._memory_cache.get((container_id, ifname))
        try:
            with open(self._cache_path(container_id, ifname)) as f:
                return json.load(f).get("result")
        except (OSError, ValueError):
            return None

    def _store(self, container_id, ifname, netns, args, capability_args, result):
        if self.cache_dir is None:
            self._memory_cache[(container_id, ifname)] = result
            return
        os.makedirs(os.path.dirname(self._cache_path(container_id, ifname)), exist_ok=True)
        with open(self._cache_path(container_id, ifname), "w") as f:
            json.dump({"kind": "cniCacheV1", "containerId": container_id, "ifName": ifname,
                       "networkName": self.name, "netns": netns, "cniArgs": args,
                       "capabilityArgs": capability_args or {}, "result": result}, f)

    def _forget(self, container_id, ifname):
        if self.cache_dir is None:
            self._memory_cache.pop((container_id, ifname), None)
            return
        try:
            os.unlink(self._cache_path(container_id, ifname))
        except OSError:
            pass

    # -- operations ------------------------------------------------------------------------

    def add(self, container_id, netns, ifname="eth0", args="", capability_args=None):
        """ADD through the list; returns the final result. On a plugin error raises CNIError
        (like libcni, it does not clean up: the runtime calls delete() next)."""
        env = self.container_env(container_id, netns, ifname, args)
        prev = None
        for plugin in self.conflist["plugins"]:
            prev = self.run_plugin(plugin["type"], "ADD", self.plugin_conf(plugin, prev, capability_args), env)
        self._store(container_id, ifname, netns, args, capability_args, prev)
        return prev

    def check(self, container_id, netns, ifname="eth0", args="", capability_args=None, prev_result=None):
        if version_tuple(self.cni_version) < (0, 4, 0):
            raise CNIError("CHECK", self.name, None, 1, "configuration version %s does not support CHECK" %
                           self.cni_version, None, "", "")
        prev = prev_result if prev_result is not None else self.cached_result(container_id, ifname)
        if prev is None:
            raise CNIError("CHECK", self.name, None, None, "no cached result for %s/%s" % (container_id, ifname),
                           None, "", "")
        env = self.container_env(container_id, netns, ifname, args)
        for plugin in self.conflist["plugins"]:
            self.run_plugin(plugin["type"], "CHECK", self.plugin_conf(plugin, prev, capability_args), env)

    def delete(self, container_id, netns, ifname="eth0", args="", capability_args=None, prev_result=None):
        prev = prev_result if prev_result is not None else self.cached_result(container_id, ifname)
        env = self.container_env(container_id, netns, ifname, args)
        for plugin in reversed(self.conflist["plugins"]):
            self.run_plugin(plugin["type"], "DEL", self.plugin_conf(plugin, prev, capability_args), env)
        self._forget(container_id, ifname)

    def status(self, force=False):
        """STATUS for every plugin; returns the list of plugin types asked (empty when the list's
        cniVersion predates STATUS and force is False)."""
        if version_tuple(self.cni_version) < (1, 1, 0) and not force:
            return []
        asked = []
        for plugin in self.conflist["plugins"]:
            self.run_plugin(plugin["type"], "STATUS", self.plugin_conf(plugin), {})
            asked.append(plugin["type"])
        return asked

    def gc(self, valid_attachments, force=False):
        if version_tuple(self.cni_version) < (1, 1, 0) and not force:
            return []
        asked = []
        for plugin in self.conflist["plugins"]:
            conf = self.plugin_conf(plugin, extra={"cni.dev/valid-attachments": valid_attachments})
            self.run_plugin(plugin["type"], "GC", conf, {})
            asked.append(plugin["type"])
        return asked

    def version(self, plugin_type, cni_version="1.1.0"):
        return self.run_plugin(plugin_type, "VERSION", {"cniVersion": cni_version}, {})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["ADD", "CHECK", "DEL", "STATUS", "GC", "VERSION"])
    ap.add_argument("conflist", help="the .conflist (for VERSION: the plugin type)")
    ap.add_argument("--cni-path", default=os.environ.get("CNI_PATH", ":".join(DEFAULT_CNI_PATH)))
    ap.add_argument("--cache-dir")
    ap.add_argument("--netns", default="")
    ap.add_argument("--container-id", default="")
    ap.add_argument("--ifname", default="eth0")
    ap.add_argument("--args", default="")
    ap.add_argument("--capability-args", default="{}")
    ap.add_argument("--prev-result")
    ap.add_argument("--valid-attachments", default="[]")
    ap.add_argument("--cni-version", default="1.1.0")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--trace", action="store_true", help="print every plugin call (env, stdin, output) on stderr")
    a = ap.parse_args()
    path = [d for d in a.cni_path.split(":") if d]
    if a.command == "VERSION":
        rt = Runtime({"name": "version", "cniVersion": a.cni_version, "plugins": []}, path)
    else:
        rt = Runtime(a.conflist, path, cache_dir=a.cache_dir)
    prev = None
    if a.prev_result:
        with open(a.prev_result) as f:
            prev = json.load(f)
    caps = json.loads(a.capability_args)
    rc = 0
    try:
        if a.command == "ADD":
            out = rt.add(a.container_id, a.netns, a.ifname, a.args, caps)
        elif a.command == "CHECK":
            out = rt.check(a.container_id, a.netns, a.ifname, a.args, caps, prev)
        elif a.command == "DEL":
            out = rt.delete(a.container_id, a.netns, a.ifname, a.args, caps, prev)
        elif a.command == "STATUS":
            out = {"asked": rt.status(a.force)}
        elif a.command == "GC":
            out = {"asked": rt.gc(json.loads(a.valid_attachments), a.force)}
        else:
            out = rt.version(a.conflist, a.cni_version)
        if out is not None:
            print(json.dumps(out, indent=2))
    except CNIError as e:
        rc = 1
        print(json.dumps(e.error if e.error is not None else
                         {"cniVersion": rt.cni_version, "code": e.code, "msg": e.msg, "details": e.details}, indent=2))
        print("cni-run: %s" % e, file=sys.stderr)
    if a.trace:
        for c in rt.calls:
            print("--- %s %s (%s) rc=%s" % (c["command"], c["plugin"], c["path"], c["rc"]), file=sys.stderr)
            print("env: %s" % " ".join("%s=%s" % kv for kv in sorted(c["env"].items())), file=sys.stderr)
            print("stdin: %s" % c["stdin"], file=sys.stderr)
            print("stdout: %s" % c["stdout"].strip(), file=sys.stderr)
            if c["stderr"].strip():
                print("stderr: %s" % c["stderr"].strip(), file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
