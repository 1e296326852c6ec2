import Foundation
import MeshModel
import MeshRender
import MeshTestKit
import Testing

@testable import MeshNetlink

/// The builder's messages are byte-identical to the ones `nft -f` sends for the same text
/// (`NftScript.render(plan)`): nft's batch is captured with `strace -e write=all` inside a
/// throwaway namespace. Compared: every NEWCHAIN, NEWSET, NEWSETELEM and NEWRULE message
/// (attributes byte for byte, message type and flags except `NLM_F_ACK`, which meshinit adds
/// to every message); not compared: sequence numbers, and the table messages (nft sends
/// `flush table`, meshinit `delete table` + `add table`). Needs root, ip, nft and strace.
@Suite("Builder bytes equal nft's own", .serialized, .enabled(if: Kernel.mayRun(tools: ["strace"])))
struct NftOracleTests {
    @Test("conformance plans", arguments: Conformance.all)
    func conformance(_ c: ConformanceCase) throws {
        try compare(try c.plan(), label: c.name)
    }

    @Test("seed invocation, IPv6 on")
    func seed() throws {
        try compare(try Conformance.plan(Conformance.seedArgs), label: "seed")
    }

    @Test("port ranges, sets with ranges, interfaces with wildcards, CIDRs of every shape")
    func shapes() throws {
        let plan = try Conformance.plan([
            "-b", "8000-8010,9080", "-q", "7000-7005,7100", "-o", "6000-6010,53", "-i",
            "10.0.0.0/8,10.96.0.0/12,2001:db8::/33,fd00::/60", "-x", "10.1.0.0/16", "-c", "veth+,eth0", "-k", "kv+",
        ])
        try compare(plan, label: "shapes")
    }

    @Test("long lists become sets: CIDRs (hosts, prefixes, adjacent, overlapping, v4 and v6) and ports")
    func longLists() throws {
        let v4 = (0..<20).map { "10.0.\($0).0/24" } + ["10.0.3.128/25", "192.0.2.7/32", "0.0.0.0/8"]
        let v6 = (0..<18).map { "2001:db8:\($0)::/48" } + ["fd00::1/128"]
        let hosts = (1...20).map { "198.51.100.\($0)/32" }
        let ports = (1...20).map { "\(6000 + $0)" } + ["7000-7010"]
        let plan = try Conformance.plan([
            "-x", (v4 + v6).joined(separator: ","), "-i", hosts.joined(separator: ","),
            "-o", ports.joined(separator: ","), "-q", (1...17).map { "\(8000 + $0)" }.joined(separator: ","),
            "-b", ports.joined(separator: ","),
        ])
        try compare(plan, label: "long lists")
        // Applied through netlink it verifies clean, and reads back as nft -f of the same text.
        guard try Kernel.require() else { return }
        let ours = try Kernel.Namespace()
        defer { ours.delete() }
        let backend = NftablesBackend(transport: try NetfilterSocket(networkNamespace: ours.path))
        try backend.apply(plan)
        #expect(try backend.verify(plan) == [])
        let theirs = try Kernel.Namespace()
        defer { theirs.delete() }
        try theirs.nftScript(NftScript.render(plan))
        #expect(try ours.ruleset() == theirs.ruleset())
    }

    func compare(_ plan: Plan, label: String) throws {
        guard try Kernel.require(tools: ["strace"]) else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let script = NftScript.render(plan)
        let nft = try Kernel.nftBatch(script, in: ns)
        let ours = try NftBatchBuilder.applyBatch(plan).bytes
        let a = WireMessage.split(nft).filter(\.isObject)
        let b = WireMessage.split(ours).filter(\.isObject)
        #expect(a.count == b.count, "\(label): nft sent \(a.count) messages, we build \(b.count)")
        for (index, (x, y)) in zip(a, b).enumerated() where x != y {
            Issue.record("\(label): message \(index) differs\n  nft : \(x)\n  ours: \(y)")
            break
        }
    }
}

/// One netlink message with its sequence number dropped (for comparisons).
struct WireMessage: Equatable, CustomStringConvertible {
    var type: UInt16
    var flags: UInt16
    var payload: [UInt8]

    static let newChain: UInt16 = 0xa03
    static let newRule: UInt16 = 0xa06
    static let newSet: UInt16 = 0xa09
    static let newSetElem: UInt16 = 0xa0c
    static let getGen: UInt16 = 0xa10

    var isObject: Bool { [Self.newChain, Self.newRule, Self.newSet, Self.newSetElem].contains(type) }

    var description: String {
        "type 0x\(String(type, radix: 16)) flags 0x\(String(flags, radix: 16)) "
            + payload.map { String(format: "%02x", $0) }.joined()
    }

    /// Splits a batch into messages; flags lose `NLM_F_ACK` (4).
    static func split(_ bytes: [UInt8]) -> [WireMessage] {
        var out: [WireMessage] = []
        var i = 0
        while i + 16 <= bytes.count {
            let length = Int(
                UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24)
            guard length >= 16, i + length <= bytes.count else { break }
            let type = UInt16(bytes[i + 4]) | UInt16(bytes[i + 5]) << 8
            let flags = (UInt16(bytes[i + 6]) | UInt16(bytes[i + 7]) << 8) & ~UInt16(4)
            out.append(WireMessage(type: type, flags: flags, payload: Array(bytes[(i + 16)..<(i + length)])))
            i += (length + 3) & ~3
        }
        return out
    }
}

extension Kernel {

    /// The batch `nft -f` sends for `script` (the largest sendmsg that starts with
    /// NFNL_MSG_BATCH_BEGIN), captured with strace's hex dump of written data.
    static func nftBatch(_ script: String, in ns: Namespace) throws -> [UInt8] {
        let dir = FileManager.default.temporaryDirectory
        let file = dir.appendingPathComponent("meshnl-\(getpid())-\(ns.name).nft")
        let trace = dir.appendingPathComponent("meshnl-\(getpid())-\(ns.name).strace")
        try script.write(to: file, atomically: true, encoding: .utf8)
        defer {
            try? FileManager.default.removeItem(at: file)
            try? FileManager.default.removeItem(at: trace)
        }
        try ns.exec(["strace", "-e", "trace=sendmsg", "-e", "write=all", "-o", trace.path, "nft", "-f", file.path])
        let text = try String(contentsOf: trace, encoding: .utf8)
        var calls: [[UInt8]] = []
        for line in text.split(separator: "\n") {
            if line.hasPrefix("sendmsg(") {
                calls.append([])
                continue
            }
            // " | 00000  14 00 00 00 10 00 01 00  00 00 00 00 00 00 00 00  ................ |"
            let parts = line.split(separator: "|", omittingEmptySubsequences: false)
            guard parts.count >= 3, !calls.isEmpty else { continue }
            let body = parts[1].split(separator: " ", omittingEmptySubsequences: true)
            guard body.count > 1 else { continue }
            for token in body.dropFirst().prefix(16) {
                guard token.count == 2, let byte = UInt8(token, radix: 16) else { break }
                calls[calls.count - 1].append(byte)
            }
        }
        return calls.filter { $0.count >= 20 && $0[4] == 0x10 && $0[5] == 0 }.max { $0.count < $1.count } ?? []
    }
}

extension NftOracleTests {
    @Test("the rule catalog (every match and target case)")
    func catalog() throws {
        try compare(RuleCatalog.plan, label: "catalog")
    }
}
