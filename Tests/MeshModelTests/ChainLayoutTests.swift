import MeshModel
import Testing

@Suite("ChainLayout.materialize")
struct ChainLayoutTests {
    /// A rule told apart by its port.
    static func rule(_ port: Int) -> Rule {
        Rule([.destinationPorts(.tcp, [PortRange(Port(port)!)], negated: false)], .return)
    }

    static func op(
        _ port: Int, chain: OwnChain = .inbound, table: Table = .nat, _ placement: Placement = .append,
        families: FamilySet = .both
    ) -> Operation {
        Operation(table: table, chain: .own(chain), placement: placement, rule: rule(port), families: families)
    }

    static func ports(_ rules: [Rule]) -> [Int] {
        rules.map { rule -> Int in
            guard case .destinationPorts(_, let ranges, _) = rule.matches.first else { return -1 }
            return Int(ranges[0].first.value)
        }
    }

    @Test("appends keep order")
    func appends() {
        let layout = ChainLayout.materialize([Self.op(1), Self.op(2), Self.op(3)])
        #expect(layout.count == 1)
        #expect(layout[0].table == .nat)
        #expect(layout[0].chain == .own(.inbound))
        #expect(Self.ports(layout[0].rules) == [1, 2, 3])
    }

    @Test("insert at 1 goes on top")
    func insertAtOne() {
        let layout = ChainLayout.materialize([Self.op(1), Self.op(2), Self.op(3, .insert(position: 1))])
        #expect(Self.ports(layout[0].rules) == [3, 1, 2])
    }

    @Test("insert in the middle")
    func insertMiddle() {
        let layout = ChainLayout.materialize([Self.op(1), Self.op(2), Self.op(3, .insert(position: 2))])
        #expect(Self.ports(layout[0].rules) == [1, 3, 2])
    }

    @Test("insert past the end becomes an append")
    func insertPastEnd() {
        let layout = ChainLayout.materialize([
            Self.op(1), Self.op(2, .insert(position: 5)), Self.op(3, .insert(position: 3)),
        ])
        #expect(Self.ports(layout[0].rules) == [1, 2, 3])
        let empty = ChainLayout.materialize([Self.op(7, .insert(position: 3))])
        #expect(Self.ports(empty[0].rules) == [7])
    }

    @Test("repeated inserts at 1 end in reverse order")
    func repeatedInsertAtOne() {
        let layout = ChainLayout.materialize([
            Self.op(1), Self.op(2, .insert(position: 1)), Self.op(3, .insert(position: 1)),
        ])
        #expect(Self.ports(layout[0].rules) == [3, 2, 1])
    }

    /// Istio's `InsertVersionedRule` inserts the v4 rule and then the v6 rule at the same
    /// position; in one inet chain (nft) the v6 rule therefore ends up above the v4 one.
    @Test("v4/v6 inserts at the same position end in reverse order")
    func versionedInserts() {
        let layout = ChainLayout.materialize([
            Self.op(1), Self.op(2), Self.op(3),
            Self.op(40, .insert(position: 2), families: .ipv4),
            Self.op(60, .insert(position: 2), families: .ipv6),
        ])
        #expect(Self.ports(layout[0].rules) == [1, 60, 40, 2, 3])
    }

    @Test("chains keep first-use order, tables kept apart")
    func keyOrder() {
        let layout = ChainLayout.materialize([
            Self.op(1, chain: .output),
            Self.op(2, chain: .inbound, table: .mangle),
            Self.op(3, chain: .inbound),
            Self.op(4, chain: .output),
            Self.op(5, chain: .inbound, table: .mangle, .insert(position: 1)),
        ])
        #expect(layout.map(\.table) == [.nat, .mangle, .nat])
        #expect(layout.map(\.chain) == [.own(.output), .own(.inbound), .own(.inbound)])
        #expect(Self.ports(layout[0].rules) == [1, 4])
        #expect(Self.ports(layout[1].rules) == [5, 2])
        #expect(Self.ports(layout[2].rules) == [3])
    }

    @Test("nothing in, nothing out")
    func empty() {
        #expect(ChainLayout.materialize([]).isEmpty)
    }
}

@Suite("Rule IR")
struct RuleIRTests {
    @Test("a rule's family comes from its addresses")
    func ruleFamily() {
        #expect(Rule([], .return).family == nil)
        #expect(Rule([.destination(CIDR("10.0.0.0/8")!, negated: false)], .return).family == .ipv4)
        #expect(Rule([.source(CIDR("::6/128")!, negated: true)], .return).family == .ipv6)
        #expect(Rule([.outInterface(.loopback), .owner(.uid(NumericID(1)!), negated: false)], .return).family == nil)
    }

    @Test("plan operations per family")
    func planFamilies() {
        let v4 = Operation(table: .nat, chain: .builtin(.output), rule: Rule([], .return), families: .ipv4)
        let v6 = Operation(table: .nat, chain: .builtin(.output), rule: Rule([], .accept), families: .ipv6)
        let both = Operation(table: .nat, chain: .builtin(.output), rule: Rule([], .drop), families: .both)
        let on = Plan(operations: [v4, v6, both], ipv6: true, tproxyRoute: nil)
        #expect(on.families == [.ipv4, .ipv6])
        #expect(on.operations(for: .ipv4) == [v4, both])
        #expect(on.operations(for: .ipv6) == [v6, both])
        let off = Plan(operations: [v4, v6, both], ipv6: false, tproxyRoute: nil)
        #expect(off.families == [.ipv4])
        #expect(off.operations(for: .ipv6).isEmpty)
    }

    @Test("chain names")
    func chainNames() {
        #expect(Chain.own(.inRedirect).iptablesName == "ISTIO_IN_REDIRECT")
        #expect(Chain.own(.inRedirect).nftName == "istio-in-redirect")
        #expect(Chain.own(.outputDNS).nftName == "istio-output-dns")
        #expect(Chain.builtin(.prerouting).iptablesName == "PREROUTING")
        #expect(Chain.builtin(.prerouting).nftName == "prerouting")
        #expect(Table.nat.nftTableName == "istio-proxy-nat")
        #expect(Table.allCases.sorted() == [.filter, .mangle, .nat, .raw])
    }
}
