import CNftnl
import Foundation
import MeshModel
import MeshTestKit
import Testing

@testable import MeshNetlink

#if canImport(Glibc)
    import Glibc
#endif

/// A transport that records batches and answers with scripted errors.
final class FakeTransport: NetlinkTransport {
    var committed: [Batch] = []
    var failures: [NetlinkError] = []

    func commit(_ batch: Batch) throws(NetlinkError) {
        committed.append(batch)
        if !failures.isEmpty { throw failures.removeFirst() }
    }

    /// An empty ruleset at generation 1: GETGEN is answered, dumps find nothing.
    func dump(_ request: [UInt8]) throws(NetlinkError) -> [[UInt8]] {
        WireMessage.split(request).filter { $0.type == WireMessage.getGen }.map { _ in newGen(1) }
    }
}

/// An `NFT_MSG_NEWGEN` reply carrying generation `id` (NFTA_GEN_ID, big endian).
func newGen(_ id: UInt32) -> [UInt8] {
    let type = UInt16(NFNL_SUBSYS_NFTABLES) << 8 | UInt16(NFT_MSG_NEWGEN.rawValue)
    var out: [UInt8] = []
    withUnsafeBytes(of: UInt32(28).littleEndian) { out += $0 }
    withUnsafeBytes(of: type.littleEndian) { out += $0 }
    out += [0, 0] + [UInt8](repeating: 0, count: 8) + [0, 0, 0, 0]
    withUnsafeBytes(of: UInt16(8).littleEndian) { out += $0 }
    withUnsafeBytes(of: UInt16(NFTA_GEN_ID.rawValue).littleEndian) { out += $0 }
    withUnsafeBytes(of: id.bigEndian) { out += $0 }
    return out
}

@Suite("Backend without a kernel")
struct BackendTests {
    static let busy = NetlinkError(.kernel, "commit", errno: EBUSY)

    @Test("apply sends one batch: the builder's bytes")
    func apply() throws {
        let fake = FakeTransport()
        let plan = try Conformance.plan(Conformance.seedArgs)
        try NftablesBackend(transport: fake).apply(plan)
        // The fake kernel holds none of our tables: create them, delete nothing.
        #expect(fake.committed == [try NftBatchBuilder.applyBatch(plan, existing: [])])
    }

    @Test("a table created by someone else since the dump: retried as a full replace")
    func tableRace() throws {
        let fake = FakeTransport()
        fake.failures = [NetlinkError(.kernel, "create table inet istio-proxy-nat", errno: EEXIST)]
        let plan = try Conformance.plan(Conformance.seedArgs)
        try NftablesBackend(transport: fake).apply(plan)
        #expect(fake.committed.count == 2)
        #expect(fake.committed.last == (try NftBatchBuilder.applyBatch(plan)))
    }

    @Test("a transient kernel error is retried, at most maxAttempts times")
    func retry() throws {
        let fake = FakeTransport()
        fake.failures = [Self.busy, Self.busy]
        let plan = try Conformance.plan([])
        try NftablesBackend(transport: fake, maxAttempts: 3).apply(plan)
        #expect(fake.committed.count == 3)

        let failing = FakeTransport()
        failing.failures = [Self.busy, Self.busy, Self.busy, Self.busy]
        #expect(throws: Self.busy) { try NftablesBackend(transport: failing, maxAttempts: 3).apply(plan) }
        #expect(failing.committed.count == 3)
    }

    @Test("a refused object is not retried")
    func noRetry() throws {
        let fake = FakeTransport()
        let refused = NetlinkError(.kernel, "add rule inet istio-proxy-nat output counter jump x", errno: ENOENT)
        fake.failures = [refused]
        #expect(throws: refused) { try NftablesBackend(transport: fake).apply(try Conformance.plan([])) }
        #expect(fake.committed.count == 1)
        #expect(
            refused.description
                == "add rule inet istio-proxy-nat output counter jump x: No such file or directory (ENOENT)")
    }

    @Test("verify with no tables reports every planned table missing")
    func verifyEmpty() throws {
        let plan = try Conformance.plan(Conformance.seedArgs + ["-m", "TPROXY"])
        let drift = try NftablesBackend(transport: FakeTransport()).verify(plan)
        #expect(drift == ["missing table inet istio-proxy-nat", "missing table inet istio-proxy-mangle"])
    }

    @Test("rule diff names missing and extra rules by position")
    func diff() {
        #expect(RulesetDiff.diff(["a", "b", "c"], ["a", "c", "d"]) == [.missing(1), .extra(2)])
        #expect(RulesetDiff.diff([], ["x"]) == [.extra(0)])
        #expect(RulesetDiff.diff(["x"], []) == [.missing(0)])
    }
}

/// A kernel whose ruleset changes between any two reads: every GETGEN answers a new
/// generation, and our nat table is always there.
final class ChangingTransport: NetlinkTransport {
    var generation: UInt32 = 0
    var dumps = 0

    func commit(_ batch: Batch) throws(NetlinkError) {}

    func dump(_ request: [UInt8]) throws(NetlinkError) -> [[UInt8]] {
        dumps += 1
        var out: [[UInt8]] = []
        for message in WireMessage.split(request) {
            if message.type == WireMessage.getGen {
                generation += 1
                out.append(newGen(generation))
            } else if message.type == 0xa01 {  // GETTABLE: istio-proxy-nat
                let table = try NftnlTable(name: "istio-proxy-nat")
                var buffer = [CChar](repeating: 0, count: 512)
                out.append(
                    buffer.withUnsafeMutableBufferPointer { chars in
                        let header = nftnl_nlmsg_build_hdr(
                            chars.baseAddress, UInt16(NFT_MSG_NEWTABLE.rawValue), UInt16(NFPROTO_INET),
                            UInt16(NLM_F_MULTI), 0)!
                        nftnl_table_nlmsg_build_payload(header, table.raw)
                        return Array(UnsafeRawBufferPointer(start: header, count: Int(header.pointee.nlmsg_len)))
                    })
            }
        }
        return out
    }
}

@Suite("Reading the ruleset while it changes")
struct SnapshotTests {
    @Test("a ruleset that changes during every read: a bounded number of reads, then a clear error")
    func alwaysChanging() throws {
        let fake = ChangingTransport()
        #expect {
            try NftablesBackend(transport: fake).verify(try Conformance.plan(Conformance.seedArgs))
        } throws: { error in
            let failure = error as? NetlinkError
            return failure?.code == .concurrentChange && failure?.errno == EAGAIN
                && failure?.description.hasPrefix("reading the nftables ruleset: another writer changed it") == true
        }
        // Each read: tables (+GETGEN), sets, chains, rules (+GETGEN); ten reads.
        #expect(fake.dumps == 40)
    }
}
