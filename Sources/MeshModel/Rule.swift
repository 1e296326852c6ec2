/// The netfilter tables meshinit writes. iptables names them as is; the nft backend uses one
/// `inet` table per kind (`istio-proxy-nat`, …).
public enum Table: String, Sendable, Hashable, CaseIterable, Comparable {
    // Declaration order is iptables-restore order (alphabetical, as Istio writes them).
    case filter
    case mangle
    case nat
    case raw

    public static func < (a: Table, b: Table) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }

    /// The nft table meshinit owns for this kind.
    public var nftTableName: String { "istio-proxy-\(rawValue)" }
}

/// Netfilter hooks that have built-in chains.
public enum Hook: String, Sendable, Hashable, CaseIterable {
    case prerouting
    case input
    case forward
    case output
    case postrouting
}

/// Meshinit's own (non-builtin) chains.
public enum OwnChain: String, Sendable, Hashable, CaseIterable {
    case inbound = "ISTIO_INBOUND"
    case redirect = "ISTIO_REDIRECT"
    case inRedirect = "ISTIO_IN_REDIRECT"
    case output = "ISTIO_OUTPUT"
    case outputDNS = "ISTIO_OUTPUT_DNS"
    case divert = "ISTIO_DIVERT"
    case tproxy = "ISTIO_TPROXY"
    case drop = "ISTIO_DROP"

    /// iptables name, e.g. `ISTIO_IN_REDIRECT`.
    public var iptablesName: String { rawValue }
    /// nft name, e.g. `istio-in-redirect`.
    public var nftName: String {
        String(rawValue.lowercased().map { $0 == "_" ? "-" : $0 })
    }
}

/// A chain: a built-in hook chain or one of ours.
public enum Chain: Sendable, Hashable, CustomStringConvertible {
    case builtin(Hook)
    case own(OwnChain)

    public var iptablesName: String {
        switch self {
        case .builtin(let hook): hook.rawValue.uppercased()
        case .own(let own): own.iptablesName
        }
    }

    public var nftName: String {
        switch self {
        case .builtin(let hook): hook.rawValue
        case .own(let own): own.nftName
        }
    }

    public var description: String { iptablesName }

    /// `OUTPUT`, `ISTIO_OUTPUT`; nil for a chain that is neither built in nor ours.
    public init?(iptablesName name: String) {
        if let own = OwnChain(rawValue: name) {
            self = .own(own)
        } else if let hook = Hook.allCases.first(where: { $0.rawValue.uppercased() == name }) {
            self = .builtin(hook)
        } else {
            return nil
        }
    }

    /// `output`, `istio-output`; nil for a chain that is neither a base chain nor ours.
    public init?(nftName name: String) {
        if let hook = Hook(rawValue: name) {
            self = .builtin(hook)
        } else if let own = OwnChain.allCases.first(where: { $0.nftName == name }) {
            self = .own(own)
        } else {
            return nil
        }
    }
}

/// Whose packets: a socket owner match.
public enum Owner: Sendable, Hashable {
    case uid(NumericID)
    case gid(NumericID)
}

/// Which renderers see a match. Istio's two backends differ in a few places (the nft
/// drop-invalid rule carries `meta l4proto tcp`, the iptables one has no `-p tcp`); the
/// difference is recorded here instead of planning twice.
public enum BackendScope: Sendable, Hashable {
    case all
    case nftOnly
}

/// One match of a rule. The order of matches in a rule is the nft expression order; the
/// iptables renderer prints protocol-port matches before other extension matches, as
/// `iptables-save` does for Istio's rules.
public enum Match: Sendable, Hashable {
    case inInterface(InterfaceName)
    case outInterface(InterfaceName)
    case source(CIDR, negated: Bool)
    case destination(CIDR, negated: Bool)
    /// Any of these destinations (one family). The planner uses it for long lists: nft
    /// matches it with one set lookup; iptables expands it into one rule per CIDR, in order.
    case destinations([CIDR])
    /// An explicit protocol match (`-p tcp`, `meta l4proto tcp`).
    case l4proto(L4Protocol, scope: BackendScope)
    /// Destination ports of `proto`: one range, or several — an anonymous set in nft; in
    /// iptables `multiport` when negated (none of them), else one rule per range, in order.
    case destinationPorts(L4Protocol, [PortRange], negated: Bool)
    case sourcePort(L4Protocol, PortRange)
    case owner(Owner, negated: Bool)
    case mark(Mark, negated: Bool)
    case connmark(Mark)
    case conntrackState([ConntrackState])

    /// The address family this match pins the rule to, if any.
    public var family: Family? {
        switch self {
        case .source(let c, _), .destination(let c, _): c.family
        case .destinations(let list): list.first?.family
        default: nil
        }
    }
}

/// What a rule does with a matching packet.
public enum Target: Sendable, Hashable {
    case jump(OwnChain)
    case `return`
    case accept
    case drop
    /// nat REDIRECT to a local port.
    case redirect(toPort: Port)
    /// mangle TPROXY to a local port, setting `mark` (full mask) on the packet.
    case tproxy(toPort: Port, mark: Mark)
    /// `MARK --set-mark` / `meta mark set`.
    case setMark(Mark)
    /// `CONNMARK --save-mark` / `ct mark set mark`.
    case saveMarkToConnmark
    /// `CONNMARK --restore-mark` / `meta mark set ct mark`.
    case restoreMarkFromConnmark
    /// raw `CT --zone` / `ct zone set`.
    case conntrackZone(UInt16)
}

/// A rule: matches in order and a target.
public struct Rule: Sendable, Hashable {
    public var matches: [Match]
    public var target: Target

    public init(_ matches: [Match], _ target: Target) {
        self.matches = matches
        self.target = target
    }

    /// The family the rule's addresses pin it to (nil: family-neutral).
    public var family: Family? { matches.lazy.compactMap(\.family).first }

    /// The rule as single-valued rules, in order: a `.destinations` list or a non-negated
    /// port list becomes one rule per item (what iptables holds for it; nft keeps one rule
    /// with a set). A rule has at most one such list.
    public var expanded: [Rule] {
        for (i, match) in matches.enumerated() {
            switch match {
            case .destinations(let list):
                return list.map { cidr in
                    var copy = self
                    copy.matches[i] = .destination(cidr, negated: false)
                    return copy
                }
            case .destinationPorts(let p, let ranges, false) where ranges.count > 1:
                return ranges.map { range in
                    var copy = self
                    copy.matches[i] = .destinationPorts(p, [range], negated: false)
                    return copy
                }
            default: continue
            }
        }
        return [self]
    }
}

/// How a rule enters its chain: appended, or inserted at a 1-based position (iptables `-I
/// CHAIN N`; nft `insert … index N-1`, an append when the chain is shorter).
public enum Placement: Sendable, Hashable {
    case append
    case insert(position: Int)
}

/// One planned operation: a rule placed into a chain of a table, for a set of families.
///
/// `families` says which iptables families receive the rule. The nft backend renders every
/// operation exactly once into the `inet` table (Istio's nft backend does the same: a
/// family-neutral rule matches both families even when IPv6 capture is off).
public struct Operation: Sendable, Hashable {
    public var table: Table
    public var chain: Chain
    public var placement: Placement
    public var rule: Rule
    public var families: FamilySet
    /// The settings the rule comes from (empty: a rule every plan has). `explain` names the
    /// flag, variable or annotation behind each one.
    public var origin: [CaptureSetting]

    public init(
        table: Table, chain: Chain, placement: Placement = .append, rule: Rule, families: FamilySet,
        origin: [CaptureSetting] = []
    ) {
        self.table = table
        self.chain = chain
        self.placement = placement
        self.rule = rule
        self.families = families
        self.origin = origin
    }
}

/// The whole plan: operations in generation order, plus the routing side effects of TPROXY.
/// A pure value; every renderer and applier works from it.
public struct Plan: Sendable, Hashable {
    public var operations: [Operation]
    /// Whether IPv6 rules are installed at all (iptables writes nothing to ip6tables when off).
    public var ipv6: Bool
    /// TPROXY policy routing to set up (`ip rule fwmark M lookup T`, `local default dev lo table T`).
    public var tproxyRoute: TproxyRoute?

    public init(operations: [Operation], ipv6: Bool, tproxyRoute: TproxyRoute?) {
        self.operations = operations
        self.ipv6 = ipv6
        self.tproxyRoute = tproxyRoute
    }

    /// Families that receive rules.
    public var families: [Family] { ipv6 ? [.ipv4, .ipv6] : [.ipv4] }

    /// Operations that the iptables backend applies for `family`, in order.
    public func operations(for family: Family) -> [Operation] {
        guard family == .ipv4 || ipv6 else { return [] }
        return operations.filter { $0.families.contains(family) }
    }
}

/// Policy routing that TPROXY needs.
public struct TproxyRoute: Sendable, Hashable {
    public var mark: Mark
    public var table: UInt32
    public init(mark: Mark, table: UInt32) {
        self.mark = mark
        self.table = table
    }
}

/// Final chain contents after applying placements in order, as a kernel would hold them in
/// chains that start empty. `insertSemantics` picks iptables (1-based, position must exist
/// or equal count+1) or nft/knftables (an index past the end becomes an append).
public enum ChainLayout {
    /// Materializes `operations` into (table, chain) → rules in final order, keeping the
    /// first-use order of (table, chain) keys.
    public static func materialize(_ operations: [Operation]) -> [(table: Table, chain: Chain, rules: [Rule])] {
        materializeOperations(operations).map { ($0.table, $0.chain, $0.operations.map(\.rule)) }
    }

    /// The same, keeping each rule's operation (its origin and families).
    public static func materializeOperations(_ operations: [Operation]) -> [(
        table: Table, chain: Chain, operations: [Operation]
    )] {
        // Parallel arrays, not a Dictionary keyed by TableChain: a plan has a handful of chains,
        // and the first Hashable-keyed Dictionary of a type costs the Swift runtime a scan of
        // every conformance record on the install path (issue 20).
        var order: [TableChain] = []
        var contents: [[Operation]] = []
        for op in operations {
            let key = TableChain(table: op.table, chain: op.chain)
            let slot: Int
            if let found = order.firstIndex(of: key) {
                slot = found
            } else {
                slot = order.count
                order.append(key)
                contents.append([])
            }
            switch op.placement {
            case .append:
                contents[slot].append(op)
            case .insert(let position):
                let index = position - 1
                if index >= contents[slot].count {
                    contents[slot].append(op)
                } else {
                    contents[slot].insert(op, at: max(0, index))
                }
            }
        }
        return zip(order, contents).map { ($0.table, $0.chain, $1) }
    }
}

/// A (table, chain) pair.
public struct TableChain: Sendable, Hashable {
    public var table: Table
    public var chain: Chain
    public init(table: Table, chain: Chain) {
        self.table = table
        self.chain = chain
    }
}
