import MeshConfig
import MeshModel

/// A previous plugin's result, converted between the spec's result versions (libcni's
/// convert package does the same for the runtime).
public enum CNIResult {
    /// `previous` (a value of `input`) as a result of `version`: the bytes themselves when the
    /// version is the same; only the `cniVersion` changed between 1.0.0 and 1.1.0 (and 0.3.x
    /// and 0.4.0), which share their shape; rebuilt otherwise (0.4.0 has `version` in each IP,
    /// 1.0.0 not; 0.1.0/0.2.0 have `ip4`/`ip6` instead of `ips`).
    public static func converted(_ previous: JSONSpan, input: [UInt8], to version: String) throws(CNIError) -> String {
        guard case .object(let members) = previous.kind else {
            throw CNIError(.invalidConfig, "prevResult is \(previous.typeName), not a result object")
        }
        let given: String
        switch previous["cniVersion"] {
        case nil: given = version  // before 1.0.0 a result need not say (libcni assumes the config's)
        case let v? where v.isNull: given = version
        case let v?:
            guard let text = v.string else {
                throw CNIError(.invalidConfig, "prevResult cniVersion is \(v.typeName), not a string")
            }
            given = text
        }
        guard let from = CNIVersion.family(given), let to = CNIVersion.family(version) else {
            throw CNIError(
                .incompatibleVersion, "prevResult cniVersion \(brief(given)) cannot be converted to \(version)",
                details: "known result versions: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0")
        }
        if from != .v020 { try checkShape(previous) }
        let bytes = input[previous.range]
        if from == to {
            if let v = previous["cniVersion"], v.string == version { return String(decoding: bytes, as: UTF8.self) }
            // The same shape: only the version changes (or is added), every other byte kept.
            var out = Array(bytes)
            let quotedVersion = Array(JSONValue.string(version).serialized.utf8)
            if let v = previous["cniVersion"] {
                out.replaceSubrange(
                    (v.range.lowerBound - previous.range.lowerBound)..<(v.range.upperBound - previous.range.lowerBound),
                    with: quotedVersion)
            } else {
                out.insert(
                    contentsOf: Array("\"cniVersion\":".utf8) + quotedVersion
                        + (members.isEmpty ? [] : [UInt8(ascii: ",")]), at: 1)
            }
            return String(decoding: out, as: UTF8.self)
        }
        var fields: [(String, JSONValue)] = []
        switch from {
        case .v020:
            fields = try fromV020(previous, to: to)
        case .v040, .v100:
            for (key, value) in members where key != "cniVersion" {
                if key == "ips" {
                    fields.append((key, try ips(value, to: to)))
                } else {
                    fields.append((key, value.value))
                }
            }
        }
        return JSONValue.object([("cniVersion", .string(version))] + fields).serialized
    }

    /// A result's lists are lists of objects, its `dns` an object (what is passed on must be a
    /// result a runtime can read).
    static func checkShape(_ result: JSONSpan) throws(CNIError) {
        for key in ["interfaces", "ips", "routes"] {
            guard let list = result[key], !list.isNull else { continue }
            guard case .array(let items) = list.kind else {
                throw CNIError(.invalidConfig, "prevResult \(key) is \(list.typeName), not an array")
            }
            for (i, item) in items.enumerated() {
                guard case .object = item.kind else {
                    throw CNIError(.invalidConfig, "prevResult \(key)[\(i)] is \(item.typeName), not an object")
                }
            }
        }
        if let dns = result["dns"], !dns.isNull {
            guard case .object = dns.kind else {
                throw CNIError(.invalidConfig, "prevResult dns is \(dns.typeName), not an object")
            }
        }
    }

    /// `ips` for the target family: each IP with (0.4.0) or without (1.0.0) its `version`.
    static func ips(_ value: JSONSpan, to: CNIVersion.Family) throws(CNIError) -> JSONValue {
        guard case .array(let items) = value.kind else {
            throw CNIError(.invalidConfig, "prevResult ips is \(value.typeName), not an array")
        }
        var out: [JSONValue] = []
        for (i, item) in items.enumerated() {
            guard case .object(let members) = item.kind else {
                throw CNIError(.invalidConfig, "prevResult ips[\(i)] is \(item.typeName), not an object")
            }
            var fields = members.filter { $0.key != "version" }.map { ($0.key, $0.value.value) }
            if to == .v040 {
                guard let address = item["address"]?.string else {
                    throw CNIError(.invalidConfig, "prevResult ips[\(i)] has no address string")
                }
                fields.insert(("version", .string(address.contains(":") ? "6" : "4")), at: 0)
            }
            out.append(.object(fields))
        }
        return .array(out)
    }

    /// A 0.1.0/0.2.0 result (`ip4`, `ip6`, `dns`) as `ips` and `routes`.
    static func fromV020(_ previous: JSONSpan, to: CNIVersion.Family) throws(CNIError) -> [(String, JSONValue)] {
        var ips: [JSONValue] = []
        var routes: [JSONValue] = []
        for (key, family) in [("ip4", "4"), ("ip6", "6")] {
            guard let config = previous[key], !config.isNull else { continue }
            guard case .object = config.kind, let address = config["ip"]?.string else {
                throw CNIError(.invalidConfig, "prevResult \(key) has no ip string")
            }
            var ip: [(String, JSONValue)] = to == .v040 ? [("version", .string(family))] : []
            ip.append(("address", .string(address)))
            if let gateway = config["gateway"]?.string { ip.append(("gateway", .string(gateway))) }
            ips.append(.object(ip))
            if let list = config["routes"], case .array(let items) = list.kind {
                routes += items.map(\.value)
            }
        }
        var fields: [(String, JSONValue)] = []
        if !ips.isEmpty { fields.append(("ips", .array(ips))) }
        if !routes.isEmpty { fields.append(("routes", .array(routes))) }
        if let dns = previous["dns"], !dns.isNull { fields.append(("dns", dns.value)) }
        return fields
    }
}
