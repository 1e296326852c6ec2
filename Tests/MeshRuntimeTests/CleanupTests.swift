import MeshConfig
import MeshModel
import MeshRuntime
import MeshSystem
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Cleanup without a kernel")
struct CleanupTests {
    @Test("nothing installed: an empty plan, said so; nothing removed, nothing run but the reads")
    func nothing() throws {
        let machine = FakeMachine(binaries: legacyBinaries)
        let context = try machine.context()
        let plan = try planCleanup(context)
        #expect(plan.isEmpty)
        #expect(plan.text.hasSuffix("# nothing of ours installed\n"))
        // IPv6 is unsupported on this machine: skipped, and said why.
        #expect(plan.families == [.ipv4])
        #expect(plan.notes.count == 1)
        #expect(try cleanEverything(context).isEmpty)
        #expect(machine.runner.restores.isEmpty)
        #expect(machine.netfilter.committed.isEmpty)
        #expect(machine.locks == 1, "cleanEverything must hold the namespace lock")
    }

    @Test("legacy iptables holding ours: planned from the dump, removed with one restore, idempotent plan text")
    func legacy() throws {
        let machine = FakeMachine(binaries: legacyBinaries)
        machine.legacyLoaded = true
        machine.runner.dumps["iptables-legacy-save"] = legacyDumpWithOurs
        let context = try machine.context()
        let plan = try planCleanup(context)
        #expect(!plan.isEmpty)
        #expect(plan.text.contains("# ipv4: /sbin/iptables-legacy-restore --noflush\n"), "\(plan.text)")
        #expect(plan.text.contains("-X ISTIO_OUTPUT"), "\(plan.text)")
        #expect(machine.runner.restores.isEmpty, "planning changed something")
        let removed = try executeCleanup(plan, context)
        #expect(!removed.isEmpty)
        #expect(machine.runner.restores.count == 1)
        #expect(machine.runner.restores.first?.stdin == plan.iptables.first?.payload)
    }

    @Test("a failing restore stops the cleanup with iptables' exit status")
    func failing() throws {
        let machine = FakeMachine(binaries: legacyBinaries)
        machine.legacyLoaded = true
        machine.runner.dumps["iptables-legacy-save"] = legacyDumpWithOurs
        machine.runner.failRestores()
        let context = try machine.context()
        #expect {
            try cleanEverything(context)
        } throws: { error in
            (error as? CommandFailure)?.status == .failure
        }
    }
}
