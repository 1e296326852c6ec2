import MeshConfig
import MeshIptables
import MeshModel
import MeshNetlink
import MeshPlanner
import MeshRender
import MeshRuntime
import MeshSystem
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// What a legacy `iptables-save` prints where our rules are installed (enough for ownership:
/// an `ISTIO_*` chain and the jump into it).
let legacyDumpWithOurs = """
    *nat
    :PREROUTING ACCEPT [0:0]
    :INPUT ACCEPT [0:0]
    :OUTPUT ACCEPT [0:0]
    :POSTROUTING ACCEPT [0:0]
    :ISTIO_OUTPUT - [0:0]
    -A OUTPUT -p tcp -j ISTIO_OUTPUT
    -A ISTIO_OUTPUT -j RETURN
    COMMIT

    """

@Suite("Install without a kernel")
struct InstallTests {
    @Test("netlink: one batch, the builder's, into a kernel holding nothing; the namespace is not entered")
    func netlink() throws {
        let machine = FakeMachine()
        let context = try machine.context()
        let plan = Planner.plan(context.settings.capture)
        let used = try applyPlan(plan, context, backend: .forced(.netlink))
        #expect(used == .netlink)
        #expect(machine.netfilter.committed == [try NftBatchBuilder.applyBatch(plan, existing: [])])
        #expect(machine.runner.calls.isEmpty, "the netlink backend ran a process")
        #expect(machine.entered.isEmpty)
    }

    @Test(
        "auto with iptables present and no rules anywhere: iptables-restore, once per family; nothing sent to nf_tables"
    )
    func autoIptables() throws {
        let machine = FakeMachine(binaries: nftBinaries)
        machine.ipv6 = .available
        let context = try machine.context([.ipv6: "on"])
        let plan = Planner.plan(context.settings.capture)
        let used = try applyPlan(plan, context, backend: context.backendRequest)
        #expect(used == .iptables)
        #expect(machine.netfilter.committed.isEmpty)
        #expect(
            machine.runner.restores.map(\.path) == ["/sbin/iptables-nft-restore", "/sbin/ip6tables-nft-restore"])
        let v4 = try #require(machine.runner.restores.first).stdin
        #expect(v4.contains("-A ISTIO_OUTPUT"), "\(v4)")
        // IPv6 in the plan: ::6 is added to lo through rtnetlink.
        #expect(machine.routes.changes.count == 1)
    }

    @Test("--native-nftables with a TPROXY plan: the batch, then the mark rule and the local route per family")
    func tproxyRoutes() throws {
        let machine = FakeMachine()
        let context = try machine.context([.nativeNftables: "true", .interceptionMode: "TPROXY", .inboundPorts: "*"])
        let plan = Planner.plan(context.settings.capture)
        #expect(context.backendRequest == .forced(.netlink))
        try applyPlan(plan, context, backend: context.backendRequest)
        #expect(machine.netfilter.committed.count == 1)
        // ipv4 only: one ip rule, one route.
        #expect(machine.routes.changes.count == 2)
    }

    @Test("a refused batch is the netlink failure's exit status (EPERM: permission, 77), and no route is touched")
    func refused() throws {
        let machine = FakeMachine()
        machine.netfilter.failures = [NetlinkError(.kernel, "add table inet istio-proxy-nat", errno: EPERM)]
        let context = try machine.context([.interceptionMode: "TPROXY", .inboundPorts: "*"])
        let plan = Planner.plan(context.settings.capture)
        do {
            try applyPlan(plan, context, backend: .forced(.netlink))
            Issue.record("a refused batch installed")
        } catch {
            #expect(error.status == .permission)
            #expect(error.status.cniCode == .permission)
        }
        #expect(machine.routes.changes.isEmpty)
    }

    @Test("auto converges on the backend holding our rules: legacy iptables holds them, so no nft copy is added")
    func converges() throws {
        let machine = FakeMachine(binaries: legacyBinaries)
        machine.legacyLoaded = true
        machine.runner.dumps["iptables-legacy-save"] = legacyDumpWithOurs
        let context = try machine.context()
        let plan = Planner.plan(context.settings.capture)
        let used = try applyPlan(plan, context, backend: .auto(fallback: .netlink))
        #expect(used == .iptables)
        #expect(machine.netfilter.committed.isEmpty)
        #expect(machine.runner.restores.count == 1)
    }
}

@Suite("Resolve entry")
struct ResolveTests {
    @Test("flags: the namespace they name is entered before resolving; .current enters nothing")
    func namedNamespace() throws {
        let machine = FakeMachine()
        let flags: FlagMap<String> = [.networkNamespace: "/run/netns/pod"]
        _ = try machine.boundary.resolve(.flags(flags, environment: [:]), in: .named)
        #expect(machine.entered == ["/run/netns/pod"])
        _ = try machine.boundary.resolve(.flags(flags, environment: [:]), in: .current)
        #expect(machine.entered == ["/run/netns/pod"])
    }

    @Test("a bad value is exit 64, and no namespace is entered for it")
    func badValue() {
        let machine = FakeMachine()
        do {
            _ = try machine.boundary.resolveForCommand(
                .flags([.networkNamespace: "relative/path"], environment: [:]), in: .named)
            Issue.record("a relative namespace path was accepted")
        } catch {
            #expect(error.status == .usage)
        }
        #expect(machine.entered.isEmpty)
    }
}
