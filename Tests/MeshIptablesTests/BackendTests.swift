import MeshConfig
import MeshIptables
import MeshModel
import MeshPlanner
import MeshRender
import MeshSystem
import MeshTestKit
import Testing

let allBinaries: Set<String> = [
    "iptables-nft-save", "iptables-nft-restore", "ip6tables-nft-save", "ip6tables-nft-restore",
    "iptables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy-save", "ip6tables-legacy-restore",
    "iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore",
]

func seedPlan(ipv6: Bool = true) -> Plan {
    var c = CaptureConfig()
    c.inboundPorts = .all(except: [15090, 15021, 15020].map { PortRange(Port($0)!) })
    c.outboundInclude = .all
    c.ipv6 = ipv6
    return Planner.plan(c)
}

/// What iptables-save prints after our plan was restored into an empty namespace, built from
/// the canonical renderer (the kernel tests prove the canonical renderer right).
func dumpAfterInstall(_ plan: Plan, family: Family) -> String {
    var out = ""
    for layout in ChainLayout.materialize(plan.operations(for: family)).map({ $0.table }).uniqued() {
        out += "*\(layout.rawValue)\n"
        let ops = plan.operations(for: family).filter { $0.table == layout }
        for chain in IptablesRestore.ownChains(ops) { out += ":\(chain.iptablesName) - [0:0]\n" }
        for entry in ChainLayout.materialize(ops) {
            for rule in entry.rules { out += "-A \(entry.chain.iptablesName) \(SaveCanonical.spec(rule))\n" }
        }
        out += "COMMIT\n"
    }
    return out
}

extension Array where Element: Hashable {
    func uniqued() -> [Element] {
        var seen = Set<Element>()
        return filter { seen.insert($0).inserted }
    }
}

func backend(
    _ runner: FakeRunner, forced: IptablesVariant? = nil, legacyLoaded: Bool = false, childTimeout: Int64? = nil
) -> IptablesBackend {
    IptablesBackend(
        runner: runner, forced: forced, childTimeoutMilliseconds: childTimeout,
        legacyTablesLoaded: { _ in legacyLoaded },
        log: { _ in })
}

@Suite struct DetectionTests {
    @Test func prefersNftWhenLegacyHasNoTables() throws {
        let tools = try backend(FakeRunner(binaries: allBinaries)).tools(for: .ipv4)
        #expect(tools.variant == .nft)
        #expect(tools.restore == "/sbin/iptables-nft-restore")
    }

    @Test func prefersLegacyWhenItsTablesExist() throws {
        let tools = try backend(FakeRunner(binaries: allBinaries), legacyLoaded: true).tools(for: .ipv6)
        #expect(tools.variant == .legacy)
        #expect(tools.save == "/sbin/ip6tables-legacy-save")
        #expect(tools.waits)
    }

    @Test func fallsBackToPlainIptables() throws {
        let tools = try backend(FakeRunner(binaries: ["iptables-save", "iptables-restore"])).tools(for: .ipv4)
        #expect(tools.variant == .plain)
    }

    @Test func forcedVariantMustExist() {
        let runner = FakeRunner(binaries: ["iptables-nft-save", "iptables-nft-restore"])
        #expect(throws: IptablesError.self) { try backend(runner, forced: .legacy).tools(for: .ipv4) }
        do {
            _ = try backend(runner, forced: .legacy).tools(for: .ipv4)
        } catch {
            #expect(error.kind == .unavailable)
            #expect(error.message.contains("iptables-legacy-restore"))
        }
    }

    @Test func missingBinaryIsUnavailable() {
        do {
            _ = try backend(FakeRunner(binaries: [])).tools(for: .ipv4)
            Issue.record("expected an error")
        } catch {
            #expect(error.kind == .unavailable)
            #expect(error.message.contains("iptables-restore not found"))
        }
    }
}

@Suite struct ApplyTests {
    @Test func cleanNamespaceGetsOneRestorePerFamily() throws {
        let runner = FakeRunner(binaries: allBinaries)
        let changes = try backend(runner).apply(seedPlan())
        #expect(runner.restores.count == 2)
        #expect(runner.restores.allSatisfy { $0.args == ["--noflush"] })
        #expect(runner.restores[0].stdin.contains(":ISTIO_OUTPUT - [0:0]"))
        #expect(runner.restores[0].stdin.contains("-A OUTPUT -j ISTIO_OUTPUT"))
        #expect(runner.restores[1].stdin.contains("-s ::6/128"))
        #expect(changes.count == 2)
    }

    @Test func secondRunWritesNothing() throws {
        let plan = seedPlan()
        let runner = FakeRunner(binaries: allBinaries)
        runner.dumps["iptables-nft-save"] = dumpAfterInstall(plan, family: .ipv4)
        runner.dumps["ip6tables-nft-save"] = dumpAfterInstall(plan, family: .ipv6)
        let changes = try backend(runner).apply(plan)
        #expect(changes.isEmpty)
        #expect(runner.restores.isEmpty)
        #expect(try backend(runner).verify(plan).isEmpty)
    }

    @Test func legacyWaitsForTheLock() throws {
        let runner = FakeRunner(binaries: allBinaries)
        _ = try backend(runner, forced: .legacy).apply(seedPlan(ipv6: false))
        #expect(runner.restores.first?.args == ["--noflush", "--wait=30"])
    }

    @Test func ipv6FailureRollsIPv4Back() {
        let plan = seedPlan()
        let runner = FakeRunner(binaries: allBinaries)
        let before = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -o eth9 -j ACCEPT\nCOMMIT\n"
        runner.dumps["iptables-nft-save"] = before
        runner.restoreResult = { name, _, _ in
            name.hasPrefix("ip6tables")
                ? CommandResult(status: 1, stderr: "ip6tables-restore: line 7 failed\n") : CommandResult(status: 0)
        }
        do {
            _ = try backend(runner).apply(plan)
            Issue.record("expected a failure")
        } catch {
            #expect(error.kind == .failed)
            #expect(error.message.contains("line 7"))
        }
        // v4 restore, v6 restore (failed), then the v4 rollback: a full restore of the old nat.
        let restores = runner.restores
        #expect(restores.count == 3)
        #expect(restores[2].path.hasSuffix("iptables-nft-restore"))
        #expect(restores[2].args.isEmpty)
        #expect(restores[2].stdin == before)
    }

    /// Another writer between our save and our restore: the restore fails on a `-D` of a rule
    /// that is gone; the fresh dump shows the change, so one retry from it.
    @Test func concurrentChangeIsRetriedOnceFromAFreshDump() throws {
        let plan = seedPlan(ipv6: false)
        let runner = FakeRunner(binaries: allBinaries)
        // Our jump twice (two installs raced before meshinit locked): reconcile deletes both.
        let head = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n"
        runner.dumps["iptables-nft-save"] = head + "-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n"
        var attempts = 0
        runner.restoreResult = { _, _, stdin in
            attempts += 1
            guard attempts == 1 else { return CommandResult(status: 0) }
            // The other writer removed one of the two jumps before our restore ran.
            runner.dumps["iptables-nft-save"] = head + "-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n"
            let lines = stdin.split(separator: "\n")
            let line = (lines.firstIndex { $0.hasPrefix("-D ") } ?? 0) + 1
            return CommandResult(
                status: 1,
                stderr:
                    "iptables-nft-restore: line \(line) failed: Bad rule (does a matching rule exist in that chain?).\n"
            )
        }
        _ = try backend(runner).apply(plan)
        #expect(runner.restores.count == 2)
        #expect(runner.calls.filter { $0.path.hasSuffix("-save") }.count == 2, "the retry starts from a fresh dump")
        #expect(runner.restores[0].stdin.components("-D OUTPUT -j ISTIO_OUTPUT") == 2)
        // Built from the fresh dump: OUTPUT already holds exactly our one jump.
        #expect(runner.restores[1].stdin.components("-D OUTPUT -j ISTIO_OUTPUT") == 0)
    }

    @Test func concurrentChangeTwiceIsAnError() {
        let runner = FakeRunner(binaries: allBinaries)
        var generation = 0
        runner.restoreResult = { _, _, _ in
            generation += 1
            runner.dumps["iptables-nft-save"] =
                "*nat\n:OUTPUT ACCEPT [0:0]\n:KUBE-\(generation) - [0:0]\n-A OUTPUT -j KUBE-\(generation)\nCOMMIT\n"
            return CommandResult(status: 1, stderr: "iptables-nft-restore: line 2 failed: Chain already exists.\n")
        }
        #expect(throws: IptablesError.self) { try backend(runner).apply(seedPlan(ipv6: false)) }
        #expect(runner.restores.filter { $0.args == ["--noflush"] }.count == 2)
    }

    /// A payload the kernel refuses with words a concurrent change also gives ("does not
    /// exist", "No chain/target/match") is not retried when nothing changed: the real error
    /// comes back at once, from the one restore.
    @Test func payloadErrorsLookingConcurrentAreNotRetriedWhenNothingChanged() {
        let plan = seedPlan(ipv6: false)
        for stderr in [
            "iptables-nft-restore: line 9 failed: Chain 'ISTIO_X' does not exist\n",
            "iptables-nft-restore: line 9 failed: No chain/target/match by that name.\n",
            "iptables-nft-restore: line 9 failed: Bad rule (does a matching rule exist in that chain?).\n",
        ] {
            let runner = FakeRunner(binaries: allBinaries)
            runner.dumps["iptables-nft-save"] = "*nat\n:OUTPUT ACCEPT [5:300]\n-A OUTPUT -o eth9 -j ACCEPT\nCOMMIT\n"
            var saves = 0
            runner.saveResult = { _ in
                saves += 1
                // Counters move between dumps: that is not a change.
                return CommandResult(
                    status: 0, stdout: "*nat\n:OUTPUT ACCEPT [\(saves):300]\n-A OUTPUT -o eth9 -j ACCEPT\nCOMMIT\n")
            }
            runner.restoreResult = { _, args, _ in
                args.isEmpty ? CommandResult(status: 0) : CommandResult(status: 1, stderr: stderr)
            }
            do {
                _ = try backend(runner).apply(plan)
                Issue.record("expected a failure for \(stderr)")
            } catch {
                #expect(error.message.contains("line 9"), "\(error.message)")
            }
            #expect(runner.restores.filter { $0.args == ["--noflush"] }.count == 1, "\(stderr)")
        }
    }

    /// iptables-restore commits table by table: a failure in raw (after nat and mangle were
    /// committed) must put nat and mangle back too, and the family already changed.
    @Test func partialCommitOfAFamilyIsRolledBack() throws {
        var c = CaptureConfig()
        c.inboundPorts = .all(except: [])
        c.outboundInclude = .all
        c.interceptionMode = .tproxy
        c.dns = .all
        c.ipv6 = true
        let plan = Planner.plan(c)
        let runner = FakeRunner(binaries: allBinaries)
        let natBefore = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -o eth9 -j ACCEPT\nCOMMIT\n"
        runner.dumps["iptables-nft-save"] = natBefore
        runner.dumps["ip6tables-nft-save"] = natBefore
        // IPv6: its payload fails in its last table (raw), on the line the kernel names.
        runner.restoreResult = { name, args, stdin in
            guard name.hasPrefix("ip6tables"), !args.isEmpty else { return CommandResult(status: 0) }
            let lines = stdin.split(separator: "\n", omittingEmptySubsequences: false)
            let raw = lines.firstIndex(of: "*raw")! + 2
            return CommandResult(status: 1, stderr: "ip6tables-restore: line \(raw) failed\n")
        }
        #expect(throws: IptablesError.self) { try backend(runner).apply(plan) }
        let restores = runner.restores
        let v6Payload = restores[1].stdin
        #expect(v6Payload.contains("*mangle") && v6Payload.contains("*nat") && v6Payload.contains("*raw"))
        // Rolled back: IPv6 nat from its dump (it existed), IPv6 mangle emptied of ours (it did
        // not exist: a fresh dump, then a --noflush restore of what removes ours), then IPv4
        // (all its tables). IPv6 raw was not committed: left alone.
        let rollbacks = restores.dropFirst(2)
        #expect(
            rollbacks.contains {
                $0.path.hasSuffix("ip6tables-nft-restore") && $0.args.isEmpty && $0.stdin == natBefore
            })
        #expect(
            rollbacks.contains { $0.path.hasSuffix("iptables-nft-restore") && $0.args.isEmpty && $0.stdin == natBefore }
        )
        #expect(!rollbacks.contains { $0.path.hasSuffix("ip6tables-nft-restore") && $0.stdin.contains("*raw") })
        #expect(rollbacks.first?.path.hasSuffix("ip6tables-nft-restore") == true, "the failing family first")
    }

    /// A child killed at its deadline may have committed any of its tables: all are put back.
    @Test func timedOutRestoreRollsBackEveryTableOfItsPayload() {
        let plan = seedPlan(ipv6: false)
        let runner = FakeRunner(binaries: allBinaries)
        let before = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
        runner.dumps["iptables-nft-save"] = before
        runner.restoreResult = { path, args, _ throws(CommandError) in
            if args.isEmpty { return CommandResult(status: 0) }
            throw .timedOut("/sbin/\(path)", milliseconds: 30_000)
        }
        do {
            _ = try backend(runner).apply(plan)
            Issue.record("expected a failure")
        } catch {
            #expect(error.kind == .timedOut)
            #expect(error.message.contains("iptables-nft-restore did not finish within 30s: killed"))
            #expect(error.message.contains("--child-timeout"))
            #expect(!error.message.contains("\n"))
        }
        #expect(runner.restores.count == 2, "the killed restore, then the rollback; no retry")
        #expect(runner.restores[1].args.isEmpty && runner.restores[1].stdin == before)
    }

    /// A family whose binary is missing after another family was changed: that one is put back.
    @Test func missingIPv6BinaryRollsIPv4Back() {
        let runner = FakeRunner(binaries: ["iptables-nft-save", "iptables-nft-restore"])
        let before = "*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
        runner.dumps["iptables-nft-save"] = before
        do {
            _ = try backend(runner).apply(seedPlan())
            Issue.record("expected a failure")
        } catch {
            #expect(error.kind == .unavailable)
        }
        #expect(runner.restores.count == 2)
        #expect(runner.restores[1].args.isEmpty && runner.restores[1].stdin == before)
    }

    /// A dump the runner had to cut is refused, never taken for the whole state.
    @Test func cutDumpIsRefused() {
        let runner = FakeRunner(binaries: allBinaries)
        runner.saveResult = { _ in CommandResult(status: 0, stdout: "*nat\n", stdoutDropped: 5) }
        do {
            _ = try backend(runner).verify(seedPlan(ipv6: false))
            Issue.record("expected a failure")
        } catch {
            #expect(error.message.contains("partial dump"), "\(error.message)")
        }
    }

    @Test func xtablesLockWaitStaysUnderTheChildDeadline() throws {
        for (timeout, wait) in [
            (30_000, "--wait=25"), (10_000, "--wait=5"), (3_000, "--wait=1"), (120_000, "--wait=30"),
        ] {
            let runner = FakeRunner(binaries: allBinaries)
            _ = try backend(runner, forced: .legacy, childTimeout: Int64(timeout)).apply(seedPlan(ipv6: false))
            #expect(runner.restores.first?.args == ["--noflush", wait], "\(timeout)")
        }
    }

    @Test func otherFailuresAreNotRetried() {
        let runner = FakeRunner(binaries: allBinaries)
        runner.restoreResult = { _, _, _ in
            CommandResult(
                status: 2,
                stderr:
                    "iptables-restore v1.8.9 (nf_tables): Couldn't load target `REDIRECT':No such file or directory\n")
        }
        #expect(throws: IptablesError.self) { try backend(runner).apply(seedPlan(ipv6: false)) }
        #expect(runner.restores.count == 1)
    }

    @Test func failuresAreClassified() {
        let cases: [(String, IptablesError.Kind, String)] = [
            ("Another app is currently holding the xtables lock. Stopped waiting after 30s.\n", .lockBusy, "lock"),
            (
                "iptables-restore v1.8.9 (legacy): can't initialize iptables table `nat': Permission denied (you must be root)\n",
                .permission, "CAP_NET_ADMIN"
            ),
            ("iptables-restore: Couldn't load target `TPROXY':No such file or directory\n", .unavailable, "xt_TPROXY"),
            ("iptables-restore: Couldn't load match `owner':No such file or directory\n", .unavailable, "xt_owner"),
            ("iptables-restore: line 3 failed\n", .failed, "line 3"),
        ]
        for (stderr, kind, mention) in cases {
            let runner = FakeRunner(binaries: allBinaries)
            runner.restoreResult = { _, _, _ in CommandResult(status: 1, stderr: stderr) }
            do {
                _ = try backend(runner).apply(seedPlan(ipv6: false))
                Issue.record("expected a failure for \(stderr)")
            } catch {
                #expect(error.kind == kind, "\(stderr)")
                #expect(error.message.contains(mention), "\(error.message)")
                #expect(!error.message.contains("\n"))
            }
        }
    }
}

@Suite struct ReconcileTests {
    let foreign = """
        *nat
        :PREROUTING ACCEPT [0:0]
        :OUTPUT ACCEPT [0:0]
        :KUBE-SERVICES - [0:0]
        :ISTIO_OLD - [0:0]
        -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
        -A PREROUTING -i eth7 -j RETURN
        -A PREROUTING -p tcp -j ISTIO_OLD
        -A OUTPUT -j KUBE-SERVICES
        -A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j RETURN
        -A ISTIO_OLD -p tcp -j RETURN
        COMMIT
        *filter
        :INPUT ACCEPT [0:0]
        -A INPUT -i eth7 -j RETURN
        COMMIT

        """

    @Test func cleanupRemovesOnlyOurs() {
        let changes = reconcile(live: parseSave(foreign), desired: [])
        #expect(changes.map(\.table) == ["nat"])
        let block = changes[0].block
        #expect(block.contains("-D PREROUTING -p tcp -j ISTIO_OLD"))
        // With ISTIO state in nat, the interface RETURN is Istio's exclusion shape.
        #expect(block.contains("-D PREROUTING -i eth7 -j RETURN"))
        #expect(block.contains("-X ISTIO_OLD"))
        #expect(!block.contains("KUBE"))
        // A table without any ISTIO state is not touched, even with the same shape of rule.
        #expect(!block.contains("INPUT"))
    }

    /// What a dry run prints: read from the live state, nothing written.
    @Test func cleanupPlanOnlyReads() throws {
        let plan = seedPlan()
        let runner = FakeRunner(binaries: allBinaries)
        runner.dumps["iptables-nft-save"] = dumpAfterInstall(plan, family: .ipv4)
        runner.dumps["ip6tables-nft-save"] = dumpAfterInstall(plan, family: .ipv6)
        let steps = try backend(runner).cleanupPlan()
        #expect(steps.map(\.family) == [.ipv4, .ipv6])
        #expect(steps[0].payload.contains("-D OUTPUT -j ISTIO_OUTPUT"))
        #expect(steps[0].payload.contains("-X ISTIO_OUTPUT"))
        #expect(runner.restores.isEmpty)
        // IPv6 left out (the kernel has none): ip6tables is not even asked.
        let v4Only = try backend(runner).cleanupPlan(families: [.ipv4])
        #expect(v4Only.map(\.family) == [.ipv4])
        let calls = runner.calls.count
        _ = try backend(runner).clean(families: [.ipv4])
        #expect(!runner.calls[calls...].contains { $0.path.contains("ip6tables") })
    }

    @Test func cleanupOfCleanStateIsEmpty() {
        let clean = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -i eth7 -j RETURN\nCOMMIT\n"
        #expect(reconcile(live: parseSave(clean), desired: []).isEmpty)
    }

    @Test func installKeepsForeignJumpsAndReplacesStaleChains() {
        let plan = seedPlan(ipv6: false)
        let changes = reconcile(live: parseSave(foreign), desired: plan.operations(for: .ipv4))
        let block = changes.first { $0.table == "nat" }?.block ?? ""
        #expect(block.contains(":ISTIO_OUTPUT - [0:0]"))
        #expect(block.contains("-X ISTIO_OLD"))
        #expect(block.contains("-A PREROUTING -p tcp -j ISTIO_INBOUND"))
        #expect(!block.contains("KUBE-SERVICES"))
    }

    @Test func driftNamesTheMissingRule() {
        let plan = seedPlan(ipv6: false)
        var dump = dumpAfterInstall(plan, family: .ipv4)
        dump = dump.replacingOccurrences(of: "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n", with: "")
        let lines = drift(live: parseSave(dump), desired: plan.operations(for: .ipv4), family: .ipv4)
        #expect(lines == ["missing rule in ipv4 nat: -A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"])
    }

    @Test func tokenizerKeepsQuotedWords() {
        let rules = parseSave(foreign)[0].rules
        #expect(rules[0].tokens == ["-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"])
        #expect(rules[0].spec == "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES")
    }
}

extension String {
    func components(_ target: String) -> Int {
        var count = 0
        var rest = self[...]
        while let range = rest.firstRange(of: target) {
            count += 1
            rest = rest[range.upperBound...]
        }
        return count
    }

    func replacingOccurrences(of target: String, with replacement: String) -> String {
        var out = ""
        var rest = self[...]
        while let range = rest.firstRange(of: target) {
            out += rest[..<range.lowerBound] + replacement
            rest = rest[range.upperBound...]
        }
        return out + rest
    }
}
