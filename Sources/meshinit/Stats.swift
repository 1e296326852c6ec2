import ArgumentParser
import MeshConfig
import MeshExplain
import MeshIptables
import MeshModel
import MeshNetlink
import MeshPlanner
import MeshStats
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

extension StatsFormat: ExpressibleByArgument {}

struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract:
            "Packet and byte counters of the installed rules, per capture path, with the flag behind each rule; --all-namespaces audits the node.",
        discussion: """
            Reads the counters of our rules from the kernel (iptables-save -c; nft counters over \
            netlink) in this namespace (or --network-namespace), from the backend that holds them \
            (--native-nftables: nft only), and reports them per capture path: outbound, inbound and \
            DNS captured, and each bypass (the proxy's uid/gid, excluded ports, CIDRs, interfaces). \
            Each rule is attributed as explain attributes it, to the flags given (without flags: \
            Istio's defaults); a rule they do not plan is shown unattributed. \
            --format prometheus writes Prometheus' text format (for node_exporter's textfile collector).

            --all-namespaces: every network namespace on the node but this one: which backend holds \
            our rules, and whether a proxy listening on the capture ports (-p, -z) is captured; \
            exit 3 when one is not, or only partly (listed as uncaptured).

            """ + IstioFlagHelp.text
    )

    @Option(help: "Output: text, json or prometheus.") var format: StatsFormat = .text
    @Flag(
        name: .customLong("all-namespaces"),
        help:
            "Audit every network namespace on the node (/run/netns/*, /proc/*/ns/net) except this one: exit 3 if a listening proxy is not captured."
    )
    var allNamespaces = false
    @Option(
        help: ArgumentHelp(
            "Write the report to this file (replaced atomically: a reader, such as node_exporter's textfile collector, never sees a part) instead of stdout.",
            valueName: "file"))
    var output: String?
    @Option(
        help: ArgumentHelp(
            "Repeat every DURATION (Go syntax: 30s, 1m), forever, for a DaemonSet; a round that fails is logged and the next one runs.",
            valueName: "duration"))
    var interval: String?
    @OptionGroup var istio: IstioFlagArguments

    func run() throws {
        let given = try istio.given()
        var every: Int64?
        if let interval {
            guard let ms = parseGoDuration(interval), ms >= 1000 else {
                throw CommandFailure(
                    status: .usage, message: "invalid value \(quoted(interval)) for --interval: expected 1s or more")
            }
            every = ms
        }
        // A namespace named by the flags is entered once, here (the audit walks from here).
        let settings = try resolveSettings(given: given, enterNamespace: !allNamespaces)
        let log = Logger(level: settings.run.logLevel, json: settings.run.logAsJSON, descriptor: 2)
        while true {
            let (text, failure) = round(settings, given: given, log: log)
            if let output {
                do {
                    try Files.replace(output, with: Array(text.utf8), mode: 0o644)
                } catch {
                    throw CommandFailure(status: .failure, message: "cannot write \(quoted(output)): \(error)")
                }
            } else {
                writeStandardOutput(text)
            }
            guard let every else {
                if let failure { throw failure }
                return
            }
            if let failure { log.warn(failure.message) }
            var pause = timespec(tv_sec: Int(every / 1000), tv_nsec: Int(every % 1000) * 1_000_000)
            var rest = timespec()
            while nanosleep(&pause, &rest) != 0 && errno == EINTR { pause = rest }
        }
    }

    /// One report, and how it ends (nil: exit 0).
    func round(_ settings: Settings, given: FlagMap<String>, log: Logger) -> (String, CommandFailure?) {
        do {
            if allNamespaces { return auditNode(settings, given: given, format: format, log: log) }
            var context = Context(settings)
            context.log = log
            let stats = try readStats(StatsInput(settings, given: given, environment: context.environment), context)
                .stats
            switch format {
            case .text: return (stats.text(), nil)
            case .json: return (stats.json.serialized + "\n", nil)
            case .prometheus: return (Prometheus.exposition([stats]), nil)
            }
        } catch let failure as CommandFailure {
            return ("", failure)
        } catch {
            return ("", CommandFailure(status: .failure, message: "\(error)"))
        }
    }
}

/// The plan and the sources of its settings, which attribute each rule read back.
struct StatsInput {
    var plan: Plan
    var sources: [CaptureSetting: [String]]

    init(_ settings: Settings, given: FlagMap<String>, environment: ProcessEnvironment) {
        plan = Planner.plan(settings.capture)
        sources = ConfigInput(flags: given, environment: environment.values).origins(of: settings).mapValues {
            $0.map(\.description)
        }
    }
}

/// The counted rules of the backends holding ours here (the forced one, with
/// `--native-nftables` or a forced iptables binary), and the rules as explain walks them.
func readStats(_ input: StatsInput, _ context: Context) throws -> (stats: NamespaceStats, rulesets: [Ruleset]) {
    let held: [RulesBackend]
    switch context.backendRequest {
    case .forced(let chosen): held = [chosen]
    case .auto: held = try context.holdings().backends
    }
    var rules: [CountedRule] = []
    var rulesets: [Ruleset] = []
    for installed in held {
        let backend: Backend = installed == .netlink ? .nft : .iptables
        // Two reads (the rules with their attribution, then their counters): joined only when
        // every rule is the same in both; read again when they changed in between.
        var joined: (Ruleset, [CountedRule])?
        for _ in 0..<5 where joined == nil {
            let ruleset = try readLiveRules(input.plan, backend: backend, context).0
            let report = Report(ruleset: ruleset, sources: input.sources)
            switch backend {
            case .nft:
                do {
                    let chains = try context.netlink().liveRules(comparedWith: input.plan)
                    joined = CounterJoin.nft(report, chains: chains, plan: input.plan).map { (ruleset, $0) }
                } catch let error as NetlinkError {
                    throw failure(error)
                }
            case .iptables:
                var dumps: [Family: [SavedTable]] = [:]
                for family in Family.allCases {
                    // As explain reads them: IPv6 only where it is available.
                    if family == .ipv6, IPv6Availability.current() != .available { continue }
                    do {
                        dumps[family] = try context.iptables.liveCounters(family: family)
                    } catch {
                        throw failure(error)
                    }
                }
                joined = CounterJoin.iptables(report, dumps: dumps, plan: input.plan).map { (ruleset, $0) }
            }
        }
        guard let (ruleset, counted) = joined else {
            throw CommandFailure(
                status: .temporary,
                message: "the \(installed.name) rules changed during each of 5 reads of their counters")
        }
        rulesets.append(ruleset)
        rules += counted
    }
    return (NamespaceStats(backends: held.map { $0 == .netlink ? .nft : .iptables }, rules: rules), rulesets)
}

/// `stats --all-namespaces`: every namespace on the node but ours (the walk of `clean
/// --all-namespaces`), audited: the report, and exit 3 naming those where a proxy listens
/// uncaptured (exit 1 where some could not be read).
func auditNode(_ settings: Settings, given: FlagMap<String>, format: StatsFormat, log: Logger) -> (
    String, CommandFailure?
) {
    let environment = ProcessEnvironment.current()
    let input = StatsInput(settings, given: given, environment: environment)
    let proxyPort = settings.capture.proxyPort
    let inboundPort = settings.capture.inboundCapturePort
    var audits: [NamespaceAudit] = []
    var failures = 0
    walkNetworkNamespaces { ns throws -> NamespaceAudit in
        var listening: [Port] = []
        for port in [proxyPort, inboundPort] where !listening.contains(port) && tcpListening(on: port.value) == true {
            listening.append(port)
        }
        var context = Context(settings, boundary: .live(environment))
        context.log = Logger(level: .none, json: false)
        let (stats, rulesets) = try readStats(input, context)
        let (problems, notes) = NamespaceAudit.assess(
            listening: listening, proxyPort: proxyPort, inboundPort: inboundPort, rulesets: rulesets)
        var named = stats
        named.namespace = ns.path
        return NamespaceAudit(
            namespace: ns.path, inode: ns.inode, backends: stats.backends, listening: listening, problems: problems,
            notes: notes, stats: named)
    } visited: { ns, visit in
        if let audit = logVisit(visit, "\(ns.path) (netns \(ns.inode))", log, failures: &failures) {
            audits.append(audit)
        }
    }
    let uncaptured = audits.filter(\.uncaptured)
    let text: String
    switch format {
    case .text: text = audits.map(\.text).joined()
    case .json:
        text =
            JSONValue.object([
                ("namespaces", .array(audits.map(\.json))),
                ("uncaptured", .array(uncaptured.map { .string($0.namespace) })),
            ]).serialized + "\n"
    case .prometheus: text = Prometheus.exposition(audits.compactMap(\.stats), audits: audits)
    }
    if failures > 0 {
        return (text, CommandFailure(status: .failure, message: "\(failures) network namespaces could not be read"))
    }
    guard uncaptured.isEmpty else {
        let names = uncaptured.map { "\($0.namespace) (netns \($0.inode))" }.joined(separator: ", ")
        return (
            text,
            CommandFailure(
                status: .drift,
                message: "uncaptured: a proxy listens but its traffic is not (or only partly) captured in \(names)")
        )
    }
    log.info("\(audits.count) network namespaces audited, none uncaptured")
    return (text, nil)
}
