import MeshCNI
import MeshConfig
import MeshIptables
import MeshModel
import MeshNetlink
import MeshPlanner
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// One CNI call carried out (spec 1.1.0), given the request the CLI read: ADD installs the
/// plan in the pod's namespace (rolled back on failure), CHECK compares, DEL removes, STATUS
/// checks the node, GC and VERSION answer. Every effect goes through `boundary`.
///
/// Capture fails closed: ADD refuses what it cannot install exactly (a bad key or annotation,
/// no annotation map while the config requires the status annotation, the node's own
/// namespace, a lookup that would read the node instead of the pod). Teardown fails open: DEL
/// reads only what it needs, succeeds when the namespace is gone or holds nothing of ours,
/// and otherwise removes what it can and names what it could not.
public struct CNIHandler {
    public var boundary: SystemBoundary

    public init(boundary: SystemBoundary) { self.boundary = boundary }

    /// What one call did, for its log line.
    public struct Call {
        public var environment: [String: String]
        public var request: CNIRequest?
        public var logFile: String?
        public var verdict = ""
        /// More about the verdict: what was rolled back, what DEL ignored.
        public var details: [String] = []

        public init(environment: [String: String]) { self.environment = environment }

        /// `{"time":…,"command":…,"containerID":…,"pod":…,"netns":…,"verdict":…,"durationMs":…}`,
        /// each value bounded (a hostile container id or error does not make a huge line).
        public func log(durationMicroseconds: Int64) {
            let milliseconds =
                "\(durationMicroseconds / 1000).\(String(1000 + durationMicroseconds % 1000).dropFirst())"
            func field(_ text: String, _ limit: Int = 256) -> JSONValue { .string(truncated(text, limit)) }
            var fields: [(String, JSONValue)] = [
                ("time", .string(Logger.timestamp())), ("plugin", .string("meshinit")),
                ("command", field(environment["CNI_COMMAND"] ?? "")),
                ("containerID", field(environment["CNI_CONTAINERID"] ?? "")),
                ("pod", field(request?.pod ?? "?")), ("netns", field(environment["CNI_NETNS"] ?? "")),
                ("verdict", field(verdict, CNIError.messageLimit + 64)),
            ]
            let more = (details + (request?.ignored.map { "ignored: \($0)" } ?? [])).filter { !$0.isEmpty }
            if !more.isEmpty { fields.append(("details", field(more.joined(separator: "; "), CNIError.detailsLimit))) }
            fields.append(("durationMs", .numberText(milliseconds)))
            let line = JSONValue.object(fields).serialized + "\n"
            if let logFile, let fd = try? Files.openForAppend(logFile) {
                writeAll(line, to: fd)
                close(fd)
            } else {
                writeStandardError(line)
            }
        }

        func truncated(_ text: String, _ limit: Int) -> String {
            text.utf8.count <= limit ? text : String(text.prefix(limit)) + "…"
        }
    }

    public func perform(_ request: CNIRequest, _ call: inout Call) throws(CNIError) -> String {
        switch request.command {
        case .version:
            call.verdict = "version"
            return request.versionResult()
        case .del:
            call.verdict = try delete(request, &call)
            return ""
        case .status, .gc, .add, .check:
            break
        }
        guard let json = request.config else { throw CNIError(.decodingFailure, "no network configuration on stdin") }
        let config = try PluginConfig(json)
        call.logFile = config.logFile
        switch request.command {
        case .status:
            try status(config)
            call.verdict = "ready"
            return ""
        case .gc:
            // Our state lives in each pod's namespace and goes with it: nothing to collect.
            var valid = 0
            if case .array(let items)? = json["cni.dev/valid-attachments"]?.kind { valid = items.count }
            call.verdict = "nothing to collect (\(valid) valid attachments; our rules live in each pod's namespace)"
            return ""
        case .add:
            // The result first: a prevResult that cannot be answered installs nothing.
            let result = try request.addResult()
            let namespace = try openPodNamespace(request.netns)
            switch try PodDecision.decide(request, config) {
            case .skip(let reason):
                call.verdict = "skipped: \(reason)"
            case .capture(let input):
                if !config.annotationsPassed { call.details.append("the runtime passed no annotations") }
                call.verdict = try add(namespace, config, input, &call)
            }
            return result
        case .check:
            guard let previous = json["prevResult"], !previous.isNull else {
                throw CNIError(.invalidConfig, "CHECK needs prevResult (the result of the ADD)")
            }
            // The same result rules as ADD: a version that cannot be read is refused.
            _ = try request.addResult()
            let namespace = try openPodNamespace(request.netns)
            switch try PodDecision.decide(request, config) {
            case .skip(let reason):
                call.verdict = "skipped: \(reason)"
            case .capture(let input):
                try check(namespace, config, input)
                call.verdict = "rules match the plan"
            }
            return ""
        case .del, .version:
            return ""
        }
    }

    /// `CNI_NETNS`, opened once and checked: a network namespace, and not the node's own.
    func openPodNamespace(_ path: String) throws(CNIError) -> any PodNamespace {
        let namespace: any PodNamespace
        do {
            namespace = try boundary.openNamespace(path)
        } catch {
            switch error {
            case .missing: throw CNIError(.namespace, "network namespace \(brief(path)) does not exist")
            case .notNetworkNamespace:
                throw CNIError(.invalidEnvironment, "CNI_NETNS \(brief(path)) is not a network namespace")
            case .system(let e):
                throw CNIError(e.errno == EPERM || e.errno == EACCES ? .permission : .namespace, e.description)
            }
        }
        for (what, identity) in boundary.nodeNamespaces() where identity == namespace.identity {
            throw CNIError(
                .invalidEnvironment, "CNI_NETNS \(brief(path)) is \(what): refusing to install capture there",
                details: "a pod's rules go into the pod's own network namespace; host-network pods get none")
        }
        return namespace
    }

    /// ADD: the plan `meshinit plan` gives for the same values, installed in the pod's
    /// namespace. On any failure everything of ours is removed again, every step tried, and
    /// what could not be removed is named in the error.
    func add(
        _ namespace: any PodNamespace, _ config: PluginConfig, _ input: ConfigInput, _ call: inout Call
    ) throws(CNIError) -> String {
        let (context, plan) = try prepare(namespace, config, input)
        if config.backend == .iptables { try requireIptables(context, families: plan.families) }
        var used = RulesBackend.netlink
        var rollback: CNIRemoval?
        let outcome = Result { () throws -> Void in
            let lock = try context.lockNamespace()
            defer { withExtendedLifetime(lock) {} }
            do {
                used = try applyPlan(plan, context, backend: config.backendRequest)
            } catch {
                // Nothing half-installed: remove whatever of ours this namespace holds now.
                rollback = CNIRemoval.run(context)
                throw error
            }
        }
        if case .failure(let error) = outcome {
            var failure = Self.cniError(error)
            if let rollback {
                let summary = "rollback: \(rollback.summary)"
                call.details.append(summary)
                failure.details = failure.details.isEmpty ? summary : failure.details + "; " + summary
                if !rollback.failures.isEmpty { failure.message += " (and rules of ours remain: see details)" }
            }
            throw failure
        }
        return "installed (\(used == .iptables ? "iptables" : "nftables"))"
    }

    /// CHECK: `verify` — the installed rules must be the plan.
    func check(_ namespace: any PodNamespace, _ config: PluginConfig, _ input: ConfigInput)
        throws(CNIError)
    {
        let (context, plan) = try prepare(namespace, config, input)
        if config.backend == .iptables { try requireIptables(context, families: plan.families) }
        let differences: [String]
        do {
            differences = try verifyPlan(plan, context, backend: config.backendRequest)
        } catch {
            throw Self.cniError(error)
        }
        if !differences.isEmpty {
            throw CNIError(
                .drift, "installed rules differ from the plan (\(differences.count) differences)",
                details: differences.joined(separator: "; "))
        }
    }

    /// DEL: everything of ours removed if the namespace is still there; success if it is not,
    /// or if it is not a pod's namespace (nothing is ever removed from the node's).
    func delete(_ request: CNIRequest, _ call: inout Call) throws(CNIError) -> String {
        let path = request.netns
        guard !path.isEmpty else { return "nothing to remove: no network namespace given" }
        guard path.utf8.first == UInt8(ascii: "/"), !path.utf8.contains(0) else {
            return "nothing done: CNI_NETNS \(brief(path)) is not an absolute path"
        }
        let namespace: any PodNamespace
        do {
            namespace = try boundary.openNamespace(path)
        } catch {
            switch error {
            case .missing: return "nothing to remove: the network namespace is gone"
            case .notNetworkNamespace: return "nothing to remove: \(brief(path)) is not a network namespace"
            case .system(let e):
                throw CNIError(e.errno == EPERM || e.errno == EACCES ? .permission : .namespace, e.description)
            }
        }
        for (what, identity) in boundary.nodeNamespaces() where identity == namespace.identity {
            return "nothing done: CNI_NETNS \(brief(path)) is \(what), which holds no pod's rules"
        }
        do {
            try namespace.enter()
        } catch {
            throw CNIError(error.errno == EPERM ? .permission : .namespace, error.description)
        }
        let context = quietContext(Settings())
        let removal: CNIRemoval
        do {
            let lock = try context.lockNamespace()
            defer { withExtendedLifetime(lock) {} }
            removal = CNIRemoval.run(context)
        } catch {
            throw Self.cniError(error)
        }
        call.details += removal.notes
        guard let first = removal.failures.first else {
            return removal.removed.isEmpty
                ? "nothing of ours installed" : "removed \(removal.removed.joined(separator: "; "))"
        }
        var error = Self.cniError(first)
        error.message =
            "could not remove every rule of meshinit from \(brief(path)) (\(removal.failures.count) failed)"
        error.details = removal.summary
        throw error
    }

    /// STATUS: ready when an ADD with this configuration can work on this node — the
    /// configuration valid (a pod without annotations resolves), and the backend there.
    func status(_ config: PluginConfig) throws(CNIError) {
        let context = try context(PodDecision.input(config), in: .current)
        let settings = context.settings
        if config.backend == .iptables {
            let ipv6Off = settings.run.ipv6Choice == .off
            do {
                try requireIptables(context, families: ipv6Off ? [.ipv4] : [.ipv4, .ipv6])
            } catch {
                throw CNIError(.notAvailable, error.message, details: error.details)
            }
        } else {
            do {
                _ = try context.sockets.get()
            } catch {
                throw CNIError(
                    .notAvailable, "backend \"\(config.backend.rawValue)\": no nf_tables netlink (\(error))",
                    details: "the kernel needs nf_tables; or set \"backend\": \"iptables\" where iptables works")
            }
        }
    }

    /// The iptables backend's binaries, checked before anything is done (the message names
    /// the config key, not the command-line flag).
    func requireIptables(_ context: Context, families: [Family]) throws(CNIError) {
        for family in families {
            do {
                _ = try context.iptables.tools(for: family)
            } catch {
                let tool = family == .ipv4 ? "iptables" : "ip6tables"
                throw CNIError(
                    .unavailable, "backend \"iptables\": no \(tool)-restore in PATH",
                    details:
                        "install iptables on the node, or set \"backend\": \"nftables\" (the netlink backend needs no binary)"
                )
            }
        }
    }

    /// Enters the pod's namespace, resolves the values (IPv6 detection sees the pod's
    /// interfaces) and plans.
    func prepare(_ namespace: any PodNamespace, _ config: PluginConfig, _ input: ConfigInput)
        throws(CNIError) -> (Context, Plan)
    {
        let context = try context(input, in: .handle(namespace))
        return (context, Planner.plan(context.settings.capture))
    }

    /// The values resolved in `namespace` (entered first), as a context whose log is silent:
    /// the plugin's one log line per call says what happened.
    func context(_ input: ConfigInput, in namespace: NamespaceChoice) throws(CNIError) -> Context {
        let settings: Settings
        do {
            settings = try boundary.resolve(.input(input), in: namespace)
        } catch let error as NamespaceError {
            throw CNIError(error.errno == EPERM ? .permission : .namespace, error.description)
        } catch let error as ConfigError {
            throw CNIError(error)
        } catch {
            throw CNIError(.invalidConfig, "\(error)")
        }
        return quietContext(settings)
    }

    func quietContext(_ settings: Settings) -> Context {
        var context = Context(settings, boundary: boundary)
        context.log = Logger(level: .none, json: false, descriptor: 2)
        return context
    }

    /// A command failure as a CNI error.
    public static func cniError(_ error: any Error) -> CNIError {
        guard let failure = error as? CommandFailure else { return CNIError(.installFailed, "\(error)") }
        return cniError(failure)
    }

    public static func cniError(_ failure: CommandFailure) -> CNIError {
        CNIError(failure.status.cniCode, configKeyAdvice(failure.message))
    }

    /// Advice written for the command line, in the plugin's terms (its settings are config
    /// keys, not flags).
    public static func configKeyAdvice(_ message: String) -> String {
        message.replacing("use --ipv6=off", with: "set \"ipv6\": \"off\"")
            .replacing("use --native-nftables", with: "set \"backend\": \"nftables\"")
    }

    public static func monotonicMicroseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000
    }
}
