import MeshCNI
import MeshConfig
import MeshModel
import MeshNetlink
import MeshRuntime
import MeshSystem
import Testing

#if canImport(Glibc)
    import Glibc
#endif

let podPath = "/run/netns/pod"

func environment(_ command: String, netns: String = podPath) -> [String: String] {
    [
        "CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
        "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1", "CNI_PATH": "/opt/cni/bin",
    ]
}

/// A chained configuration: our keys, and a pod with a sidecar.
func configuration(_ keys: String = "") -> [UInt8] {
    let annotations = #"{"sidecar.istio.io/status":"{}"}"#
    return Array(
        (#"{"cniVersion":"1.1.0","name":"net","type":"meshinit","# + (keys.isEmpty ? "" : keys + ",")
            + #""runtimeConfig":{"io.kubernetes.cri.pod-annotations":"# + annotations + "}}").utf8)
}

/// One call through the runtime's handler, as the CLI makes it.
func call(_ machine: FakeMachine, _ command: String, netns: String = podPath, keys: String = "") throws(CNIError)
    -> (output: String, call: CNIHandler.Call)
{
    let env = environment(command, netns: netns)
    var call = CNIHandler.Call(environment: env)
    let request = try CNIRequest.parse(environment: env, stdin: configuration(keys))
    let output = try CNIHandler(boundary: machine.boundary).perform(request, &call)
    return (output, call)
}

func machineWithPod(binaries: Set<String> = []) -> (FakeMachine, FakeNamespace) {
    let machine = FakeMachine(binaries: binaries)
    let pod = FakeNamespace(path: podPath, inode: 42)
    machine.namespaces[podPath] = pod
    return (machine, pod)
}

@Suite("CNI calls without a kernel")
struct CNIHandlerTests {
    @Test("ADD: the pod's namespace entered once, the plan installed in one batch under the lock")
    func add() throws {
        let (machine, pod) = machineWithPod()
        let (output, call) = try call(machine, "ADD")
        #expect(output == #"{"cniVersion":"1.1.0"}"# + "\n")
        #expect(call.verdict == "installed (nftables)")
        #expect(pod.entered == 1)
        #expect(machine.locks == 1)
        #expect(machine.netfilter.committed.count == 1)
    }

    @Test("ADD into the node's own namespace is refused before anything is entered or sent")
    func addNode() {
        let (machine, _) = machineWithPod()
        let node = FakeNamespace(path: "/proc/self/ns/net", inode: 1)
        machine.namespaces[node.path] = node
        #expect(throws: CNIError.self) { try call(machine, "ADD", netns: node.path) }
        do {
            _ = try call(machine, "ADD", netns: node.path)
        } catch {
            #expect(error.code == .invalidEnvironment)
        }
        #expect(node.entered == 0)
        #expect(machine.netfilter.committed.isEmpty)
    }

    @Test("a failed ADD is rolled back: everything of ours removed again, the rollback named in the error")
    func rollback() throws {
        let (machine, _) = machineWithPod(binaries: legacyBinaries)
        machine.netfilter.failures = [NetlinkError(.kernel, "add table inet istio-proxy-nat", errno: EPERM)]
        // Meanwhile legacy iptables holds rules of ours (another writer): the rollback takes them.
        machine.legacyLoaded = true
        machine.runner.dumps["iptables-legacy-save"] = legacyDumpWithOurs
        do {
            _ = try call(machine, "ADD", keys: #""backend":"nftables""#)
            Issue.record("ADD succeeded")
        } catch {
            #expect(error.code == .permission)
            #expect(error.details.contains("rollback: removed"), "\(error)")
            #expect(!error.message.contains("rules of ours remain"), "\(error)")
        }
        #expect(machine.runner.restores.count == 1, "the rollback did not remove the iptables rules")
    }

    @Test("a rollback that cannot remove everything says that rules of ours remain")
    func rollbackFails() throws {
        let (machine, _) = machineWithPod(binaries: legacyBinaries)
        machine.legacyLoaded = true
        machine.runner.dumps["iptables-legacy-save"] = legacyDumpWithOurs
        machine.runner.failRestores()
        do {
            _ = try call(machine, "ADD", keys: #""backend":"iptables""#)
            Issue.record("ADD succeeded")
        } catch {
            #expect(error.code == .installFailed, "\(error)")
            #expect(error.message.contains("(and rules of ours remain: see details)"), "\(error)")
            #expect(error.details.contains("rollback: could not remove"), "\(error)")
        }
        // The install's restore, then the rollback's.
        #expect(machine.runner.restores.count == 2)
    }

    @Test("DEL: what is ours removed from the pod's namespace, under the lock")
    func delete() throws {
        let (machine, pod) = machineWithPod(binaries: legacyBinaries)
        machine.legacyLoaded = true
        machine.runner.dumps["iptables-legacy-save"] = legacyDumpWithOurs
        let (output, call) = try call(machine, "DEL")
        #expect(output == "")
        #expect(call.verdict.hasPrefix("removed "), "\(call.verdict)")
        #expect(pod.entered == 1)
        #expect(machine.locks == 1)
        #expect(machine.runner.restores.count == 1)
    }

    @Test("DEL succeeds without touching anything when the namespace is gone or is the node's")
    func deleteNothing() throws {
        let (machine, _) = machineWithPod()
        #expect(try call(machine, "DEL", netns: "/run/netns/gone").call.verdict.hasPrefix("nothing to remove"))
        let node = FakeNamespace(path: "/proc/self/ns/net", inode: 1)
        machine.namespaces[node.path] = node
        #expect(try call(machine, "DEL", netns: node.path).call.verdict.hasPrefix("nothing done"))
        #expect(node.entered == 0)
        #expect(machine.locks == 0)
    }

    @Test("DEL that cannot remove our rules fails, naming what stayed")
    func deleteFails() throws {
        let (machine, _) = machineWithPod(binaries: legacyBinaries)
        machine.legacyLoaded = true
        machine.runner.dumps["iptables-legacy-save"] = legacyDumpWithOurs
        machine.runner.failRestores()
        do {
            _ = try call(machine, "DEL")
            Issue.record("DEL succeeded")
        } catch {
            #expect(error.message.contains("could not remove every rule of meshinit"), "\(error)")
            #expect(error.details.contains("could not remove"), "\(error)")
        }
    }
}

@Suite("A CNI call end to end: stdin, stdout, exit status")
struct CNIRunTests {
    func run(
        _ machine: FakeMachine, _ env: [String: String], stdin: @escaping () throws(FileEdit.ReadFailure) -> [UInt8]
    )
        -> (status: Int32, stdout: String)
    {
        var out = ""
        let status = CNIHandler(boundary: machine.boundary).run(
            environment: env, stdin: stdin, write: { out += $0 })
        return (status, out)
    }

    @Test("stdin that cannot be read: ADD fails with error 5 in JSON on stdout; VERSION and DEL do without it")
    func unreadableStdin() {
        let (machine, _) = machineWithPod()
        let broken = { () throws(FileEdit.ReadFailure) -> [UInt8] in throw .timedOut(seconds: 30) }
        let add = run(machine, environment("ADD"), stdin: broken)
        #expect(add.status == 1)
        #expect(add.stdout.contains(#""code":5"#), "\(add.stdout)")
        let version = run(machine, ["CNI_COMMAND": "VERSION"], stdin: broken)
        #expect(version.status == 0)
        #expect(version.stdout.contains("supportedVersions"))
        let del = run(machine, environment("DEL", netns: "/run/netns/gone"), stdin: broken)
        #expect(del.status == 0)
        #expect(del.stdout.isEmpty)
    }

    @Test("ADD through run: exit 0 and the result on stdout, the plan installed")
    func add() {
        let (machine, _) = machineWithPod()
        let config = configuration()
        let result = run(machine, environment("ADD"), stdin: { () throws(FileEdit.ReadFailure) -> [UInt8] in config })
        #expect(result.status == 0)
        #expect(result.stdout == #"{"cniVersion":"1.1.0"}"# + "\n")
        #expect(machine.netfilter.committed.count == 1)
    }
}
