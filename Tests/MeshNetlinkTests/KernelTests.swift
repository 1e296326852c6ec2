import Foundation
import MeshModel
import MeshRender
import MeshTestKit
import Testing

@testable import MeshNetlink

#if canImport(Glibc)
    import Glibc
#endif

/// Real-kernel tests, each in its own network namespace (created and deleted per test).
/// The netlink socket is opened inside the namespace by path (`NetfilterSocket(networkNamespace:)`),
/// so the test process itself never leaves the host namespace. Needs root, `ip` and `nft`
/// (the oracle); skipped without them unless `CI=true`, where they fail.
@Suite("Kernel: native nftables backend", .serialized, .enabled(if: Kernel.mayRun()))
struct KernelTests {
    static func backend(_ ns: Kernel.Namespace) throws -> NftablesBackend {
        NftablesBackend(transport: try NetfilterSocket(networkNamespace: ns.path))
    }

    @Test("conformance: applied through netlink = Istio's golden loaded by nft", arguments: Conformance.all)
    func conformance(_ c: ConformanceCase) throws {
        let plan = try c.plan()
        guard try Kernel.require() else { return }
        let ours = try Kernel.Namespace()
        let istio = try Kernel.Namespace()
        defer {
            ours.delete()
            istio.delete()
        }
        try Self.backend(ours).apply(plan)
        try istio.nftScript(try c.golden)
        let got = try ours.ruleset()
        let want = try istio.ruleset()
        #expect(got == want, "\(c.name):\n\(Kernel.diff(want, got))")
        try expectNoDrift(Self.backend(ours), plan)
    }

    @Test("the rule catalog: applied through netlink = the same text loaded by nft")
    func catalog() throws {
        guard try Kernel.require() else { return }
        let ours = try Kernel.Namespace()
        let nft = try Kernel.Namespace()
        defer {
            ours.delete()
            nft.delete()
        }
        let plan = RuleCatalog.plan
        try Self.backend(ours).apply(plan)
        try nft.nftScript(NftScript.render(plan))
        let got = try ours.ruleset()
        let want = try nft.ruleset()
        #expect(got == want, Comment(rawValue: Kernel.diff(want, got)))
        try expectNoDrift(Self.backend(ours), plan)
    }

    @Test(
        "an injected failure (jump to a missing chain) changes nothing and names the rule: last in the batch, or in the middle (no ack asked for it)",
        arguments: [0, 3])
    func injectedFailure(rulesAfter: Int) throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let backend = try Self.backend(ns)
        let good = try Conformance.plan(Conformance.seedArgs)
        try backend.apply(good)
        let before = try ns.exec(["nft", "-a", "list", "ruleset"]).stdout

        let tproxy = try Conformance.plan(Conformance.seedArgs + ["-m", "TPROXY"])
        let writer = try NftBatchBuilder.applyWriter(tproxy, firstSequence: 1)
        let bad = CompiledRule(
            expressions: [.counter, .verdict(NftConstant.verdictJump, chain: "no-such-chain")], sets: [])
        try writer.addRule(
            table: "istio-proxy-nat", chain: "istio-output", compiled: bad, text: "counter jump no-such-chain")
        // Good rules after it: the last message (the only one asking for an ack) is accepted.
        let fine = CompiledRule(expressions: [.counter], sets: [])
        for _ in 0..<rulesAfter {
            try writer.addRule(table: "istio-proxy-nat", chain: "istio-output", compiled: fine, text: "counter")
        }
        let batch = writer.finish()
        let socket = try NetfilterSocket(networkNamespace: ns.path)
        do {
            try socket.commit(batch)
            Issue.record("the kernel accepted a jump to a missing chain")
        } catch {
            #expect(error.code == .kernel)
            #expect(error.errno == ENOENT)
            #expect(error.subject == "add rule inet istio-proxy-nat istio-output counter jump no-such-chain")
            #expect(
                error.description.hasPrefix(
                    "add rule inet istio-proxy-nat istio-output counter jump no-such-chain: No such file or directory (ENOENT)"
                ), "\(error)")
        }
        #expect(try ns.exec(["nft", "-a", "list", "ruleset"]).stdout == before)
        try expectNoDrift(backend, good)
    }

    @Test("clean is idempotent and leaves a foreign table byte-identical")
    func clean() throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        try ns.exec(
            ["nft", "-f", "-"],
            stdin: """
                table inet foreign {
                    set ports { type inet_service; elements = { 80, 443 } }
                    chain output {
                        type filter hook output priority 0; policy accept;
                        tcp dport @ports counter accept
                    }
                }
                table ip nat {
                    chain OUTPUT {
                        type nat hook output priority -100;
                        ip daddr 10.0.0.1 counter return
                    }
                }

                """)
        let foreign = try ns.exec(["nft", "-a", "list", "ruleset"]).stdout
        let backend = try Self.backend(ns)
        try backend.clean()  // nothing of ours there yet
        #expect(try ns.exec(["nft", "-a", "list", "ruleset"]).stdout == foreign)
        try backend.apply(
            try Conformance.plan(
                Conformance.seedArgs + ["-m", "TPROXY", "--redirect-dns"], resolvConf: "nameserver 10.96.0.10\n"))
        let installed = try ns.exec(["nft", "list", "tables"]).stdout
        #expect(installed.contains("istio-proxy-nat") && installed.contains("istio-proxy-mangle"))
        try backend.clean()
        #expect(try ns.exec(["nft", "-a", "list", "ruleset"]).stdout == foreign)
        try backend.clean()
        #expect(try ns.exec(["nft", "-a", "list", "ruleset"]).stdout == foreign)
    }

    @Test("a new plan deletes our tables it no longer uses")
    func staleTables() throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let backend = try Self.backend(ns)
        try backend.apply(try Conformance.plan(Conformance.seedArgs + ["-m", "TPROXY"]))
        #expect(try ns.exec(["nft", "list", "tables"]).stdout.contains("istio-proxy-mangle"))
        let redirect = try Conformance.plan(Conformance.seedArgs)
        try backend.apply(redirect)
        #expect(try ns.exec(["nft", "list", "tables"]).stdout == "table inet istio-proxy-nat\n")
        try expectNoDrift(backend, redirect)
    }

    @Test("100 re-applies alternating two configs: each one writes, and leaves exactly that config")
    func reapply() throws {
        guard try Kernel.require() else { return }
        let a = try Conformance.plan(
            Conformance.seedArgs + ["--redirect-dns", "-m", "TPROXY"], resolvConf: "nameserver 10.96.0.10\n")
        let b = try Conformance.plan(["-i", "10.0.0.0/8", "-b", "8080", "-q", "81", "-o", "9999", "-c", "eth9"])
        // What each config looks like installed once into an empty namespace.
        var reference: [[String]] = []
        for plan in [a, b] {
            let fresh = try Kernel.Namespace()
            defer { fresh.delete() }
            try Self.backend(fresh).apply(plan)
            reference.append(try fresh.ruleset())
        }
        #expect(reference[0] != reference[1])
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let backend = try Self.backend(ns)
        let clock = ContinuousClock()
        var applying = Duration.zero
        for round in 0..<100 {
            let which = round % 2
            let plan = which == 0 ? a : b
            var wrote = false
            applying += try clock.measure { wrote = try backend.apply(plan) }
            #expect(wrote, "round \(round): apply of a changed config sent nothing")
            let state = try ns.ruleset()
            #expect(state == reference[which], "round \(round):\n\(Kernel.diff(reference[which], state))")
            // The same config again converges without writing.
            if round % 10 == 0 { #expect(try backend.apply(plan) == false, "round \(round): re-apply wrote") }
        }
        try expectNoDrift(backend, b)
        print("meshnl: 100 alternating applies took \(applying) (\(applying / 100) each)")
    }

    @Test("8 concurrent applies on one namespace all succeed and leave the plan")
    func concurrent() throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let plan = try Conformance.plan(Conformance.seedArgs)
        let path = ns.path
        let failures = Failures()
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            do {
                try NftablesBackend(transport: try NetfilterSocket(networkNamespace: path)).apply(plan)
            } catch {
                failures.add("\(error)")
            }
        }
        #expect(failures.all == [])
        let reference = try Kernel.Namespace()
        defer { reference.delete() }
        try Self.backend(reference).apply(plan)
        #expect(try ns.ruleset() == reference.ruleset())
        try expectNoDrift(Self.backend(ns), plan)
    }

    @Test("verify: no difference after apply; names a rule deleted with nft, an added rule, a missing table")
    func verify() throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let backend = try Self.backend(ns)
        let plan = try Conformance.plan(Conformance.seedArgs)
        try backend.apply(plan)
        try expectNoDrift(backend, plan)

        // Delete `meta skuid 1337 counter return` from istio-output by handle.
        let listing = try ns.exec(["nft", "-a", "list", "chain", "inet", "istio-proxy-nat", "istio-output"]).stdout
        let line = listing.split(separator: "\n").first {
            $0.contains("meta skuid 1337 counter") && $0.contains("return")
        }
        let handle = line.flatMap { $0.split(separator: " ").last.map(String.init) }
        guard let handle else {
            Issue.record("rule not found in\n\(listing)")
            return
        }
        try ns.exec(["nft", "delete", "rule", "inet", "istio-proxy-nat", "istio-output", "handle", handle])
        #expect(
            try backend.verify(plan) == [
                "missing rule: add rule inet istio-proxy-nat istio-output meta skuid 1337 counter return"
            ])

        try backend.apply(plan)
        try ns.exec(["nft", "add", "rule", "inet", "istio-proxy-nat", "istio-redirect", "tcp", "dport", "1", "drop"])
        let extra = try backend.verify(plan)
        #expect(extra.count == 1)
        #expect(extra.first?.hasPrefix("unexpected rule in inet istio-proxy-nat istio-redirect (position 2): ") == true)

        try ns.exec(["nft", "add", "table", "inet", "istio-proxy-raw"])
        try ns.exec(["nft", "delete", "table", "inet", "istio-proxy-nat"])
        #expect(
            try backend.verify(plan) == ["unexpected table inet istio-proxy-raw", "missing table inet istio-proxy-nat"])
    }

    @Test("a 3,000-range port set (6,001 elements over 6 messages) loads in one transaction")
    func largeSet() throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let ranges = (0..<3000).map { RuleCatalog.ports(1 + $0 * 20, 10 + $0 * 20) }
        let rule = Rule([.destinationPorts(.tcp, ranges, negated: true)], .return)
        let plan = Plan(
            operations: [Operation(table: .nat, chain: .own(.output), rule: rule, families: .both)], ipv6: true,
            tproxyRoute: nil)
        let batch = try NftBatchBuilder.applyBatch(plan)
        #expect(WireMessage.split(batch.bytes).filter { $0.type == WireMessage.newSetElem }.count == 6)
        let backend = try Self.backend(ns)
        try backend.apply(plan)
        try expectNoDrift(backend, plan)
        let listing = try ns.exec(["nft", "list", "chain", "inet", "istio-proxy-nat", "istio-output"]).stdout
        #expect(listing.contains("tcp dport != { 1-10, 21-30, 41-50,"))
        #expect(listing.contains("59981-59990 } counter packets 0 bytes 0 return"))
    }

    @Test("opening a socket in another namespace returns the thread to its own")
    func namespaceRestore() throws {
        guard try Kernel.require() else { return }
        let ns = try Kernel.Namespace()
        defer { ns.delete() }
        let before = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/thread-self/ns/net")
        _ = try NetfilterSocket(networkNamespace: ns.path)
        let after = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/thread-self/ns/net")
        #expect(before == after)
        do {
            _ = try NetfilterSocket(networkNamespace: "/nonexistent/netns")
            Issue.record("opened a socket in a namespace that does not exist")
        } catch {
            #expect(error.code == .system && error.errno == ENOENT)
            #expect(error.description == "open /nonexistent/netns: No such file or directory (ENOENT)")
        }
    }
}

/// `verify` reports no difference (the differences are the failure message).
func expectNoDrift(
    _ backend: NftablesBackend, _ plan: Plan, sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let drift = try backend.verify(plan)
    #expect(drift == [], "\(drift.joined(separator: "\n"))", sourceLocation: sourceLocation)
}

/// Thread-safe list of failure messages.
final class Failures: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [String] = []
    func add(_ message: String) { lock.withLock { list.append(message) } }
    var all: [String] { lock.withLock { list } }
}
