import MeshModel

/// Plan → `nft -f` script (pure), with Istio's nftables layout: one `inet` table per kind
/// (`istio-proxy-nat`, `-mangle`, `-raw`, in that order, only tables with rules), each added
/// then flushed, base chains with Istio's hooks and priorities, regular chains that hold
/// rules, and rules in their final order (Istio's `insert … index` placements resolved the
/// way knftables applies them).
public enum NftScript {
    public static func render(_ plan: Plan) -> String {
        var out = ""
        for layout in NftLayout.tables(of: plan) {
            let t = "inet \(layout.table.nftTableName)"
            out += "add table \(t)\nflush table \(t)\n"
            for chain in layout.chains {
                if let spec = baseChainSpec(layout.table, chain.chain) {
                    out += "add chain \(t) \(chain.chain.nftName) { \(spec) ; }\n"
                } else {
                    out += "add chain \(t) \(chain.chain.nftName)\n"
                }
            }
            for chain in layout.chains {
                for rule in chain.rules {
                    out += "add rule \(t) \(chain.chain.nftName) \(statement(rule))\n"
                }
            }
        }
        return out
    }

    /// `type nat hook output priority -100` etc., or nil for a regular chain.
    public static func baseChainSpec(_ table: Table, _ chain: Chain) -> String? {
        guard case .builtin(let hook) = chain, let base = NftBaseChain(table: table, hook: hook) else { return nil }
        return "type \(base.type) hook \(hook.rawValue) priority \(base.priority)"
    }

    /// One rule as nft text: matches in plan order, a counter, the verdict or statement.
    public static func statement(_ rule: Rule) -> String {
        var parts: [String] = []
        let family = rule.family ?? .ipv4
        for match in rule.matches {
            switch match {
            case .inInterface(let name): parts.append("iifname \(interfaceText(name))")
            case .outInterface(let name): parts.append("oifname \(interfaceText(name))")
            case .source(let cidr, let negated):
                parts.append("\(cidr.family.nftKeyword) saddr \(negated ? "!= " : "")\(cidr)")
            case .destination(let cidr, let negated):
                parts.append("\(cidr.family.nftKeyword) daddr \(negated ? "!= " : "")\(cidr)")
            case .destinations(let list):
                let family = list.first?.family ?? .ipv4
                parts.append("\(family.nftKeyword) daddr { \(CIDR.joined(list, separator: ", ")) }")
            case .l4proto(let p, _): parts.append("meta l4proto \(p.rawValue)")
            case .destinationPorts(let p, let ranges, let negated):
                parts.append("\(p.rawValue) dport \(negated ? "!= " : "")\(portsText(ranges))")
            case .sourcePort(let p, let range): parts.append("\(p.rawValue) sport \(range)")
            case .owner(let owner, let negated):
                switch owner {
                case .uid(let id): parts.append("meta skuid \(negated ? "!= " : "")\(id)")
                case .gid(let id): parts.append("meta skgid \(negated ? "!= " : "")\(id)")
                }
            case .mark(let mark, let negated): parts.append("meta mark \(negated ? "!= " : "")\(mark)")
            case .connmark(let mark): parts.append("ct mark \(mark)")
            case .conntrackState(let states): parts.append("ct state \(states.map(\.rawValue).joined(separator: ","))")
            }
        }
        switch rule.target {
        case .jump(let chain): parts.append("counter jump \(chain.nftName)")
        case .return: parts.append("counter return")
        case .accept: parts.append("counter accept")
        case .drop: parts.append("counter drop")
        case .redirect(let port): parts.append("counter redirect to :\(port)")
        case .tproxy(let port, let mark):
            parts.append("tproxy \(family.nftKeyword) to :\(port) meta mark set \(mark) counter accept")
        case .setMark(let mark): parts.append("counter meta mark set \(mark)")
        case .saveMarkToConnmark: parts.append("counter ct mark set mark")
        case .restoreMarkFromConnmark: parts.append("counter meta mark set ct mark")
        case .conntrackZone(let zone): parts.append("counter ct zone set \(zone)")
        }
        return parts.joined(separator: " ")
    }

    /// Interface names are always quoted; iptables' trailing `+` wildcard becomes nft's `*`.
    static func interfaceText(_ name: InterfaceName) -> String {
        if name.name.hasSuffix("+") { return "\"\(name.name.dropLast())*\"" }
        return "\"\(name.name)\""
    }

    static func portsText(_ ranges: [PortRange]) -> String {
        if ranges.count == 1 { return ranges[0].description }
        return "{ " + ranges.map(\.description).joined(separator: ", ") + " }"
    }
}
