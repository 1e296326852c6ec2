import MeshCNI
import MeshModel
import MeshRuntime
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// meshinit as a chained CNI plugin (spec 1.1.0): the runtime runs this binary (as
/// `meshinit`, from CNI_PATH) with `CNI_COMMAND` set and the network configuration on stdin.
/// stdout carries only the result or the error JSON; the one log line per call goes to the
/// configuration's `logFile`, or stderr.
///
/// Capture fails closed: ADD refuses what it cannot install exactly (a bad key or annotation,
/// no annotation map while the config requires the status annotation, the node's own
/// namespace, a lookup that would read the node instead of the pod). Teardown fails open: DEL
/// reads only what it needs, succeeds when the namespace is gone or holds nothing of ours,
/// and otherwise removes what it can and names what it could not.
enum CNIPlugin {
    static let variables = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"]

    /// stdin larger than this is refused (a network configuration with its annotations is
    /// kilobytes; Kubernetes caps a pod's annotations at 256 KiB).
    static let stdinLimit = 4 << 20
    /// A runtime closes stdin once written: waiting longer than this is a broken runtime.
    static let stdinSeconds = 30

    /// Whether the runtime invoked us as a plugin.
    static var invoked: Bool { getenv("CNI_COMMAND") != nil }

    /// Runs one CNI call; returns the exit status.
    static func run() -> Int32 {
        let started = CNIHandler.monotonicMicroseconds()
        var environment: [String: String] = [:]
        for name in variables {
            if let value = getenv(name) { environment[name] = String(cString: value) }
        }
        var call = CNIHandler.Call(environment: environment)
        let status: Int32
        var stdin: [UInt8] = []
        do {
            stdin = try readInput(environment["CNI_COMMAND"], &call)
            let request = try CNIRequest.parse(environment: environment, stdin: stdin)
            call.request = request
            call.logFile = PluginConfig.logFile(of: request.config)
            let output = try CNIHandler(boundary: .live(.current())).perform(request, &call)
            writeStandardOutput(output)
            status = 0
        } catch {
            if call.logFile == nil {
                call.logFile = PluginConfig.logFile(of: try? JSONParser.parse(stdin, options: .lenient))
            }
            let (message, details) = error.bounded
            call.verdict = "error \(error.code.rawValue): \(message)"
            call.details.insert(details, at: 0)
            writeStandardOutput(error.json(cniVersion: call.request?.cniVersion ?? Self.version(of: stdin)))
            status = 1
        }
        call.log(durationMicroseconds: CNIHandler.monotonicMicroseconds() - started)
        return status
    }

    /// stdin, bounded in size and time. VERSION needs none of it and DEL can do without it.
    static func readInput(_ command: String?, _ call: inout CNIHandler.Call) throws(CNIError) -> [UInt8] {
        do {
            return try FileEdit.readAll(0, limit: stdinLimit, seconds: stdinSeconds)
        } catch {
            if command == "VERSION" || command == "DEL" {
                call.details.append("stdin ignored: \(error)")
                return []
            }
            switch error {
            case .tooLarge:
                throw CNIError(
                    .invalidConfig, "the network configuration on stdin is larger than \(stdinLimit >> 20) MiB")
            case .timedOut, .system:
                throw CNIError(.ioFailure, "cannot read the network configuration on stdin", details: "\(error)")
            }
        }
    }

    /// The configuration's cniVersion, for an error found before the request was read whole
    /// (errors are written in the version the runtime asked for, where it is known).
    static func version(of stdin: [UInt8]) -> String {
        guard let text = (try? JSONParser.parse(stdin, options: .lenient))?["cniVersion"]?.string,
            CNIVersion.supported.contains(text)
        else { return CNIVersion.current }
        return text
    }
}
