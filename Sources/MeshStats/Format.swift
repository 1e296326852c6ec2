import MeshExplain
import MeshModel

/// `meshinit stats`' output formats.
public enum StatsFormat: String, Sendable, Hashable, CaseIterable {
    case text
    case json
    /// Prometheus' text exposition format (version 0.0.4), for node_exporter's textfile collector.
    case prometheus
}

/// The counted rules of one network namespace.
public struct NamespaceStats: Sendable {
    /// The backends holding rules of ours (read), in the order read.
    public var backends: [Backend]
    public var rules: [CountedRule]
    /// The namespace, for a node-wide report (`/run/netns/pod1`, `/proc/42/ns/net`); nil: this one.
    public var namespace: String?

    public init(backends: [Backend], rules: [CountedRule], namespace: String? = nil) {
        self.backends = backends
        self.rules = rules
        self.namespace = namespace
    }

    /// Packets and bytes per path and backend, in path order (paths without rules left out).
    public var totals: [(path: CapturePath, backend: Backend, packets: UInt64, bytes: UInt64)] {
        var out: [(path: CapturePath, backend: Backend, packets: UInt64, bytes: UInt64)] = []
        for backend in backends {
            for path in CapturePath.allCases {
                let rules = self.rules.filter { $0.path == path && $0.backend == backend }
                guard !rules.isEmpty else { continue }
                out.append(
                    (
                        path, backend, rules.reduce(0) { $0 &+ $1.packets },
                        rules.reduce(0) { $0 &+ $1.bytes }
                    ))
            }
        }
        return out
    }

    /// Per backend, each path with its totals, then each of its rules with its counters and
    /// what it comes from.
    public func text() -> String {
        var out = ""
        if let namespace { out += "# \(namespace)\n" }
        if backends.isEmpty { out += "no rules of ours installed\n" }
        for backend in backends {
            out += "backend \(backend.rawValue)\n"
            for total in totals where total.backend == backend {
                out += "  \(total.path.title): \(total.packets) packets, \(total.bytes) bytes\n"
                for rule in rules where rule.backend == backend && rule.path == total.path {
                    let family = rule.family == "inet" ? "" : "\(rule.family) "
                    out += "    \(rule.packets) pkts \(rule.bytes) B  \(family)\(rule.tableName) \(rule.chainName): "
                    out += "\(rule.rule)\n"
                    if !rule.attributed {
                        out += "      from: unattributed (not a rule the flags given plan)\n"
                    } else if !rule.from.isEmpty {
                        out += "      from: \(rule.from.joined(separator: "; "))\n"
                    }
                }
            }
        }
        return out
    }

    /// One JSON object: backends, per-path totals, and every rule.
    public var json: JSONValue {
        var members: [(String, JSONValue)] = []
        if let namespace { members.append(("namespace", .string(namespace))) }
        members += [
            ("backends", .array(backends.map { .string($0.rawValue) })),
            (
                "paths",
                .array(
                    totals.map {
                        .object([
                            ("path", .string($0.path.rawValue)), ("backend", .string($0.backend.rawValue)),
                            ("packets", .numberText(String($0.packets))), ("bytes", .numberText(String($0.bytes))),
                        ])
                    })
            ),
            (
                "rules",
                .array(
                    rules.map { rule in
                        .object([
                            ("backend", .string(rule.backend.rawValue)), ("family", .string(rule.family)),
                            ("table", .string(rule.tableName)), ("chain", .string(rule.chainName)),
                            ("path", .string(rule.path.rawValue)), ("rule", .string(rule.rule)),
                            ("nft", .string(rule.nft)), ("from", .array(rule.from.map(JSONValue.string))),
                            ("attributed", .bool(rule.attributed)),
                            ("packets", .numberText(String(rule.packets))),
                            ("bytes", .numberText(String(rule.bytes))),
                        ])
                    })
            ),
        ]
        return .object(members)
    }

    /// The samples of this namespace's rules (see `Prometheus`).
    func samples(into families: inout [String: [String]]) {
        // Identical label sets (a rule installed twice) are one sample, summed.
        var order: [String] = []
        var sums: [String: (UInt64, UInt64)] = [:]
        for rule in rules {
            var labels: [(String, String)] = []
            if let namespace { labels.append(("netns", namespace)) }
            labels += [
                ("path", rule.path.rawValue), ("flag", rule.from.joined(separator: "; ")),
                ("table", rule.tableName), ("chain", rule.chainName), ("family", rule.family),
                ("backend", rule.backend.rawValue), ("rule", rule.rule),
            ]
            let key = Prometheus.labels(labels)
            if sums[key] == nil { order.append(key) }
            let sum = sums[key] ?? (0, 0)
            sums[key] = (sum.0 &+ rule.packets, sum.1 &+ rule.bytes)
        }
        for key in order {
            let (packets, bytes) = sums[key]!
            families[Prometheus.packets, default: []].append("\(Prometheus.packets)\(key) \(packets)")
            families[Prometheus.bytes, default: []].append("\(Prometheus.bytes)\(key) \(bytes)")
        }
        var labels: [(String, String)] = []
        if let namespace { labels.append(("netns", namespace)) }
        for backend in Backend.allCases {
            let value = backends.contains(backend) ? 1 : 0
            families[Prometheus.installed, default: []].append(
                "\(Prometheus.installed)\(Prometheus.labels(labels + [("backend", backend.rawValue)])) \(value)")
        }
    }
}

/// Prometheus' text exposition format: `# HELP`, `# TYPE`, then the samples of each family.
public enum Prometheus {
    static let packets = "meshinit_rule_packets_total"
    static let bytes = "meshinit_rule_bytes_total"
    static let installed = "meshinit_rules_installed"
    static let uncaptured = "meshinit_namespace_uncaptured"
    static let proxyListening = "meshinit_namespace_proxy_listening"

    static let help: [(name: String, type: String, help: String)] = [
        (
            packets, "counter",
            "Packets matched by a rule of meshinit's traffic capture, by capture path and the flag behind it."
        ),
        (
            bytes, "counter",
            "Bytes matched by a rule of meshinit's traffic capture, by capture path and the flag behind it."
        ),
        (installed, "gauge", "1 if the backend holds rules of meshinit's traffic capture in the namespace, else 0."),
        (
            proxyListening, "gauge",
            "1 if a proxy listens on a capture port (15001, 15006 or the configured ones) in the namespace."
        ),
        (
            uncaptured, "gauge",
            "1 if a proxy listens in the namespace but its traffic is not (or only partly) captured."
        ),
    ]

    /// The exposition of `namespaces` (and, for a node audit, its verdicts), ending with a newline.
    public static func exposition(_ namespaces: [NamespaceStats], audits: [NamespaceAudit] = []) -> String {
        var families: [String: [String]] = [:]
        for stats in namespaces { stats.samples(into: &families) }
        for audit in audits {
            let labels = self.labels([("netns", audit.namespace)])
            families[proxyListening, default: []].append(
                "\(proxyListening)\(labels) \(audit.listening.isEmpty ? 0 : 1)")
            families[uncaptured, default: []].append("\(uncaptured)\(labels) \(audit.uncaptured ? 1 : 0)")
        }
        var out = ""
        for family in help {
            guard let samples = families[family.name] else { continue }
            out += "# HELP \(family.name) \(family.help)\n# TYPE \(family.name) \(family.type)\n"
            for sample in samples { out += sample + "\n" }
        }
        return out
    }

    /// `{a="x",b="y"}`, values escaped as the format requires (`\\`, `\"`, `\n`).
    static func labels(_ pairs: [(String, String)]) -> String {
        var out = "{"
        for (i, (name, value)) in pairs.enumerated() {
            if i > 0 { out += "," }
            out += name + "=\""
            for ch in value.unicodeScalars {
                switch ch {
                case "\\": out += "\\\\"
                case "\"": out += "\\\""
                case "\n": out += "\\n"
                default: out.unicodeScalars.append(ch)
                }
            }
            out += "\""
        }
        return out + "}"
    }
}
