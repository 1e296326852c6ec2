/// How a plan maps onto nftables (Istio's `istio-proxy-*` layout): which `inet` tables, base
/// chains with which hook type and priority, which chains hold which rules. Shared by the nft
/// script renderer and the netlink builder, so both install the same thing.

/// Hook type and priority of Istio's nft base chains.
public struct NftBaseChain: Sendable, Hashable {
    public var type: String
    public var priority: Int32

    public init?(table: Table, hook: Hook) {
        switch (table, hook) {
        case (.nat, .prerouting), (.nat, .output): (type, priority) = ("nat", -100)
        case (.mangle, .prerouting): (type, priority) = ("filter", -150)
        case (.mangle, .output): (type, priority) = ("route", -150)
        case (.raw, .prerouting), (.raw, .output): (type, priority) = ("filter", -300)
        default: return nil
        }
    }
}

/// The nft view of a plan: per table, the chains to create and their final rules. Shared by
/// the nft script renderer and the netlink builder so both install the same thing.
public enum NftLayout {
    /// Istio's nft table order (also the tables meshinit owns: `inet istio-proxy-nat`, …).
    public static let tableOrder: [Table] = [.nat, .mangle, .raw]

    public struct ChainContents: Sendable, Hashable {
        public var chain: Chain
        public var rules: [Rule]
    }

    public struct TableContents: Sendable, Hashable {
        public var table: Table
        /// Base chains first (prerouting, output), then our chains in declaration order.
        public var chains: [ChainContents]
    }

    /// Tables with at least one rule, in Istio's order.
    public static func tables(of plan: Plan) -> [TableContents] {
        let materialized = ChainLayout.materialize(plan.operations)
        var result: [TableContents] = []
        for table in tableOrder {
            let inTable = materialized.filter { $0.table == table && !$0.rules.isEmpty }
            guard !inTable.isEmpty else { continue }
            var chains: [ChainContents] = []
            var wanted: [Chain] = inTable.map(\.chain)
            // Jump targets must exist even if (never in Istio's plans) they hold no rule.
            for entry in inTable {
                for rule in entry.rules {
                    if case .jump(let target) = rule.target, !wanted.contains(.own(target)) {
                        wanted.append(.own(target))
                    }
                }
            }
            let order: [Chain] = Hook.allCases.map(Chain.builtin) + OwnChain.allCases.map(Chain.own)
            for chain in order where wanted.contains(chain) {
                chains.append(ChainContents(chain: chain, rules: inTable.first { $0.chain == chain }?.rules ?? []))
            }
            result.append(TableContents(table: table, chains: chains))
        }
        return result
    }
}
