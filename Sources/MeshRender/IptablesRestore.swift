import MeshModel

/// Plan → `iptables-restore` payload for one family (pure).
///
/// Per table (alphabetical, tables without rules omitted): `*table`, a `:CHAIN - [0:0]`
/// declaration for each of our chains in first-use order (which, with `--noflush`, also
/// empties it: its contents are replaced atomically), the operations verbatim (`-A`, or
/// `-I CHAIN N` where Istio inserts), then `COMMIT`.
public enum IptablesRestore {
    /// The payload for `family`; empty when that family gets no rules.
    public static func render(_ plan: Plan, family: Family) -> String {
        render(plan.operations(for: family))
    }

    /// The payload for a list of operations (all of one family).
    public static func render(_ operations: [Operation]) -> String {
        var out: [UInt8] = []
        for table in Table.allCases {
            let ops = operations.filter { $0.table == table }
            guard !ops.isEmpty else { continue }
            out.append(contentsOf: "*\(table.rawValue)\n".utf8)
            for chain in ownChains(ops) {
                out.append(contentsOf: ":\(chain.iptablesName) - [0:0]\n".utf8)
            }
            for op in ops { append(op, to: &out) }
            out.append(contentsOf: "COMMIT\n".utf8)
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The lines of `op`, each with its newline, onto `out`. A long CIDR list is rendered
    /// once around its first address and every address spliced in (10,000 lines cost about
    /// as much as copying them).
    static func append(_ op: Operation, to out: inout [UInt8]) {
        guard case .append = op.placement,
            let index = op.rule.matches.firstIndex(where: {
                if case .destinations = $0 { return true } else { return false }
            }), case .destinations(let list) = op.rule.matches[index], let first = list.first
        else {
            for line in lines(op) {
                out.append(contentsOf: line.utf8)
                out.append(UInt8(ascii: "\n"))
            }
            return
        }
        var template = op.rule
        template.matches[index] = .destination(first, negated: false)
        let text = Array((["-A \(op.chain.iptablesName)"] + arguments(template)).joined(separator: " ").utf8)
        let marker = Array(" -d \(first) ".utf8)
        guard let range = text.firstRange(of: marker) else {
            out.append(contentsOf: text)
            out.append(UInt8(ascii: "\n"))
            return
        }
        let head = text[..<range.lowerBound] + Array(" -d ".utf8)
        let tail = [UInt8(ascii: " ")] + text[range.upperBound...] + [UInt8(ascii: "\n")]
        out.reserveCapacity(out.count + list.count * (head.count + 19 + tail.count))
        for cidr in list {
            out.append(contentsOf: head)
            cidr.append(to: &out)
            out.append(contentsOf: tail)
        }
    }

    /// Our chains used by `operations` (as the chain written to, or as a jump target), in
    /// first-use order.
    public static func ownChains(_ operations: [Operation]) -> [OwnChain] {
        var seen: [OwnChain] = []
        for op in operations {
            if case .own(let chain) = op.chain, !seen.contains(chain) { seen.append(chain) }
            if case .jump(let target) = op.rule.target, !seen.contains(target) { seen.append(target) }
        }
        return seen
    }

    /// `-A CHAIN ARGS` or `-I CHAIN N ARGS`; a rule with a list (`Rule.expanded`) gives one
    /// line per item (inserted ones in reverse, so they end up in list order).
    public static func lines(_ op: Operation) -> [String] {
        switch op.placement {
        case .append:
            return op.rule.expanded.map { (["-A \(op.chain.iptablesName)"] + arguments($0)).joined(separator: " ") }
        case .insert(let position):
            return op.rule.expanded.reversed().map {
                (["-I \(op.chain.iptablesName) \(position)"] + arguments($0)).joined(separator: " ")
            }
        }
    }

    /// The rule's match and target arguments, as `iptables` takes them after the chain name.
    /// Core fields first (`-i -o -s -d -p`), then port matches, then other extension matches
    /// in plan order, then the target: the order `iptables-save` prints them back.
    public static func arguments(_ rule: Rule) -> [String] {
        var core: [String] = []
        var ports: [String] = []
        var extensions: [String] = []
        var proto: L4Protocol?
        func not(_ negated: Bool) -> [String] { negated ? ["!"] : [] }
        for match in rule.matches {
            switch match {
            case .inInterface(let name): core += ["-i", name.name]
            case .outInterface(let name): core += ["-o", name.name]
            case .source(let cidr, let negated): core += not(negated) + ["-s", cidr.description]
            case .destination(let cidr, let negated): core += not(negated) + ["-d", cidr.description]
            case .destinations(let list): core += ["-d", list.map(\.description).joined(separator: ",")]
            case .l4proto(let p, let scope):
                if scope == .all { proto = p }
            case .destinationPorts(let p, let ranges, let negated):
                proto = p
                if ranges.count == 1 {
                    ports += not(negated) + ["--dport", ranges[0].iptablesText]
                } else {
                    ports +=
                        ["-m", "multiport"] + not(negated) + [
                            "--dports", ranges.map(\.iptablesText).joined(separator: ","),
                        ]
                }
            case .sourcePort(let p, let range):
                proto = p
                ports += ["--sport", range.iptablesText]
            case .owner(let owner, let negated):
                switch owner {
                case .uid(let id): extensions += ["-m", "owner"] + not(negated) + ["--uid-owner", id.description]
                case .gid(let id): extensions += ["-m", "owner"] + not(negated) + ["--gid-owner", id.description]
                }
            case .mark(let mark, let negated):
                extensions += ["-m", "mark"] + not(negated) + ["--mark", mark.description]
            case .connmark(let mark): extensions += ["-m", "connmark", "--mark", mark.description]
            case .conntrackState(let states):
                extensions += [
                    "-m", "conntrack", "--ctstate", states.map { $0.rawValue.uppercased() }.joined(separator: ","),
                ]
            }
        }
        if let proto { core += ["-p", proto.rawValue] }
        return core + ports + extensions + target(rule.target)
    }

    static func target(_ target: Target) -> [String] {
        switch target {
        case .jump(let chain): ["-j", chain.iptablesName]
        case .return: ["-j", "RETURN"]
        case .accept: ["-j", "ACCEPT"]
        case .drop: ["-j", "DROP"]
        case .redirect(let port): ["-j", "REDIRECT", "--to-ports", port.description]
        case .tproxy(let port, let mark):
            ["-j", "TPROXY", "--tproxy-mark", "\(mark)/0xffffffff", "--on-port", port.description]
        case .setMark(let mark): ["-j", "MARK", "--set-mark", mark.description]
        case .saveMarkToConnmark: ["-j", "CONNMARK", "--save-mark"]
        case .restoreMarkFromConnmark: ["-j", "CONNMARK", "--restore-mark"]
        case .conntrackZone(let zone): ["-j", "CT", "--zone", String(zone)]
        }
    }
}
