import MeshConfig
import MeshModel
import MeshPlanner
import Testing

@Suite("Planner")
struct PlannerTests {
    static func ops(_ plan: Plan, _ table: Table, _ chain: Chain) -> [Operation] {
        plan.operations.filter { $0.table == table && $0.chain == chain }
    }

    @Test("default config: nat only, no IPv6, no TPROXY route")
    func defaults() throws {
        let plan = Planner.plan(CaptureConfig())
        #expect(!plan.ipv6)
        #expect(plan.tproxyRoute == nil)
        #expect(Set(plan.operations.map(\.table)) == [.nat])
        #expect(plan.operations.allSatisfy { $0.families == .ipv4 })
        let first = try #require(plan.operations.first)
        #expect(first.chain == .own(.inbound))
        #expect(first.rule.target == .return)
        #expect(plan.operations(for: .ipv6).isEmpty)
        // No inbound capture: PREROUTING is never touched.
        #expect(Self.ops(plan, .nat, .builtin(.prerouting)).isEmpty)
    }

    @Test("IPv6 on: family-neutral rules go to both, versioned rules to one each")
    func ipv6() {
        var c = CaptureConfig()
        c.ipv6 = true
        let plan = Planner.plan(c)
        #expect(plan.families == [.ipv4, .ipv6])
        let passthrough = plan.operations.filter {
            $0.rule.matches.contains { m in if case .source = m { true } else { false } }
        }
        #expect(passthrough.map(\.families) == [.ipv4, .ipv6])
        #expect(passthrough.map { $0.rule.family } == [.ipv4, .ipv6])
        let jump = plan.operations.first { $0.rule.target == .jump(.output) }
        #expect(jump?.families == .both)
    }

    @Test("TPROXY: route only with inbound ports, marks always")
    func tproxy() {
        var c = CaptureConfig()
        c.interceptionMode = .tproxy
        c.tproxyMark = Mark(77)
        c.tproxyRouteTable = 99
        let empty = Planner.plan(c)
        #expect(empty.tproxyRoute == nil)
        #expect(empty.operations.contains { $0.table == .mangle && $0.rule.target == .saveMarkToConnmark })
        c.inboundPorts = .all(except: [])
        let all = Planner.plan(c)
        #expect(all.tproxyRoute == TproxyRoute(mark: Mark(77), table: 99))
        #expect(all.operations.contains { $0.rule.target == .tproxy(toPort: Port(15006)!, mark: Mark(77)) })
        // The three RETURN inserts on top of mangle ISTIO_INBOUND.
        let inserts = Self.ops(all, .mangle, .own(.inbound)).compactMap { op -> Int? in
            if case .insert(let position) = op.placement { position } else { nil }
        }
        #expect(inserts == [1, 2, 3])
    }

    @Test("-k interfaces are inserted at 1 in nat PREROUTING")
    func kubeVirt() {
        var c = CaptureConfig()
        c.kubeVirtInterfaces = [InterfaceName("eth1")!, InterfaceName("eth2")!]
        c.outboundInclude = .all
        let plan = Planner.plan(c)
        let layout = ChainLayout.materialize(plan.operations(for: .ipv4))
        let prerouting = layout.first { $0.table == .nat && $0.chain == .builtin(.prerouting) }
        #expect(prerouting?.rules.map(\.target) == [.jump(.redirect), .jump(.redirect), .return, .return])
        #expect(
            prerouting?.rules.map(\.matches.first) == [
                .inInterface(InterfaceName("eth2")!), .inInterface(InterfaceName("eth1")!),
                .inInterface(InterfaceName("eth2")!), .inInterface(InterfaceName("eth1")!),
            ])
    }

    @Test("DNS servers of a disabled family are ignored")
    func dnsFamilies() {
        var c = CaptureConfig()
        c.dns = .servers(ipv4: [], ipv6: [IPAddress("fd00::10")!])
        let off = Planner.plan(c)
        #expect(!off.operations.contains { $0.rule.family == .ipv6 })
        #expect(!off.operations.contains { $0.table == .nat && $0.rule.target == .jump(.outputDNS) })
        c.ipv6 = true
        let on = Planner.plan(c)
        let jump = on.operations.first { $0.table == .nat && $0.rule.target == .jump(.outputDNS) }
        #expect(jump?.families == .ipv6)
    }

    @Test("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR replaces 127.0.0.1/32 in v4 rules only")
    func loopbackCIDR() {
        var c = CaptureConfig()
        c.ipv6 = true
        c.ipv4LoopbackCIDR = CIDR("127.0.0.1/8")!
        let plan = Planner.plan(c)
        let destinations = plan.operations.flatMap(\.rule.matches).compactMap { m -> String? in
            if case .destination(let cidr, _) = m { cidr.description } else { nil }
        }
        #expect(destinations.contains("127.0.0.1/8"))
        #expect(destinations.contains("::1/128"))
        #expect(!destinations.contains("127.0.0.1/32"))
    }

    @Test("-i with a loopback CIDR drops the app-to-app lo bypass (Istio's quirk)")
    func loopbackInclude() {
        var c = CaptureConfig()
        let bypass = Rule(
            [.outInterface(.loopback), .owner(.uid(NumericID(1337)!), negated: true)], .return)
        #expect(Planner.plan(c).operations.contains { $0.rule == bypass })
        c.outboundInclude = .only([CIDR("127.0.0.0/8")!])
        #expect(!Planner.plan(c).operations.contains { $0.rule == bypass })
    }

    @Test("owner groups: one RETURN with every group negated, or one RETURN per excluded group")
    func ownerGroups() {
        var c = CaptureConfig()
        let groups = [NumericID(30000)!, NumericID(202)!]
        c.ownerGroups = .only(groups)
        let only = Planner.plan(c).operations.filter {
            $0.rule.matches.contains { m in if case .owner(.gid(let g), true) = m { groups.contains(g) } else { false }
            }
        }
        #expect(only.count == 1)
        #expect(only.first?.rule == Rule(groups.map { .owner(.gid($0), negated: true) }, .return))
        c.ownerGroups = .allExcept(groups)
        let excludeRules = groups.map { Rule([.owner(.gid($0), negated: false)], .return) }
        let except = Planner.plan(c).operations.map(\.rule).filter { excludeRules.contains($0) }
        #expect(except == excludeRules)
    }

    @Test("-o excludes TCP and UDP first in ISTIO_OUTPUT")
    func outboundExcludePorts() {
        var c = CaptureConfig()
        c.outboundExcludePorts = [PortRange(parsing: "3306")!, PortRange(parsing: "8000-8010")!]
        let output = Self.ops(Planner.plan(c), .nat, .own(.output))
        #expect(
            output.prefix(4).map(\.rule.matches) == [
                [.destinationPorts(.tcp, [PortRange(parsing: "3306")!], negated: false)],
                [.destinationPorts(.udp, [PortRange(parsing: "3306")!], negated: false)],
                [.destinationPorts(.tcp, [PortRange(parsing: "8000-8010")!], negated: false)],
                [.destinationPorts(.udp, [PortRange(parsing: "8000-8010")!], negated: false)],
            ])
    }
}
