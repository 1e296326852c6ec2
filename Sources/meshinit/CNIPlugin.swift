import MeshCNI
import MeshConfig
import MeshIptables
import MeshModel
import MeshPlanner
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// meshinit as a chained CNI plugin (spec 1.1.0): the runtime runs this binary (as
/// `meshinit`, from CNI_PATH) with `CNI_COMMAND` set and the network configuration on stdin.
/// stdout carries only the result or the error JSON; the one log line per call goes to the
/// configuration's `logFile`, or stderr.
enum CNIPlugin {
    static let variables = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"]

    /// Whether the runtime invoked us as a plugin.
    static var invoked: Bool { getenv("CNI_COMMAND") != nil }

    /// Runs one CNI call; returns the exit status.
    static func run() -> Int32 {
        let started = monotonicMicroseconds()
        var environment: [String: String] = [:]
        for name in variables {
            if let value = getenv(name) { environment[name] = String(cString: value) }
        }
        var call = Call(environment: environment)
        let status: Int32
        var stdin: [UInt8] = []
        do {
            stdin = try Files.readAll(0)
            let request = try CNIRequest.parse(environment: environment, stdin: stdin)
            call.request = request
            let output = try perform(request, &call)
            writeStandardOutput(output)
            status = 0
        } catch let error as CNIError {
            call.verdict = "error \(error.code.rawValue): \(error)"
            writeStandardOutput(error.json(cniVersion: call.request?.cniVersion ?? Self.version(of: stdin)))
            status = 1
        } catch {
            let failure = CNIError(.ioFailure, "cannot read the network configuration", details: "\(error)")
            call.verdict = "error \(failure.code.rawValue): \(failure)"
            writeStandardOutput(failure.json(cniVersion: CNIVersion.current))
            status = 1
        }
        call.log(durationMicroseconds: monotonicMicroseconds() - started)
        return status
    }

    /// The configuration's cniVersion, for an error found before the request was read whole
    /// (errors are written in the version the runtime asked for, where it is known).
    static func version(of stdin: [UInt8]) -> String {
        guard let text = (try? JSONParser.parse(stdin))?["cniVersion"]?.string, CNIVersion.supported.contains(text)
        else { return CNIVersion.current }
        return text
    }

    /// What one call did, for its log line.
    struct Call {
        var environment: [String: String]
        var request: CNIRequest?
        var logFile: String?
        var verdict = ""

        /// `{"time":…,"command":…,"containerID":…,"pod":…,"netns":…,"verdict":…,"durationMs":…}`.
        func log(durationMicroseconds: Int64) {
            let milliseconds =
                "\(durationMicroseconds / 1000).\(String(1000 + durationMicroseconds % 1000).dropFirst())"
            let line =
                JSONValue.object([
                    ("time", .string(Logger.timestamp())), ("plugin", .string("meshinit")),
                    ("command", .string(environment["CNI_COMMAND"] ?? "")),
                    ("containerID", .string(environment["CNI_CONTAINERID"] ?? "")),
                    ("pod", .string(request?.pod ?? "?")), ("netns", .string(environment["CNI_NETNS"] ?? "")),
                    ("verdict", .string(verdict)), ("durationMs", .numberText(milliseconds)),
                ]).serialized + "\n"
            if let logFile, let fd = try? Files.openForAppend(logFile) {
                writeAll(line, to: fd)
                close(fd)
            } else {
                writeStandardError(line)
            }
        }
    }

    static func perform(_ request: CNIRequest, _ call: inout Call) throws(CNIError) -> String {
        switch request.command {
        case .version:
            call.verdict = "version"
            return request.versionResult()
        case .status:
            // Ready whenever the binary runs: it needs no daemon, API server or binary.
            call.verdict = "ready"
            return ""
        case .gc:
            // Our state lives in each pod's namespace and goes with it: nothing to collect.
            call.verdict = "nothing to collect"
            return ""
        case .add, .check, .del:
            break
        }
        guard let json = request.config else { throw CNIError(.decodingFailure, "no network configuration on stdin") }
        let config = try PluginConfig(json)
        call.logFile = config.logFile
        switch request.command {
        case .add:
            switch PodDecision.decide(request, config) {
            case .skip(let reason):
                call.verdict = "skipped: \(reason)"
            case .capture(let input):
                call.verdict = try add(request, config, input)
            }
            return request.passThroughResult()
        case .check:
            switch PodDecision.decide(request, config) {
            case .skip(let reason):
                call.verdict = "skipped: \(reason)"
            case .capture(let input):
                try check(request, config, input)
                call.verdict = "rules match the plan"
            }
            return ""
        default:
            call.verdict = try delete(request)
            return ""
        }
    }

    /// ADD: the plan `meshinit plan` gives for the same values, installed in the pod's
    /// namespace. On any failure nothing of ours is left there.
    static func add(_ request: CNIRequest, _ config: PluginConfig, _ input: ConfigInput) throws(CNIError) -> String {
        let (context, plan) = try prepare(request, config, input)
        var used = RulesBackend.netlink
        do {
            let lock = try lockNamespace(context)
            defer { withExtendedLifetime(lock) {} }
            do {
                used = try applyPlan(plan, context, backend: config.backendRequest)
            } catch {
                // Nothing half-installed: remove whatever of ours this namespace holds now.
                _ = try? executeCleanup(try planCleanup(context), context)
                throw error
            }
        } catch {
            throw cniError(error)
        }
        return "installed (\(used == .iptables ? "iptables" : "nftables"))"
    }

    /// CHECK: `verify` — the installed rules must be the plan.
    static func check(_ request: CNIRequest, _ config: PluginConfig, _ input: ConfigInput) throws(CNIError) {
        let (context, plan) = try prepare(request, config, input)
        let differences: [String]
        do {
            differences = try verifyPlan(plan, context, backend: config.backendRequest)
        } catch {
            throw cniError(error)
        }
        if !differences.isEmpty {
            throw CNIError(
                .drift, "installed rules differ from the plan (\(differences.count) differences)",
                details: differences.joined(separator: "; "))
        }
    }

    /// DEL: everything of ours removed if the namespace is still there; success if not.
    static func delete(_ request: CNIRequest) throws(CNIError) -> String {
        guard !request.netns.isEmpty, Files.exists(request.netns) else {
            return "nothing to remove: the network namespace is gone"
        }
        do {
            try enterNetworkNamespace(request.netns)
        } catch {
            if error.errno == ENOENT { return "nothing to remove: the network namespace is gone" }
            throw CNIError(.namespace, error.description)
        }
        var context = Context(Settings(), environment: .current())
        context.log = Logger(level: .none, json: false, descriptor: 2)
        do {
            let removed = try cleanEverything(context)
            return removed.isEmpty ? "nothing of ours installed" : "removed \(removed.joined(separator: "; "))"
        } catch {
            throw cniError(error)
        }
    }

    /// Enters the pod's namespace, resolves the values (IPv6 detection sees the pod's
    /// interfaces) and plans.
    static func prepare(_ request: CNIRequest, _ config: PluginConfig, _ input: ConfigInput) throws(CNIError) -> (
        Context, Plan
    ) {
        guard Files.exists(request.netns) else {
            throw CNIError(.namespace, "network namespace \(request.netns) does not exist")
        }
        do {
            try enterNetworkNamespace(request.netns)
        } catch {
            throw CNIError(.namespace, error.description)
        }
        let settings: Settings
        do {
            settings = try ConfigResolver(system: HostLookup()).resolve(input)
        } catch {
            throw CNIError(.invalidConfig, error.description)
        }
        var context = Context(settings, environment: .current())
        context.log = Logger(level: .none, json: false, descriptor: 2)
        return (context, Planner.plan(settings.capture))
    }

    /// A command failure as a CNI error.
    static func cniError(_ error: any Error) -> CNIError {
        guard let failure = error as? CommandFailure else { return CNIError(.installFailed, "\(error)") }
        let code: CNIErrorCode =
            switch failure.status {
            case .usage: .invalidConfig
            case .permission: .permission
            case .unavailable: .unavailable
            case .temporary, .childTimeout: .tryAgainLater
            case .drift: .drift
            case .ok, .failure, .validation: .installFailed
            }
        return CNIError(code, failure.message)
    }

    static func monotonicMicroseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000
    }
}
