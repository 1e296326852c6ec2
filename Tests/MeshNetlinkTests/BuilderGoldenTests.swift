import Foundation
import MeshModel
import MeshRender
import MeshTestKit
import Testing

@testable import MeshNetlink

/// Byte goldens of the builder: for each catalog rule, the whole one-rule batch (begin,
/// the rule's anonymous set and elements, the rule, end), sequence numbers from 1.
///
/// How they were verified: every NEWRULE/NEWSET/NEWSETELEM message here is byte-identical
/// (apart from `NLM_F_ACK` and the sequence number) to what `nft -f` 1.0.6 sends for
/// `NftScript.statement(rule)` — `NftOracleTests` "the rule catalog" checks exactly that
/// against a live `nft` under strace, and the kernel tests load the result and compare
/// `nft list ruleset` with nft's own. Then they were recorded with
/// `MESHNL_RECORD_GOLDENS=1 swift test --filter BuilderGoldenTests` (which rewrites
/// `BuilderGoldens.swift`).
@Suite("Builder byte goldens")
struct BuilderGoldenTests {
    static func batch(_ entry: RuleCatalog.Entry) throws -> [UInt8] {
        let writer = BatchWriter(firstSequence: 1)
        try writer.addRule(
            table: entry.table.nftTableName, chain: entry.chain.nftName, compiled: RuleCompiler.compile(entry.rule),
            text: NftScript.statement(entry.rule))
        return writer.finish().bytes
    }

    /// 4 bytes per word, 8 words per line.
    static func hex(_ bytes: [UInt8]) -> String {
        var lines: [String] = []
        var index = 0
        while index < bytes.count {
            let line = bytes[index..<min(index + 32, bytes.count)]
            var words: [String] = []
            var w = line.startIndex
            while w < line.endIndex {
                words.append(line[w..<min(w + 4, line.endIndex)].map { String(format: "%02x", $0) }.joined())
                w += 4
            }
            lines.append(words.joined(separator: " "))
            index += 32
        }
        return lines.joined(separator: "\n")
    }

    @Test("golden", arguments: RuleCatalog.entries)
    func golden(_ entry: RuleCatalog.Entry) throws {
        let actual = Self.hex(try Self.batch(entry))
        if ProcessInfo.processInfo.environment["MESHNL_RECORD_GOLDENS"] == "1" { return }
        guard let expected = BuilderGoldens.batches[entry.name] else {
            Issue.record("no golden for \(entry.name); record with MESHNL_RECORD_GOLDENS=1")
            return
        }
        if actual != expected {
            let a = expected.split(whereSeparator: { $0 == " " || $0 == "\n" })
            let b = actual.split(whereSeparator: { $0 == " " || $0 == "\n" })
            let first = zip(a, b).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(a.count, b.count)
            Issue.record(
                "\(entry.name): differs at byte \(first * 4): golden \(first < a.count ? String(a[first]) : "end"), built \(first < b.count ? String(b[first]) : "end")\n\(actual)"
            )
        }
    }

    /// Recording is explicit (`MESHNL_RECORD_GOLDENS=1`); otherwise this checks that the
    /// golden file holds exactly the current catalog (no entry missing, none left over).
    @Test("golden file covers exactly the catalog; MESHNL_RECORD_GOLDENS=1 rewrites it")
    func record() throws {
        guard ProcessInfo.processInfo.environment["MESHNL_RECORD_GOLDENS"] == "1" else {
            #expect(Set(BuilderGoldens.batches.keys) == Set(RuleCatalog.entries.map(\.name)))
            return
        }
        var source = """
            // Recorded by BuilderGoldenTests (MESHNL_RECORD_GOLDENS=1); verified against nft 1.0.6,
            // see BuilderGoldenTests. Do not edit by hand.

            enum BuilderGoldens {
                static let batches: [String: String] = [

            """
        for entry in RuleCatalog.entries {
            source += "        \"\(entry.name)\": \"\"\"\n"
            for line in Self.hex(try Self.batch(entry)).split(separator: "\n") { source += "            \(line)\n" }
            source += "            \"\"\",\n"
        }
        source += "    ]\n}\n"
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
            "BuilderGoldens.swift")
        try source.write(to: url, atomically: true, encoding: .utf8)
    }

    @Test("every Match and Target case is in the catalog")
    func coverage() {
        var matches: Set<String> = []
        var targets: Set<String> = []
        for entry in RuleCatalog.entries {
            for match in entry.rule.matches {
                matches.insert(String(describing: match).prefix { $0 != "(" }.description)
            }
            targets.insert(String(describing: entry.rule.target).prefix { $0 != "(" }.description)
        }
        #expect(
            matches == [
                "inInterface", "outInterface", "source", "destination", "destinations", "l4proto", "destinationPorts",
                "sourcePort",
                "owner", "mark", "connmark", "conntrackState",
            ])
        #expect(
            targets == [
                "jump", "return", "accept", "drop", "redirect", "tproxy", "setMark", "saveMarkToConnmark",
                "restoreMarkFromConnmark", "conntrackZone",
            ])
    }

    @Test("batch framing: begin/end, NLM_F_ACK on every object message, sequence from 1")
    func framing() throws {
        let plan = try Conformance.plan(Conformance.seedArgs)
        let batch = try NftBatchBuilder.applyBatch(plan)
        let messages = WireMessage.split(batch.bytes)
        #expect(messages.first?.type == 0x10 && messages.last?.type == 0x11)
        var offset = 0
        var sequence: UInt32 = 1
        while offset < batch.bytes.count {
            let length = batch.bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }
            let flags = batch.bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 6, as: UInt16.self) }
            let seq = batch.bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self) }
            let type = batch.bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 4, as: UInt16.self) }
            #expect(seq == sequence)
            if type != 0x10 && type != 0x11 { #expect(flags & 4 != 0, "message \(seq) lacks NLM_F_ACK") }
            sequence += 1
            offset += (Int(length) + 3) & ~3
        }
        #expect(batch.messages.count == messages.count - 2)
        // Deterministic: the same plan gives the same bytes.
        #expect(try NftBatchBuilder.applyBatch(plan).bytes == batch.bytes)
        // Seed, IPv4+IPv6: nat is rebuilt; mangle and raw are deleted (add + delete).
        let subjects = batch.messages.map(\.subject)
        #expect(
            Array(subjects.prefix(3)) == [
                "add table inet istio-proxy-nat", "delete table inet istio-proxy-nat", "add table inet istio-proxy-nat",
            ])
        #expect(
            Array(subjects.suffix(4)) == [
                "add table inet istio-proxy-mangle", "delete table inet istio-proxy-mangle",
                "add table inet istio-proxy-raw", "delete table inet istio-proxy-raw",
            ])
        #expect(subjects.contains("add rule inet istio-proxy-nat output counter jump istio-output"))
    }

    @Test("clean batch deletes exactly our three tables")
    func clean() throws {
        let batch = try NftBatchBuilder.cleanBatch()
        #expect(
            batch.messages.map(\.subject) == [
                "add table inet istio-proxy-nat", "delete table inet istio-proxy-nat",
                "add table inet istio-proxy-mangle", "delete table inet istio-proxy-mangle",
                "add table inet istio-proxy-raw", "delete table inet istio-proxy-raw",
            ])
        #expect(batch.messages.map(\.sequence) == Array(2...7))
    }

    @Test("large port sets are split so no message exceeds 64 KiB")
    func splitSets() throws {
        let ranges = (0..<3000).map { RuleCatalog.ports(1 + $0 * 20, 10 + $0 * 20) }
        let rule = Rule([.destinationPorts(.tcp, ranges, negated: true)], .return)
        let writer = BatchWriter(firstSequence: 1)
        try writer.addRule(
            table: "istio-proxy-nat", chain: "istio-output", compiled: RuleCompiler.compile(rule), text: "big set")
        let batch = writer.finish()
        let messages = WireMessage.split(batch.bytes)
        let elements = messages.filter { $0.type == WireMessage.newSetElem }
        #expect(elements.count == 6)  // 6,001 elements (leading end marker + 2 per range), 1,024 per message
        #expect(messages.allSatisfy { $0.payload.count + 16 <= 65535 })
    }
}
