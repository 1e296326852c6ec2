import MeshExplain
import MeshIptables
import MeshModel
import MeshNetlink
import MeshRender

/// What the packets a rule matches are, in an operator's terms: captured (outbound, inbound,
/// DNS), let go by one of the bypasses (the proxy's own uid/gid, an excluded port, CIDR or
/// interface, Istio's fixed loopback rules), or the plumbing between them (jumps, marks).
public enum CapturePath: String, Sendable, Hashable, CaseIterable {
    case outboundCaptured = "outbound-captured"
    case inboundCaptured = "inbound-captured"
    case dnsCaptured = "dns-captured"
    case bypassProxyOwner = "bypass-proxy-owner"
    case bypassPort = "bypass-port"
    case bypassCIDR = "bypass-cidr"
    case bypassInterface = "bypass-interface"
    case bypassLoopback = "bypass-loopback"
    case bypassOther = "bypass-other"
    /// Jumps between our chains, marks, conntrack zones, drop-invalid.
    case plumbing
    /// A live rule explain does not understand (or one of ours the flags do not plan).
    case unattributed

    /// `outbound captured`, `bypass: excluded port`, …
    public var title: String {
        switch self {
        case .outboundCaptured: "outbound captured"
        case .inboundCaptured: "inbound captured"
        case .dnsCaptured: "DNS captured"
        case .bypassProxyOwner: "bypass: the proxy's own uid/gid"
        case .bypassPort: "bypass: excluded port"
        case .bypassCIDR: "bypass: excluded CIDR"
        case .bypassInterface: "bypass: excluded interface"
        case .bypassLoopback: "bypass: loopback (Istio's fixed rules)"
        case .bypassOther: "bypass: other"
        case .plumbing: "between chains (jumps, marks)"
        case .unattributed: "unattributed"
        }
    }

    /// The path of a rule in `chain`: by the settings behind it where it has any, else by
    /// what it matches (a live rule the flags do not plan).
    public static func of(_ entry: RuleEntry, chain: Chain) -> CapturePath {
        guard let target = entry.target, let matches = entry.matches else { return .unattributed }
        let origin = Set(entry.origin)
        switch target {
        case .redirect, .tproxy:
            if origin.contains(.dns) { return .dnsCaptured }
            if chain == .own(.redirect) || origin.contains(.proxyPort) { return .outboundCaptured }
            if chain == .own(.inRedirect) || chain == .own(.tproxy) || origin.contains(.inboundCapturePort) {
                return .inboundCaptured
            }
            return matches.contains { if case .destinationPorts = $0 { true } else { false } }
                ? .dnsCaptured : .unattributed
        case .return, .accept:
            return bypass(origin: origin, matches: matches)
        case .jump, .drop, .setMark, .saveMarkToConnmark, .restoreMarkFromConnmark, .conntrackZone:
            return .plumbing
        }
    }

    static func bypass(origin: Set<CaptureSetting>, matches: [Match]) -> CapturePath {
        var negatedOwner = false
        var owner = false
        var loopback = false
        var interface = false
        var port = false
        var cidr = false
        for match in matches {
            switch match {
            case .owner(_, let negated):
                owner = true
                negatedOwner = negatedOwner || negated
            case .outInterface(let name), .inInterface(let name):
                if name == .loopback { loopback = true } else { interface = true }
            case .source(let network, _):
                if network.address.isLoopback { loopback = true }
            case .destinationPorts: port = true
            case .destination, .destinations: cidr = true
            default: break
            }
        }
        if origin.contains(.excludeInterfaces) || (origin.isEmpty && interface) { return .bypassInterface }
        if origin.contains(.outboundExcludePorts) || origin.contains(.inboundExcludePorts)
            || origin.contains(.inboundTunnelPort)
        {
            return .bypassPort
        }
        if owner && !negatedOwner { return .bypassProxyOwner }
        if loopback || negatedOwner { return .bypassLoopback }
        if origin.contains(.outboundExclude) || origin.contains(.outboundInclude) || origin.contains(.ipv4LoopbackCIDR)
            || cidr
        {
            return .bypassCIDR
        }
        if port { return .bypassPort }
        return .bypassOther
    }
}

/// One rule of ours as installed, with its counters and what it comes from.
public struct CountedRule: Sendable {
    public var backend: Backend
    /// `ipv4`, `ipv6`; `inet` for nft (one table both families traverse).
    public var family: String
    public var table: Table
    public var chain: Chain
    /// The rule as its backend spells it (`-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports
    /// 15001`, `add rule inet istio-proxy-nat istio-redirect …`).
    public var rule: String
    /// Its nft spelling (the same as `rule` for nft).
    public var nft: String
    public var path: CapturePath
    /// The flags, variables, config keys or annotations behind it, as explain names them
    /// (empty: one of Istio's fixed rules, or unattributed).
    public var from: [String]
    /// Whether it is a rule of the plan for the flags given (false: a rule of ours they do
    /// not plan, shown by what it matches, unattributed).
    public var attributed: Bool
    public var packets: UInt64
    public var bytes: UInt64

    /// The chain as its backend names it (`ISTIO_REDIRECT`, `istio-redirect`).
    public var chainName: String { backend == .nft ? chain.nftName : chain.iptablesName }
    /// The table as its backend names it (`nat`, `istio-proxy-nat`).
    public var tableName: String { backend == .nft ? table.nftTableName : table.rawValue }
}

/// The kernel's rules as explain reads them back (a `Ruleset`, each rule attributed as
/// explain attributes it), joined with the counters of the same rules. The two come from two
/// reads of the kernel: each rule is checked to be the same in both, and nil is returned
/// where they are not (the rules changed in between: read again).
public enum CounterJoin {
    /// iptables: `dumps` are `*-save -c` dumps, per family.
    public static func iptables(_ report: Report, dumps: [Family: [SavedTable]], plan: Plan) -> [CountedRule]? {
        let ruleset = report.ruleset
        var out: [CountedRule] = []
        for family in Family.allCases {
            guard let tables = dumps[family] else { continue }
            var planned: Set<String> = []
            for (table, chain, operations) in ChainLayout.materializeOperations(plan.operations(for: family)) {
                for op in operations {
                    for rule in op.rule.expanded {
                        planned.insert("\(table.rawValue) -A \(chain.iptablesName) \(SaveCanonical.spec(rule))")
                    }
                }
            }
            for dump in tables {
                guard let table = Table(rawValue: dump.name) else { continue }
                for name in dump.chains {
                    guard let chain = Chain(iptablesName: name) else { continue }
                    let ids = ruleset.chains[family]?[TableChain(table: table, chain: chain)] ?? []
                    let saved = dump.rules(in: name)
                    guard ids.count == saved.count else { return nil }
                    for (id, rule) in zip(ids, saved) {
                        let entry = ruleset.entries[id]
                        let line = "-A \(name) \(rule.spec)"
                        guard entry.iptables == line || entry.rule.map(SaveCanonical.spec) == rule.spec else {
                            return nil
                        }
                        guard ours(entry, chain: chain) else { continue }
                        out.append(
                            CountedRule(
                                backend: .iptables, family: family.rawValue, table: table, chain: chain, rule: line,
                                nft: entry.nft, path: CapturePath.of(entry, chain: chain), from: report.from(entry),
                                attributed: planned.contains("\(table.rawValue) \(line)"),
                                packets: rule.counter?.packets ?? 0, bytes: rule.counter?.bytes ?? 0))
                    }
                }
            }
        }
        return out
    }

    /// nft: `chains` as `NftablesBackend.liveRules(comparedWith: plan)` reads them.
    public static func nft(_ report: Report, chains: [LiveChain], plan: Plan) -> [CountedRule]? {
        let ruleset = report.ruleset
        let planned = ChainLayout.materializeOperations(plan.operations)
        var out: [CountedRule] = []
        for live in chains where live.runs {
            guard let table = Table.allCases.first(where: { $0.nftTableName == live.table }),
                let chain = Chain(nftName: live.chain)
            else { continue }
            let key = TableChain(table: table, chain: chain)
            let ids = ruleset.chains[.ipv4]?[key] ?? []
            guard ids.count == live.rules.count else { return nil }
            let operations = planned.first { $0.table == table && $0.chain == chain }?.operations ?? []
            for (id, rule) in zip(ids, live.rules) {
                let entry = ruleset.entries[id]
                let expected =
                    rule.planned.flatMap { i in
                        i < operations.count ? RuleEntry.nftLine(operations[i].rule, table: table, chain: chain) : nil
                    } ?? rule.text
                guard entry.nft == expected else { return nil }
                out.append(
                    CountedRule(
                        backend: .nft, family: "inet", table: table, chain: chain, rule: entry.nft, nft: entry.nft,
                        path: CapturePath.of(entry, chain: chain), from: report.from(entry),
                        attributed: rule.planned != nil, packets: rule.counter?.packets ?? 0,
                        bytes: rule.counter?.bytes ?? 0))
            }
        }
        return out
    }

    /// Whether a rule read from iptables is ours: in one of our chains, a jump to one, or a
    /// rule of the plan; other rules of the built-in chains (kube-proxy's, a CNI's) are not.
    static func ours(_ entry: RuleEntry, chain: Chain) -> Bool {
        if case .own = chain { return true }
        if case .jump? = entry.target { return true }
        return !entry.origin.isEmpty
    }
}
