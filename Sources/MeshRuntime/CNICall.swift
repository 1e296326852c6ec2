import MeshCNI
import MeshModel
import MeshSystem

extension CNIHandler {
    /// stdin larger than this is refused (a network configuration with its annotations is
    /// kilobytes; Kubernetes caps a pod's annotations at 256 KiB).
    public static let stdinLimit = 4 << 20
    /// A runtime closes stdin once written: waiting longer than this is a broken runtime.
    public static let stdinSeconds = 30

    /// Runs one CNI call: reads the request (`environment` holds the `CNI_*` variables;
    /// `stdin` reads the network configuration), carries it out, hands `write` the result or
    /// the error JSON for stdout, then logs the call's line. Returns the exit status.
    public func run(
        environment: [String: String], stdin read: () throws(FileEdit.ReadFailure) -> [UInt8],
        write: (String) -> Void
    ) -> Int32 {
        let started = Self.monotonicMicroseconds()
        var call = Call(environment: environment)
        let status: Int32
        var stdin: [UInt8] = []
        do {
            stdin = try Self.readInput(environment["CNI_COMMAND"], read, &call)
            let request = try CNIRequest.parse(environment: environment, stdin: stdin)
            call.request = request
            call.logFile = PluginConfig.logFile(of: request.config)
            let output = try perform(request, &call)
            write(output)
            status = 0
        } catch {
            if call.logFile == nil {
                call.logFile = PluginConfig.logFile(of: try? JSONParser.parse(stdin, options: .lenient))
            }
            let (message, details) = error.bounded
            call.verdict = "error \(error.code.rawValue): \(message)"
            call.details.insert(details, at: 0)
            write(error.json(cniVersion: call.request?.cniVersion ?? Self.version(of: stdin)))
            status = 1
        }
        call.log(durationMicroseconds: Self.monotonicMicroseconds() - started)
        return status
    }

    /// stdin, bounded in size and time. VERSION needs none of it and DEL can do without it.
    static func readInput(
        _ command: String?, _ read: () throws(FileEdit.ReadFailure) -> [UInt8], _ call: inout Call
    ) throws(CNIError) -> [UInt8] {
        do {
            return try read()
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
