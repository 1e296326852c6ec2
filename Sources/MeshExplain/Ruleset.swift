import MeshModel
import MeshRender

/// Which backend's view of a plan: iptables holds one rule set per family (IPv6 only when
/// the plan has IPv6) with lists expanded into one rule per item; nft holds one `inet`
/// table per kind that both families traverse (Istio's layout: a family-neutral rule
/// matches IPv6 too, even with IPv6 capture off).
public enum Backend: String, Sendable, Hashable, CaseIterable {
    case iptables
    case nft
}

/// One rule as explain evaluates it, with its spellings and where it comes from.
public struct RuleEntry: Sendable {
    /// The matches; nil for a live rule explain does not understand.
    public var matches: [Match]?
    /// The target; nil for a live rule whose target explain does not follow.
    public var target: Target?
    public var origin: [CaptureSetting]
    /// `-A CHAIN ARGS`, as iptables-restore takes it; nil where it is one line per item
    /// of a list (the line of the item that matched is shown).
    public var iptables: String?
    /// `add rule inet TABLE CHAIN STATEMENT` (or, for a live rule, the text it was read as).
    public var nft: String

    public init(matches: [Match]?, target: Target?, origin: [CaptureSetting], iptables: String?, nft: String) {
        self.matches = matches
        self.target = target
        self.origin = origin
        self.iptables = iptables
        self.nft = nft
    }

    /// A rule of a plan, in `chain` of `table`.
    public init(_ rule: Rule, origin: [CaptureSetting], table: Table, chain: Chain, nft: String? = nil) {
        let hasList = rule.expanded.count > 1
        self.init(
            matches: rule.matches, target: rule.target, origin: origin,
            iptables: hasList ? nil : RuleEntry.iptablesLine(rule, chain: chain),
            nft: nft ?? RuleEntry.nftLine(rule, table: table, chain: chain))
    }

    public static func iptablesLine(_ rule: Rule, chain: Chain) -> String {
        (["-A \(chain.iptablesName)"] + IptablesRestore.arguments(rule)).joined(separator: " ")
    }

    public static func nftLine(_ rule: Rule, table: Table, chain: Chain) -> String {
        "add rule inet \(table.nftTableName) \(chain.nftName) \(NftScript.statement(rule))"
    }

    /// The whole rule, when explain understands all of it.
    public var rule: Rule? {
        guard let matches, let target else { return nil }
        return Rule(matches, target)
    }
}

/// The rules a packet can meet, per family, table and chain: a plan as one backend holds
/// it, or what a kernel holds (read back by the CLI).
public struct Ruleset: Sendable {
    public var backend: Backend
    /// Every rule; a rule's index here is its id (steps and chains refer to rules by id).
    public private(set) var entries: [RuleEntry] = []
    /// Family → (table, chain) → rule ids in order. A family without an entry holds no rules.
    public private(set) var chains: [Family: [TableChain: [Int]]] = [:]
    /// The policy routing TPROXY installs beside the rules (a packet with its mark is routed
    /// to `lo`), nil without; for the families of `tproxyRouteFamilies` only (the plan's:
    /// IPv6 only with IPv6 on).
    public var tproxyRoute: TproxyRoute?
    public var tproxyRouteFamilies: [Family] = []
    /// The address meshinit adds to lo beside the rules (`::6`, when the plan has IPv6):
    /// IPv6's source selection takes it for a packet routed through lo.
    public var loopbackSource: IPAddress?

    public init(backend: Backend, chains: [Family: [TableChain: [RuleEntry]]]) {
        self.backend = backend
        // The same rules for several families (nft's inet tables) are stored once.
        var shared: [TableChain: [Int]] = [:]
        for family in Family.allCases {
            guard let view = chains[family] else { continue }
            var ids: [TableChain: [Int]] = [:]
            for (key, rules) in view {
                if family == .ipv6, let v4 = chains[.ipv4]?[key], v4.map(\.nft) == rules.map(\.nft),
                    v4.map(\.iptables) == rules.map(\.iptables), let existing = shared[key]
                {
                    ids[key] = existing
                    continue
                }
                ids[key] = rules.map { rule in
                    entries.append(rule)
                    return entries.count - 1
                }
                if family == .ipv4 { shared[key] = ids[key] }
            }
            self.chains[family] = ids
        }
    }

    /// `plan` as `backend` installs it.
    public init(plan: Plan, backend: Backend) {
        var chains: [Family: [TableChain: [RuleEntry]]] = [:]
        switch backend {
        case .iptables:
            for family in plan.families {
                var view: [TableChain: [RuleEntry]] = [:]
                for (table, chain, operations) in ChainLayout.materializeOperations(plan.operations(for: family)) {
                    var entries: [RuleEntry] = []
                    for op in operations {
                        let nft = RuleEntry.nftLine(op.rule, table: table, chain: chain)
                        for rule in op.rule.expanded {
                            entries.append(RuleEntry(rule, origin: op.origin, table: table, chain: chain, nft: nft))
                        }
                    }
                    view[TableChain(table: table, chain: chain)] = entries
                }
                chains[family] = view
            }
        case .nft:
            var view: [TableChain: [RuleEntry]] = [:]
            for (table, chain, operations) in ChainLayout.materializeOperations(plan.operations)
            where NftLayout.tableOrder.contains(table) {
                view[TableChain(table: table, chain: chain)] = operations.map {
                    RuleEntry($0.rule, origin: $0.origin, table: table, chain: chain)
                }
            }
            for family in Family.allCases where !view.isEmpty { chains[family] = view }
        }
        self.init(backend: backend, chains: chains)
        tproxyRoute = plan.tproxyRoute
        tproxyRouteFamilies = plan.families
        loopbackSource = plan.families.contains(.ipv6) ? IPAddress(ipv6: 0, 6) : nil
    }
}
