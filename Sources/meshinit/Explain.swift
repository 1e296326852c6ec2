import ArgumentParser
import MeshCNI
import MeshConfig
import MeshExplain
import MeshIptables
import MeshModel
import MeshNetlink
import MeshPlanner
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

enum ExplainFormat: String, ExpressibleByArgument, CaseIterable {
    case text
    case json
}

extension Backend: ExpressibleByArgument {}

struct ExplainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract:
            "Walk packets through the rules for these flags: each rule they match, the flag behind it, and where they end up.",
        discussion: """
            Packets (after the flags; several per call; - reads them from stdin, one per line):
              out PROTO ADDR:PORT [uid=N] [gid=N] [iface=IF] [src=ADDR] [sport=N] [mark=N]
                  a packet the pod sends (uid/gid: its socket's owner, default 0 and the uid)
              in PROTO [ADDR]:PORT [iface=IF] [src=ADDR] [sport=N] [mark=N] [family=ipv6]
                  a packet arriving (:PORT is the pod's own address)
              PROTO is tcp or udp; IPv6 as [ADDR]:PORT. Examples:
                out tcp 10.0.0.5:80 uid=1000     in tcp :8080 iface=eth0
                out udp 10.96.0.10:53 uid=1000   out tcp [fd00::1]:443 uid=1337

            """ + IstioFlagHelp.text
    )

    @Option(help: "Output: text, or json (one object per packet and line).") var format: ExplainFormat = .text
    @Option(help: "Whose rules to walk: iptables or nft (default: nft with --native-nftables, else iptables).")
    var backend: Backend?
    @Flag(
        help:
            "Walk the rules the kernel holds now (in --network-namespace, or here; needs CAP_NET_ADMIN) and say where they and the plan diverge on each packet's path (exit 3 if they do)."
    )
    var live = false
    @Option(
        name: .customLong("cni-config"),
        help: ArgumentHelp(
            "Explain what the CNI plugin installs for a pod: its network configuration (a .conflist with a meshinit entry, or that entry), instead of Istio's flags.",
            valueName: "file"))
    var cniConfig: String?
    @Option(
        name: .customLong("annotation"),
        help: ArgumentHelp("With --cni-config: a pod annotation (repeat for several).", valueName: "key=value"))
    var annotations: [String] = []
    @Option(
        name: .customLong("pod-ip"),
        help: ArgumentHelp(
            "The pod's addresses, [IFACE=]ADDR[/LEN] (IFACE default eth0; /LEN: its subnet's route; repeat or separate with commas): a packet to another address is forwarded, not delivered, and :PORT is the address. --live reads them from the namespace.",
            valueName: "addr"))
    var podIPs: [String] = []
    @Argument(
        parsing: .allUnrecognized,
        help: ArgumentHelp("Istio's istio-iptables flags, then packets (see above).", valueName: "flags-and-packets"))
    var arguments: [String] = []

    func run() throws {
        var extra: [String: String] = [:]
        var operands: [String]? = []
        let given: FlagMap<String>
        do {
            given = try IstioArguments.parse(arguments, options: [], into: &extra, operands: &operands)
        } catch {
            throw failure(error)
        }
        let source: ExplainSource
        if let cniConfig {
            if let flag = given.keys.first(where: { $0 != .networkNamespace }) {
                throw CommandFailure(
                    status: .usage,
                    message:
                        "\(flag.displayName) cannot be combined with --cni-config: the plugin's configuration holds the settings"
                )
            }
            source = .cni(path: cniConfig, annotations: annotations, netns: given[.networkNamespace])
        } else {
            guard annotations.isEmpty else {
                throw CommandFailure(status: .usage, message: "--annotation goes with --cni-config")
            }
            source = .flags(given)
        }
        try explain(source, operands: operands ?? [], format: format, backend: backend, live: live, podIPs: podIPs)
    }

    /// `explain`'s arguments (after `explain`) as the fast path reads them, or nil for the
    /// full CLI (`--live`, help, and the messages for a bad format or backend).
    static func fastPath(_ arguments: ArraySlice<String>) -> (
        format: ExplainFormat, backend: Backend?, given: FlagMap<String>, operands: [String]
    )? {
        guard !arguments.contains("--live"), !arguments.contains(where: { $0.hasPrefix("--pod-ip") }) else {
            return nil
        }
        var options: [String: String] = [:]
        var operands: [String]? = []
        guard
            let given = try? IstioArguments.parse(
                arguments, options: ["format", "backend"], into: &options, operands: &operands),
            let format = ExplainFormat(rawValue: options["format"] ?? ExplainFormat.text.rawValue)
        else { return nil }
        var backend: Backend?
        if let name = options["backend"] {
            guard let chosen = Backend(rawValue: name) else { return nil }
            backend = chosen
        }
        return (format, backend, given, operands ?? [])
    }
}

/// Where explain takes the capture settings from.
enum ExplainSource {
    /// Istio's flags (and their environment variables), as an init container gets them.
    case flags(FlagMap<String>)
    /// The CNI plugin's network configuration and a pod's annotations, as the runtime passes
    /// them (`netns`: `--network-namespace`, for `--live`).
    case cni(path: String, annotations: [String], netns: String?)
}

/// `explain`: parses every packet first (a bad one is exit 64 and prints nothing), plans,
/// walks each packet through the plan (or the live rules) and prints the walks.
func explain(
    _ source: ExplainSource, operands: [String], format: ExplainFormat, backend: Backend?, live: Bool,
    podIPs: [String] = []
) throws {
    let packets = try readPackets(operands)
    var pod: PodNetwork?
    if !podIPs.isEmpty {
        do {
            pod = try PodNetwork.parse(podIPs)
        } catch {
            throw CommandFailure(status: .usage, message: error.description)
        }
    }
    let settings: Settings
    let input: ConfigInput
    var defaultBackend: Backend?
    var cniRequest: BackendRequest?
    switch source {
    case .flags(let given):
        let environment = ProcessEnvironment.current()
        settings = try resolveSettings(given: given, environment: environment, enterNamespace: live)
        input = ConfigInput(flags: given, environment: environment.values)
    case .cni(let path, let annotations, let netns):
        let config = try pluginConfig(path, annotations: annotations)
        if let reason = PodDecision.skipReason(annotations: config.annotations, config) {
            writeStandardError("meshinit: warning: the plugin installs nothing for this pod: \(reason)\n")
        }
        defaultBackend = config.backend == .iptables ? .iptables : .nft
        cniRequest = config.backendRequest
        input = PodDecision.input(config)
        settings = try SystemBoundary.live(.current()).resolveForCommand(
            .input(input), in: .path(live ? netns : nil), lookup: HostLookup())
    }
    printWarnings(settings)
    // With --live, in the pod's namespace now: its addresses, routes and forwarding.
    if live && pod == nil { pod = livePodNetwork() }
    let plan = Planner.plan(settings.capture)
    let sources = input.origins(of: settings).mapValues { $0.map(\.description) }

    // One walk per backend: the plan's, and with --live the kernel's rules of each backend
    // that holds ours (both, when both do; the forced one with --backend).
    var walks: [LiveWalk] = []
    if live {
        var context = Context(settings)
        // stdout is the report (JSON lines with --format json): notes go to stderr.
        context.log = Logger(level: settings.run.logLevel, json: settings.run.logAsJSON, descriptor: 2)
        let request: BackendRequest =
            backend.map { .forced($0 == .nft ? .netlink : .iptables) } ?? cniRequest ?? context.backendRequest
        for installed in try context.installedBackends(request) {
            let chosen: Backend = installed == .netlink ? .nft : .iptables
            let (rules, notes) = try readLiveRules(plan, backend: chosen, context)
            var ruleset = rules
            ruleset.tproxyRoute = plan.tproxyRoute
            ruleset.tproxyRouteFamilies = plan.families
            ruleset.loopbackSource = plan.families.contains(.ipv6) ? IPAddress(ipv6: 0, 6) : nil
            walks.append(LiveWalk(backend: chosen, live: Explainer(ruleset: ruleset, pod: pod), notes: notes))
        }
    } else {
        walks.append(LiveWalk(backend: backend ?? defaultBackend ?? (settings.run.nativeNftables ? .nft : .iptables)))
    }

    var out = OutputBuffer()
    var diverging = 0
    var index = 0
    for walk in walks {
        let planned = Explainer(ruleset: Ruleset(plan: plan, backend: walk.backend), pod: pod)
        let planReport = Report(ruleset: planned.ruleset, sources: sources)
        let report = walk.live.map { Report(ruleset: $0.ruleset, sources: sources) } ?? planReport
        for packet in packets {
            let fromPlan = planned.explain(packet)
            var shown = fromPlan
            var differences: [String] = []
            if let kernel = walk.live {
                shown = kernel.explain(packet)
                differences = divergence(plan: fromPlan, planReport, live: shown, report)
                // What the rules alone do not show: a dormant table, a chain's other policy or priority.
                var seen: Set<String> = []
                for step in fromPlan.steps + shown.steps {
                    for note in walk.notes[TableChain(table: step.table, chain: step.chain)] ?? []
                    where seen.insert(note).inserted {
                        differences.append("live: \(note)")
                    }
                }
                if !differences.isEmpty { diverging += 1 }
            }
            switch format {
            case .text:
                if index > 0 { out += "\n" }
                var lines: [String] = []
                if live {
                    lines =
                        differences.isEmpty
                        ? ["live: the kernel's rules agree with the plan on this path"] : differences
                }
                report.text(shown, extra: lines, into: &out)
            case .json:
                var extra: [(String, JSONValue)] = []
                if live {
                    extra = [
                        ("source", .string("live")),
                        ("planVerdict", .string(fromPlan.verdict.kind)),
                        ("divergence", .array(differences.map(JSONValue.string))),
                    ]
                }
                report.json(shown, extra: extra, into: &out)
                out += "\n"
            }
            index += 1
            if out.count >= 1 << 16 {
                writeStandardOutput(out.bytes)
                out.removeAll()
            }
        }
    }
    writeStandardOutput(out.bytes)
    if diverging > 0 {
        throw CommandFailure(
            status: .drift,
            message: "the kernel's rules and the plan diverge on \(diverging) of \(packets.count * walks.count) paths"
        )
    }
}

/// The current namespace's network as explain needs it: its interfaces' addresses, its
/// routes (`/proc/net/route`, `/proc/net/ipv6_route`) and whether it forwards.
func livePodNetwork() -> PodNetwork {
    let system = LiveSystem()
    var network = PodNetwork(
        addresses: system.interfaceAddresses().compactMap { entry in
            InterfaceName(entry.interface).map { PodNetwork.Address(interface: $0, address: entry.address) }
        })
    network.routes = PodNetwork.routes(
        procRoute: system.readFile("/proc/net/route") ?? "",
        procIPv6Route: system.readFile("/proc/net/ipv6_route") ?? "")
    for (family, path) in [
        (Family.ipv4, "/proc/sys/net/ipv4/ip_forward"), (.ipv6, "/proc/sys/net/ipv6/conf/all/forwarding"),
    ] {
        if let text = system.readFile(path) { network.forwarding[family] = text.hasPrefix("1") }
    }
    return network
}

/// The plugin's configuration from a `.conflist` (its meshinit entry) or from that entry
/// alone, with `key=value` annotations added as the runtime passes them.
func pluginConfig(_ path: String, annotations: [String]) throws -> PluginConfig {
    let document: JSONSpan
    do {
        document = try JSONParser.parse(try Files.read(path, limit: cniConfigLimit))
    } catch {
        throw CommandFailure(status: .usage, message: "--cni-config \(quoted(path)): \(error)")
    }
    var entry = document
    if let plugins = document["plugins"] {
        guard case .array(let items) = plugins.kind,
            let ours = items.first(where: { $0["type"]?.string == Conflist.pluginType })
        else {
            throw CommandFailure(
                status: .usage, message: "--cni-config \(quoted(path)): no plugin of type \"\(Conflist.pluginType)\"")
        }
        entry = ours
    } else if document["type"]?.string != Conflist.pluginType {
        throw CommandFailure(
            status: .usage,
            message: "--cni-config \(quoted(path)): neither a .conflist nor a plugin of type \"\(Conflist.pluginType)\""
        )
    }
    var config: PluginConfig
    do {
        config = try PluginConfig(entry)
    } catch {
        throw CommandFailure(status: .usage, message: "--cni-config \(quoted(path)): \(error)")
    }
    for annotation in annotations {
        guard let eq = annotation.firstIndex(of: "="), eq != annotation.startIndex else {
            throw CommandFailure(
                status: .usage, message: "invalid value \(quoted(annotation)) for --annotation: expected key=value")
        }
        config.annotations[String(annotation[..<eq])] = String(annotation[annotation.index(after: eq)...])
    }
    return config
}

/// The most `explain -` reads from stdin (about 400,000 packets).
let packetInputLimit = 16 << 20
/// The most of a `--cni-config` file read (a `.conflist` is a few KiB).
let cniConfigLimit = 1 << 20

/// Packets from the operands; `-` stands for stdin, one packet per line (blank lines and
/// `#` comments skipped), at most `packetInputLimit` bytes of them.
func readPackets(_ operands: [String]) throws -> [Packet] {
    var packets: [Packet] = []
    var words: [String] = []
    do {
        for operand in operands {
            guard operand == "-" else {
                words.append(operand)
                continue
            }
            packets += try Packet.parse(words: words)
            words = []
            let bytes: [UInt8]
            do {
                bytes = try Files.readAll(0, limit: packetInputLimit)
            } catch {
                throw CommandFailure(
                    status: error.errno == EFBIG ? .usage : .failure,
                    message: "cannot read packets from stdin: \(error)")
            }
            let text = String(decoding: bytes, as: UTF8.self)
            var start = text.utf8.startIndex
            // Lines on bytes (a Character-wise split costs more than explaining them).
            while start != text.utf8.endIndex {
                let end = text.utf8[start...].firstIndex(of: UInt8(ascii: "\n")) ?? text.utf8.endIndex
                let line = text[start..<end]
                start = end == text.utf8.endIndex ? end : text.utf8.index(after: end)
                let first = line.utf8.first { $0 != UInt8(ascii: " ") && $0 != UInt8(ascii: "\t") }
                if first == nil || first == UInt8(ascii: "#") || first == UInt8(ascii: "\r") { continue }
                packets.append(try Packet.parse(line))
            }
        }
        packets += try Packet.parse(words: words)
    } catch let error as PacketError {
        throw CommandFailure(status: .usage, message: error.description)
    }
    guard !packets.isEmpty else {
        throw CommandFailure(
            status: .usage, message: "explain needs a packet, e.g. 'out tcp 10.0.0.5:80 uid=1000' (or - for stdin)")
    }
    return packets
}

/// Where the live walk and the plan's walk of a packet part.
func divergence(plan: Explanation, _ planReport: Report, live: Explanation, _ liveReport: Report) -> [String] {
    func key(_ step: Step, _ report: Report) -> String {
        "\(step.table.rawValue) \(step.chain.iptablesName) \(report.iptables(step)) \(report.entry(step).nft)"
    }
    func show(_ steps: [Step], _ i: Int, _ report: Report) -> String {
        guard i < steps.count else { return "no further rule" }
        let step = steps[i]
        let line = report.iptables(step)
        return "\(step.table.rawValue) \(step.chain.iptablesName): \(line.isEmpty ? report.entry(step).nft : line)"
    }
    var out: [String] = []
    let a = plan.steps.map { key($0, planReport) }
    let b = live.steps.map { key($0, liveReport) }
    if a != b {
        let i = (0..<min(a.count, b.count)).first { a[$0] != b[$0] } ?? min(a.count, b.count)
        out.append(
            "live differs from the plan at rule \(i + 1): plan has \(show(plan.steps, i, planReport)); live has \(show(live.steps, i, liveReport))"
        )
    }
    if plan.verdict != live.verdict {
        out.append("plan's verdict: \(planReport.verdictText(plan))")
    }
    return out
}

/// One backend's walk: the plan as that backend holds it, and the kernel's rules of it (with
/// what they do not show: notes on chains whose table is dormant or whose header differs).
struct LiveWalk {
    var backend: Backend
    var live: Explainer?
    var notes: [TableChain: [String]] = [:]
}

/// The kernel's rules as explain walks them: the planned rule (with its origin) where a live
/// rule equals one, else the live rule as far as it is understood; and, per chain, how it
/// differs from the plan beyond its rules (nft: a dormant table's chains do not run at all,
/// a base chain's policy, priority or hook).
func readLiveRules(_ plan: Plan, backend: Backend, _ context: Context) throws -> (Ruleset, [TableChain: [String]]) {
    switch backend {
    case .nft:
        let chains: [LiveChain]
        do {
            chains = try context.netlink().liveRules(comparedWith: plan)
        } catch let error as NetlinkError {
            throw failure(error)
        }
        let planned = ChainLayout.materializeOperations(plan.operations)
        var view: [TableChain: [RuleEntry]] = [:]
        var notes: [TableChain: [String]] = [:]
        for live in chains {
            guard let table = Table.allCases.first(where: { $0.nftTableName == live.table }),
                let chain = Chain(nftName: live.chain)
            else { continue }
            if !live.notes.isEmpty { notes[TableChain(table: table, chain: chain)] = live.notes }
            guard live.runs else { continue }
            let operations = planned.first { $0.table == table && $0.chain == chain }?.operations ?? []
            view[TableChain(table: table, chain: chain)] = live.rules.map { rule in
                if let i = rule.planned, i < operations.count {
                    return RuleEntry(operations[i].rule, origin: operations[i].origin, table: table, chain: chain)
                }
                return RuleEntry(matches: nil, target: nil, origin: [], iptables: nil, nft: rule.text)
            }
        }
        return (Ruleset(backend: .nft, chains: view.isEmpty ? [:] : [.ipv4: view, .ipv6: view]), notes)
    case .iptables:
        var chains: [Family: [TableChain: [RuleEntry]]] = [:]
        for family in Family.allCases {
            if family == .ipv6, IPv6Availability.current() != .available {
                context.log.info("\(IPv6Availability.current().reason ?? ""): IPv6 rules not read")
                continue
            }
            let saved: [SavedTable]
            do {
                saved = try context.iptables.live(family: family)
            } catch {
                throw failure(error)
            }
            // The plan's rules by the spec iptables-save prints for them, as the plan's walk
            // holds them (an item of a list keeps the whole list's nft rule).
            // Rules of one chain with the same spec (an item of `-d` that is also the tunnel
            // port's rule) are taken in order, each once.
            var planned: [TableChain: [String: [RuleEntry]]] = [:]
            for (table, chain, operations) in ChainLayout.materializeOperations(plan.operations(for: family)) {
                for op in operations {
                    let nft = RuleEntry.nftLine(op.rule, table: table, chain: chain)
                    for rule in op.rule.expanded {
                        planned[TableChain(table: table, chain: chain), default: [:]][
                            SaveCanonical.spec(rule), default: []
                        ].append(RuleEntry(rule, origin: op.origin, table: table, chain: chain, nft: nft))
                    }
                }
            }
            var view: [TableChain: [RuleEntry]] = [:]
            for dump in saved {
                guard let table = Table(rawValue: dump.name) else { continue }
                for name in dump.chains {
                    guard let chain = Chain(iptablesName: name) else { continue }
                    let key = TableChain(table: table, chain: chain)
                    view[key] = dump.rules(in: name).map { saved in
                        if let entry = planned[key]?[saved.spec]?.first {
                            if planned[key]![saved.spec]!.count > 1 { planned[key]![saved.spec]!.removeFirst() }
                            return entry
                        }
                        let (matches, target) = SaveParser.parse(saved.tokens)
                        let nft = (matches.flatMap { m in target.map { Rule(m, $0) } }).map {
                            RuleEntry.nftLine($0, table: table, chain: chain)
                        }
                        return RuleEntry(
                            matches: matches, target: target, origin: [], iptables: "-A \(name) \(saved.spec)",
                            nft: nft ?? "")
                    }
                }
            }
            if !view.isEmpty { chains[family] = view }
        }
        return (Ruleset(backend: .iptables, chains: chains), [:])
    }
}
