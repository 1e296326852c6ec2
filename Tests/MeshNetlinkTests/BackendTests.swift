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

    func dump(_ request: [UInt8]) throws(NetlinkError) -> [[UInt8]] { [] }
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
