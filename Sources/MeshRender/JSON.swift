import MeshModel

/// Plan → JSON (pure, no Foundation): every operation with its typed matches and target,
/// plus the iptables and nft spellings, for tools and humans.
///
/// ```json
/// {"ipv6":false,"tproxyRoute":null,"operations":[{"table":"nat","chain":"ISTIO_INBOUND",
///  "placement":"append","families":["ipv4"],"matches":[{"l4proto":"tcp"},...],
///  "target":{"return":true},"iptables":"-p tcp --dport 15008 -j RETURN","nft":"..."}]}
/// ```
public enum PlanJSON {
    public static func render(_ plan: Plan) -> String {
        let route: JSONValue =
            plan.tproxyRoute.map { .object([("mark", .int($0.mark.value)), ("table", .int($0.table))]) } ?? .null
        let value = JSONValue.object([
            ("ipv6", .bool(plan.ipv6)),
            ("tproxyRoute", route),
            ("operations", .array(plan.operations.map(operation))),
        ])
        return value.serialized + "\n"
    }

    static func operation(_ op: Operation) -> JSONValue {
        let placement: JSONValue =
            switch op.placement {
            case .append: .string("append")
            case .insert(let position): .object([("insert", .int(position))])
            }
        return .object([
            ("table", .string(op.table.rawValue)),
            ("chain", .string(op.chain.iptablesName)),
            ("placement", placement),
            ("families", .array(op.families.families.map { .string($0.rawValue) })),
            ("matches", .array(op.rule.matches.map(match))),
            ("target", target(op.rule.target)),
            ("iptables", .string(IptablesRestore.arguments(op.rule).joined(separator: " "))),
            ("nft", .string(NftScript.statement(op.rule))),
        ])
    }

    static func match(_ m: Match) -> JSONValue {
        func neg(_ negated: Bool) -> [(String, JSONValue)] { negated ? [("negated", .bool(true))] : [] }
        switch m {
        case .inInterface(let n): return .object([("inInterface", .string(n.name))])
        case .outInterface(let n): return .object([("outInterface", .string(n.name))])
        case .source(let c, let n): return .object([("source", .string(c.description))] + neg(n))
        case .destination(let c, let n): return .object([("destination", .string(c.description))] + neg(n))
        case .destinations(let list): return .object([("destinations", .array(list.map { .string($0.description) }))])
        case .l4proto(let p, let scope):
            return .object([("l4proto", .string(p.rawValue))] + (scope == .nftOnly ? [("nftOnly", .bool(true))] : []))
        case .destinationPorts(let p, let ranges, let n):
            return .object(
                [
                    ("destinationPorts", .array(ranges.map { .string($0.description) })),
                    ("protocol", .string(p.rawValue)),
                ]
                    + neg(n))
        case .sourcePort(let p, let r):
            return .object([("sourcePort", .string(r.description)), ("protocol", .string(p.rawValue))])
        case .owner(.uid(let id), let n): return .object([("uidOwner", .int(id.value))] + neg(n))
        case .owner(.gid(let id), let n): return .object([("gidOwner", .int(id.value))] + neg(n))
        case .mark(let mark, let n): return .object([("mark", .int(mark.value))] + neg(n))
        case .connmark(let mark): return .object([("connmark", .int(mark.value))])
        case .conntrackState(let states):
            return .object([("conntrackState", .array(states.map { .string($0.rawValue) }))])
        }
    }

    static func target(_ t: Target) -> JSONValue {
        switch t {
        case .jump(let chain): .object([("jump", .string(chain.iptablesName))])
        case .return: .object([("return", .bool(true))])
        case .accept: .object([("accept", .bool(true))])
        case .drop: .object([("drop", .bool(true))])
        case .redirect(let port): .object([("redirectToPort", .int(port.value))])
        case .tproxy(let port, let mark): .object([("tproxyToPort", .int(port.value)), ("mark", .int(mark.value))])
        case .setMark(let mark): .object([("setMark", .int(mark.value))])
        case .saveMarkToConnmark: .object([("saveMarkToConnmark", .bool(true))])
        case .restoreMarkFromConnmark: .object([("restoreMarkFromConnmark", .bool(true))])
        case .conntrackZone(let zone): .object([("conntrackZone", .int(zone))])
        }
    }
}
