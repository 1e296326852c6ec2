import CRtnetlink
import MeshConfig
import MeshIptables
import MeshModel
import MeshNetlink
import MeshRuntime
import MeshSystem
import MeshTestKit

#if canImport(Glibc)
    import Glibc
#endif

// Fakes of the system boundary: the runtime's every effect (children, netlink sockets, the
// namespace lock, namespace files) answered from memory, so install, cleanup and the CNI
// calls run here without root and without touching the machine.

extension FakeRunner {
    /// Every `*-restore` fails as iptables-restore does on a refused line.
    func failRestores() {
        restoreResult = { _, _, _ in CommandResult(status: 1, stderr: "iptables-restore: line 2 failed") }
    }
}

/// The legacy tools of both families.
let legacyBinaries: Set<String> = [
    "iptables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy-save", "ip6tables-legacy-restore",
]

/// iptables-nft's tools of both families.
let nftBinaries: Set<String> = [
    "iptables-nft-save", "iptables-nft-restore", "ip6tables-nft-save", "ip6tables-nft-restore",
]

/// nf_tables holding nothing: GETGEN answered with generation 1, every dump empty; batches
/// recorded, each failing with the next of `failures` while there are any.
final class FakeNetfilter: NetlinkTransport {
    var committed: [Batch] = []
    var failures: [NetlinkError] = []
    var dumps = 0

    func commit(_ batch: Batch) throws(NetlinkError) {
        committed.append(batch)
        if !failures.isEmpty { throw failures.removeFirst() }
    }

    func dump(_ request: [UInt8]) throws(NetlinkError) -> [[UInt8]] {
        dumps += 1
        // NFT_MSG_GETGEN (NFNL_SUBSYS_NFTABLES << 8 | 16): the ruleset generation.
        guard request.count >= 6, request[4] == 0x10, request[5] == 0x0a else { return [] }
        return [Wire.newGen(1)]
    }
}

/// rtnetlink holding nothing: dumps end empty, every other request is acknowledged with
/// `errno` (0: done).
final class FakeRouteKernel: NetlinkIO {
    var errno: Int32 = 0
    private(set) var requests: [NetlinkMessage] = []
    private var pending: [[UInt8]] = []

    func send(_ datagram: [UInt8]) throws(SystemCallError) {
        guard let messages = try? NetlinkFrames.parse(datagram) else {
            throw SystemCallError("send (fake: malformed request)", errno: EINVAL)
        }
        for message in messages {
            requests.append(message)
            if Self.isDump(message) {
                pending.append(Wire.frame(type: NLMSG_DONE, seq: message.sequence, payload: Wire.le32(0)))
            } else {
                pending.append(
                    Wire.frame(
                        type: NLMSG_ERROR, seq: message.sequence,
                        payload: Wire.le32(UInt32(bitPattern: -errno)) + message.bytes.prefix(16)))
            }
        }
    }

    func receive() throws(SystemCallError) -> [UInt8] {
        guard !pending.isEmpty else { throw SystemCallError("recv (fake: nothing queued)", errno: EAGAIN) }
        return pending.removeFirst()
    }

    /// rtnetlink's types come in fours: NEW, DEL, GET, SET; a GET here is always a dump (the
    /// flags cannot tell: NLM_F_DUMP's bits are NLM_F_REPLACE and NLM_F_EXCL on a NEW).
    static func isDump(_ message: NetlinkMessage) -> Bool { message.type >= RTM_BASE && message.type % 4 == 2 }

    /// Requests that change something (not dumps).
    var changes: [NetlinkMessage] { requests.filter { !Self.isDump($0) } }
}

/// Netlink bytes for the fakes' answers.
enum Wire {
    static func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * $0)) & 0xff) } }

    static func frame(type: some BinaryInteger, flags: Int = 0, seq: UInt32, payload: [UInt8]) -> [UInt8] {
        le32(UInt32(16 + payload.count)) + le16(UInt16(type)) + le16(UInt16(flags)) + le32(seq) + le32(0) + payload
    }

    /// An `NFT_MSG_NEWGEN` reply carrying generation `id` (NFTA_GEN_ID = 1, big endian).
    static func newGen(_ id: UInt32) -> [UInt8] {
        frame(type: 0x0a0f, seq: 0, payload: [0, 0, 0, 0] + le16(8) + le16(1) + le32(id.bigEndian))
    }
}

/// A network namespace file the CNI plugin opened: entering it is counted.
final class FakeNamespace: PodNamespace {
    let path: String
    let identity: NetworkNamespaceHandle.Identity
    var entered = 0

    init(path: String, inode: UInt64) {
        self.path = path
        identity = NetworkNamespaceHandle.Identity(device: 4, inode: inode)
    }

    func enter() throws(NamespaceError) { entered += 1 }
}

/// The resolver's system: istio-proxy is 1337, IPv4 only, nothing else.
struct FakeLookup: SystemLookup {
    func userID(named name: String) -> UInt32? { name == "istio-proxy" ? 1337 : nil }
    func groupID(named name: String) -> UInt32? { nil }
    func detectIPv6(dualStack: Bool) -> Bool? { false }
    func loopbackHasIPv6() -> Bool { false }
    func readFile(_ path: String) -> String? { nil }
}

/// The machine a test runs against: every part of `SystemBoundary` faked, and what was done
/// to it kept for the test to read.
final class FakeMachine {
    let runner: FakeRunner
    let netfilter = FakeNetfilter()
    let routes = FakeRouteKernel()
    var legacyLoaded = false
    var ipv6 = IPv6Availability.unsupported
    var namespaces: [String: FakeNamespace] = [:]
    /// The node's own namespace (the plugin's): inode 1.
    let node = NetworkNamespaceHandle.Identity(device: 4, inode: 1)
    var locks = 0
    var entered: [String] = []

    init(binaries: Set<String> = []) { runner = FakeRunner(binaries: binaries) }

    var boundary: SystemBoundary {
        SystemBoundary(
            environment: ProcessEnvironment(),
            runner: { _, _ in self.runner },
            openNetfilter: { () throws(NetlinkError) -> any NetlinkTransport in self.netfilter },
            openRoute: { () throws(PolicyRouting.Failure) -> any NetlinkIO in self.routes },
            loopbackIndex: { 1 },
            legacyTablesLoaded: { _ in self.legacyLoaded },
            ipv6: { self.ipv6 },
            lockNamespace: { _ throws(NamespaceLock.Failure) -> AnyObject? in
                self.locks += 1
                return nil
            },
            openNamespace: { path throws(NetworkNamespaceHandle.Failure) -> any PodNamespace in
                guard let namespace = self.namespaces[path] else { throw .missing(path: path) }
                return namespace
            },
            nodeNamespaces: { [("the plugin's own network namespace (the node's)", self.node)] },
            hostLookup: FakeLookup(),
            podLookup: { _ in FakeLookup() },
            enterNamespace: { path throws(NamespaceError) in self.entered.append(path) })
    }

    func context(_ flags: FlagMap<String> = [:]) throws -> Context {
        let settings = try boundary.resolve(.flags(flags, environment: [:]), in: .current)
        var context = Context(settings, boundary: boundary)
        context.log = Logger(level: .none, json: false, descriptor: 2)
        return context
    }
}
