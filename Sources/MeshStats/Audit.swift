import MeshExplain
import MeshModel

/// One namespace of the node audit (`meshinit stats --all-namespaces`): which backends hold
/// our rules, which capture ports something listens on, and whether the rules capture the
/// traffic of the proxy listening there.
public struct NamespaceAudit: Sendable {
    /// `/run/netns/NAME` or `/proc/PID/ns/net`.
    public var namespace: String
    public var inode: UInt64
    public var backends: [Backend]
    /// The capture ports (outbound, inbound) something listens on.
    public var listening: [Port]
    /// Why the listening proxy's traffic is not (or only partly) captured; empty: it is, or
    /// no proxy listens.
    public var problems: [String]
    /// What could not be judged (see `assess`).
    public var notes: [String]
    public var stats: NamespaceStats?

    public init(
        namespace: String, inode: UInt64, backends: [Backend], listening: [Port], problems: [String],
        notes: [String] = [], stats: NamespaceStats?
    ) {
        self.notes = notes
        self.namespace = namespace
        self.inode = inode
        self.backends = backends
        self.listening = listening
        self.problems = problems
        self.stats = stats
    }

    /// A proxy listens and its traffic is not, or only partly, captured.
    public var uncaptured: Bool { !listening.isEmpty && !problems.isEmpty }

    /// `captured`, `uncaptured` (no rules at all), `partial`, or `no-proxy`.
    public var status: String {
        if listening.isEmpty { return "no-proxy" }
        if problems.isEmpty { return "captured" }
        return backends.isEmpty ? "uncaptured" : "partial"
    }

    /// The probe for outbound capture: an app's connection to an address outside the pod.
    public static let outboundProbe = "out tcp 203.0.113.1:80 uid=1000 gid=1000 iface=eth0"

    /// What is wrong with the capture of a namespace where something listens on `listening`
    /// (a subset of `proxyPort`, `inboundPort`), given the kernel's rules of each backend that
    /// holds ours (`rulesets`, as explain reads them back), and what could not be judged.
    /// Outbound: an app's connection out of the pod (`outboundProbe`) must be redirected to
    /// the proxy port by some backend's rules. Inbound: a rule of a chain reached from
    /// PREROUTING must redirect (or TPROXY) to the inbound port (which ports it captures is
    /// the flags' choice). A live rule explain cannot evaluate (an nft rule the flags given do
    /// not plan: pass the pod's flags) makes a path unjudged — a note, not a problem — unless
    /// no rule redirects to that port at all.
    public static func assess(listening: [Port], proxyPort: Port, inboundPort: Port, rulesets: [Ruleset])
        -> (problems: [String], notes: [String])
    {
        guard !listening.isEmpty else { return ([], []) }
        let ports = listening.map(\.description).joined(separator: ", ")
        guard !rulesets.isEmpty else {
            return (
                ["something listens on \(ports) but no rules of ours are installed (neither iptables nor nftables)"], []
            )
        }
        var problems: [String] = []
        var notes: [String] = []
        if listening.contains(proxyPort), let packet = try? Packet.parse(outboundProbe) {
            let walks = rulesets.map { Explainer(ruleset: $0).explain(packet) }
            let captured = walks.contains { walk in
                switch walk.verdict {
                case .redirected(let port, _): port == proxyPort
                case .tproxied(let port, _): port == proxyPort
                default: false
                }
            }
            if captured {
            } else if walks.contains(where: { $0.verdict == .uncertain }),
                rulesets.contains(where: { redirects($0, to: proxyPort) })
            {
                notes.append(
                    "outbound not judged: a rule on the path of \(packet) is one explain cannot evaluate (a rule the flags given do not plan: give the pod's flags)"
                )
            } else if let walk = walks.first {
                let report = Report(ruleset: rulesets[0], sources: [:])
                problems.append(
                    "outbound not captured: \(packet) is \(report.verdictText(walk)), not redirected to the proxy on \(proxyPort)"
                )
            }
        }
        if listening.contains(inboundPort) {
            let reach = rulesets.map { reachesFromPrerouting($0, port: inboundPort) }
            if reach.contains(true) {
            } else if reach.contains(nil), rulesets.contains(where: { redirects($0, to: inboundPort) }) {
                notes.append(
                    "inbound not judged: a rule reached from PREROUTING is one explain cannot evaluate (a rule the flags given do not plan: give the pod's flags)"
                )
            } else {
                problems.append(
                    "inbound not captured: no rule reached from PREROUTING redirects to the proxy's inbound port \(inboundPort)"
                )
            }
        }
        return (problems, notes)
    }

    /// Whether any rule redirects (or TPROXYs) to `port`.
    static func redirects(_ ruleset: Ruleset, to port: Port) -> Bool {
        ruleset.entries.contains { entry in
            switch entry.target {
            case .redirect(let to)?: to == port
            case .tproxy(let to, _)?: to == port
            default: false
            }
        }
    }

    /// Whether a rule of a chain reached from PREROUTING (through jumps) redirects or
    /// TPROXYs to `port`; nil when it does not as far as can be told, but a reached rule
    /// is one explain cannot follow.
    static func reachesFromPrerouting(_ ruleset: Ruleset, port: Port) -> Bool? {
        var opaque = false
        for view in ruleset.chains.values {
            var pending = view.keys.filter { $0.chain == .builtin(.prerouting) }
            var seen = Set(pending)
            while let key = pending.popLast() {
                for id in view[key] ?? [] {
                    switch ruleset.entries[id].target {
                    case .redirect(let to)? where to == port: return true
                    case .tproxy(let to, _)? where to == port: return true
                    case .jump(let chain)?:
                        let next = TableChain(table: key.table, chain: .own(chain))
                        if seen.insert(next).inserted { pending.append(next) }
                    case nil: opaque = true
                    default: break
                    }
                }
            }
        }
        return opaque ? nil : false
    }

    public var text: String {
        var out = "\(namespace) (netns \(inode)): \(status)"
        out += "; backends: \(backends.isEmpty ? "none" : backends.map(\.rawValue).joined(separator: ", "))"
        out += "; listening: \(listening.isEmpty ? "none" : listening.map(\.description).joined(separator: ", "))\n"
        for problem in problems { out += "  \(problem)\n" }
        for note in notes { out += "  note: \(note)\n" }
        return out
    }

    public var json: JSONValue {
        var members: [(String, JSONValue)] = [
            ("namespace", .string(namespace)), ("inode", .numberText(String(inode))), ("status", .string(status)),
            ("uncaptured", .bool(uncaptured)), ("backends", .array(backends.map { .string($0.rawValue) })),
            ("listening", .array(listening.map { .int($0.value) })),
            ("problems", .array(problems.map(JSONValue.string))), ("notes", .array(notes.map(JSONValue.string))),
        ]
        if let stats { members.append(("stats", stats.json)) }
        return .object(members)
    }
}
