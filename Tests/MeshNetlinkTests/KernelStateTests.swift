import Foundation
import MeshModel
import MeshTestKit
import Testing

@testable import MeshNetlink

#if canImport(Glibc)
    import Glibc
#endif

/// The kernel's state read honestly (issue 17): everything the kernel holds that changes what
/// our tables do is compared, a snapshot is never a mix of two states, and only the kernel's
/// own replies to this send are taken as replies. Real kernel, one namespace per test.
@Suite("Kernel: the state read back is the state", .serialized)
struct KernelStateTests {
    static func backend(_ ns: Kernel.Namespace) throws -> NftablesBackend {
        NftablesBackend(transport: try NetfilterSocket(networkNamespace: ns.path))
    }

    static let seed = Conformance.seedArgs

    @Test("a dormant table of ours: verify names it, apply re-arms it, then converges")
    func dormant() throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let backend = try Self.backend(ns)
        let plan = try Conformance.plan(Self.seed)
        try backend.apply(plan)
        try ns.exec(["nft", "add", "table", "inet", "istio-proxy-nat", "{ flags dormant; }"])
        #expect(try ns.exec(["nft", "list", "table", "inet", "istio-proxy-nat"]).stdout.contains("flags dormant"))
        let drift = try backend.verify(plan)
        #expect(drift.count == 1 && drift.first?.contains("dormant") == true, "\(drift)")
        #expect(try backend.apply(plan), "apply saw nothing to do on a dormant table")
        #expect(!(try ns.exec(["nft", "list", "table", "inet", "istio-proxy-nat"]).stdout.contains("dormant")))
        try expectNoDrift(backend, plan)
        #expect(try backend.apply(plan) == false, "a second apply wrote")
    }

    /// A change someone makes to our installed tables: the nft commands, and a word the
    /// difference must name.
    struct Change: Sendable, CustomTestStringConvertible {
        var name: String
        var commands: [[String]]
        var named: String
        var testDescription: String { name }
    }

    static let changes: [Change] = [
        Change(
            name: "base chain policy drop",
            commands: [["nft", "add", "chain", "inet", "istio-proxy-nat", "output", "{ policy drop; }"]],
            named: "policy drop"),
        Change(
            name: "base chain with another priority",
            commands: [
                ["nft", "flush", "chain", "inet", "istio-proxy-nat", "output"],
                ["nft", "delete", "chain", "inet", "istio-proxy-nat", "output"],
                [
                    "nft", "add", "chain", "inet", "istio-proxy-nat", "output",
                    "{ type nat hook output priority -99; }",
                ],
                ["nft", "add", "rule", "inet", "istio-proxy-nat", "output", "counter", "jump", "istio-output"],
            ],
            named: "priority -99"),
        Change(
            name: "base chain on another hook",
            commands: [
                ["nft", "flush", "chain", "inet", "istio-proxy-nat", "output"],
                ["nft", "delete", "chain", "inet", "istio-proxy-nat", "output"],
                [
                    "nft", "add", "chain", "inet", "istio-proxy-nat", "output",
                    "{ type nat hook postrouting priority -100; }",
                ],
            ],
            named: "hook postrouting"),
        Change(
            name: "a foreign chain in our table",
            commands: [["nft", "add", "chain", "inet", "istio-proxy-nat", "foreign"]],
            named: "unexpected chain inet istio-proxy-nat foreign"),
        Change(
            name: "a foreign base chain in our table",
            commands: [
                [
                    "nft", "add", "chain", "inet", "istio-proxy-nat", "sneaky",
                    "{ type filter hook output priority -300; policy drop; }",
                ]
            ],
            named: "unexpected chain inet istio-proxy-nat sneaky"),
        Change(
            name: "a named set in our table",
            commands: [["nft", "add", "set", "inet", "istio-proxy-nat", "stash", "{ type ipv4_addr; }"]],
            named: "unexpected set inet istio-proxy-nat stash"),
        Change(
            name: "a chain renamed",
            commands: [["nft", "rename", "chain", "inet", "istio-proxy-nat", "istio-redirect", "elsewhere"]],
            named: "missing chain inet istio-proxy-nat istio-redirect"),
        Change(
            name: "a rule added in front",
            commands: [["nft", "insert", "rule", "inet", "istio-proxy-nat", "istio-output", "counter", "accept"]],
            named: "unexpected rule in inet istio-proxy-nat istio-output (position 1)"),
    ]

    @Test("every change to our tables is a difference, and apply undoes it", arguments: changes)
    func change(_ change: Change) throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let backend = try Self.backend(ns)
        let plan = try Conformance.plan(Self.seed)
        try backend.apply(plan)
        for command in change.commands { try ns.exec(command) }
        let drift = try backend.verify(plan)
        #expect(drift.contains { $0.contains(change.named) }, "\(change.name): \(drift)")
        #expect(try backend.apply(plan), "\(change.name): apply saw nothing to do")
        try expectNoDrift(backend, plan)
        #expect(try backend.apply(plan) == false, "\(change.name): a second apply wrote")
    }

    @Test("counters that counted are no difference")
    func counters() throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let backend = try Self.backend(ns)
        let plan = try Conformance.plan(Self.seed)
        try backend.apply(plan)
        // Connections out of the pod (refused, but through nat OUTPUT) count.
        try ns.exec([
            "python3", "-c",
            "import socket\nfor p in (1, 2, 3):\n    s = socket.socket()\n    try: s.connect(('127.0.0.2', p))\n    except OSError: pass",
        ])
        let listing = try ns.exec(["nft", "list", "chain", "inet", "istio-proxy-nat", "output"]).stdout
        #expect(!listing.contains("counter packets 0 "), "no counter counted:\n\(listing)")
        try expectNoDrift(backend, plan)
        #expect(try backend.apply(plan) == false)
    }

    @Test("set contents are compared: one port of twenty differs")
    func setContents() throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let backend = try Self.backend(ns)
        let ports = (1...20).map { "\(8000 + $0)" }
        let installed = try Conformance.plan(Self.seed + ["-o", ports.joined(separator: ",")])
        let other = try Conformance.plan(Self.seed + ["-o", (ports.dropLast() + ["9999"]).joined(separator: ",")])
        try backend.apply(installed)
        try expectNoDrift(backend, installed)
        let drift = try backend.verify(other)
        #expect(drift.contains { $0.hasPrefix("missing rule") } && drift.contains { $0.hasPrefix("unexpected rule") })
        #expect(try backend.apply(other))
        try expectNoDrift(backend, other)
    }

    @Test("a table with our name in another family is not ours: no difference, nothing written")
    func otherFamily() throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let backend = try Self.backend(ns)
        let plan = try Conformance.plan(Self.seed)
        try backend.apply(plan)
        try ns.exec(["nft", "add", "table", "ip", "istio-proxy-nat"])
        try ns.exec(["nft", "add", "chain", "ip", "istio-proxy-nat", "out", "{ type nat hook output priority 0; }"])
        try expectNoDrift(backend, plan)
        #expect(try backend.apply(plan) == false)
        #expect(try ns.exec(["nft", "list", "tables"]).stdout.contains("table ip istio-proxy-nat"))
    }

    /// Passes everything to a real socket; once, right after the chain dump, lets `change`
    /// run: a writer between two dumps of one read.
    final class RacingTransport: NetlinkTransport {
        let socket: NetfilterSocket
        var change: (() -> Void)?

        init(_ socket: NetfilterSocket, change: @escaping () -> Void) {
            self.socket = socket
            self.change = change
        }

        func commit(_ batch: Batch) throws(NetlinkError) { try socket.commit(batch) }

        func dump(_ request: [UInt8]) throws(NetlinkError) -> [[UInt8]] {
            let replies = try socket.dump(request)
            let getChain: UInt16 = 0xa04  // NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN
            if WireMessage.split(request).contains(where: { $0.type == getChain }), let change {
                self.change = nil
                change()
            }
            return replies
        }
    }

    @Test("a writer between two dumps: verify reads again and sees the change (no mixed snapshot)")
    func raceVerify() throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let plan = try Conformance.plan(Self.seed)
        try Self.backend(ns).apply(plan)
        let racing = RacingTransport(try NetfilterSocket(networkNamespace: ns.path)) {
            _ = try? ns.exec(["nft", "add", "chain", "inet", "istio-proxy-nat", "output", "{ policy drop; }"])
        }
        let drift = try NftablesBackend(transport: racing).verify(plan)
        #expect(racing.change == nil, "the writer never ran")
        #expect(drift.contains { $0.contains("policy drop") }, "a mixed snapshot compared: \(drift)")
    }

    @Test("a writer between two dumps of an install: the install still converges")
    func raceApply() throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let plan = try Conformance.plan(Self.seed)
        try Self.backend(ns).apply(plan)
        let racing = RacingTransport(try NetfilterSocket(networkNamespace: ns.path)) {
            _ = try? ns.exec(["nft", "add", "chain", "inet", "istio-proxy-nat", "output", "{ policy drop; }"])
        }
        try NftablesBackend(transport: racing).apply(plan)
        #expect(racing.change == nil, "the writer never ran")
        try expectNoDrift(try Self.backend(ns), plan)
    }

    /// The descriptor and netlink port id of the socket `make` opens in `ns`.
    static func socketIdentity(in ns: Kernel.Namespace, _ make: () throws -> NetfilterSocket) throws -> (
        NetfilterSocket, fd: Int32, portID: UInt32
    ) {
        func sockets() -> [Int32: String] {
            var out: [Int32: String] = [:]
            for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? [] {
                if let fd = Int32(name),
                    let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(name)"),
                    target.hasPrefix("socket:[")
                {
                    out[fd] = String(target.dropFirst(8).dropLast())
                }
            }
            return out
        }
        let before = sockets()
        let socket = try make()
        let new = sockets().filter { before[$0.key] != $0.value }
        // The kernel's table of netlink sockets in that namespace: protocol 12 is NETLINK_NETFILTER.
        let table = try ns.exec(["cat", "/proc/net/netlink"]).stdout.split(separator: "\n").dropFirst().map {
            $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        }
        for (fd, inode) in new {
            if let row = table.first(where: { $0.count >= 10 && $0[1] == "12" && $0[9] == inode }),
                let port = UInt32(row[2])
            {
                return (socket, fd, port)
            }
        }
        throw SocketNotFound()
    }

    @Test("messages another process sends to our port are never taken for the kernel's replies")
    func forged() throws {
        guard try Kernel.require(tools: ["python3"]) else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let (socket, _, port) = try Self.socketIdentity(in: ns) { try NetfilterSocket(networkNamespace: ns.path) }
        // Error acknowledgements addressed to our port, with the sequence numbers a first dump
        // (0x4d538000) and a first batch (1, 2, 3) would have had with fixed numbering.
        let forge = """
            import socket, struct, sys
            port = int(sys.argv[1])
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
            s.bind((0, 0))
            for seq, err in ((0x4d538000, 1), (0x4d538001, 1), (1, 2), (2, 2), (3, 2)):
                s.sendto(struct.pack("=IHHII", 36, 2, 0x100, seq, port) + struct.pack("=i", -err) + bytes(16), (port, 0))
            """
        try ns.exec(["python3", "-c", forge, "\(port)"])
        let plan = try Conformance.plan(Self.seed)
        let backend = NftablesBackend(transport: socket)
        #expect(throws: Never.self) { try backend.apply(plan) }
        try expectNoDrift(try Self.backend(ns), plan)
    }

    @Test("a late reply from the kernel to an earlier request is not taken for this batch's")
    func staleReply() throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let (socket, fd, _) = try Self.socketIdentity(in: ns) { try NetfilterSocket(networkNamespace: ns.path) }
        // GETTABLE of a table that does not exist, with NLM_F_ACK, sequence 2 (a batch's first
        // object message with fixed numbering): the kernel queues ENOENT on our socket.
        var name = Array("no-such-table".utf8) + [0]
        while name.count % 4 != 0 { name.append(0) }
        var request: [UInt8] = []
        func le<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.littleEndian) { request += $0 } }
        le(UInt32(16 + 4 + 4 + name.count))
        le(UInt16(0xa01))  // NFT_MSG_GETTABLE
        le(UInt16(1 | 4))  // NLM_F_REQUEST | NLM_F_ACK
        le(UInt32(2))
        le(UInt32(0))
        request += [1, 0, 0, 0]  // nfgenmsg: NFPROTO_INET
        le(UInt16(4 + 14))
        le(UInt16(1))  // NFTA_TABLE_NAME
        request += name
        let sent = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        #expect(sent == request.count)
        let plan = try Conformance.plan(Self.seed)
        #expect(throws: Never.self) { try socket.commit(try NftBatchBuilder.applyBatch(plan, existing: [])) }
        try expectNoDrift(try Self.backend(ns), plan)
    }
}

struct SocketNotFound: Error, CustomStringConvertible {
    var description: String { "the new netlink socket is not in the namespace's /proc/net/netlink" }
}
