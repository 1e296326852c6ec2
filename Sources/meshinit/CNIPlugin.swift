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

    /// Whether the runtime invoked us as a plugin.
    static var invoked: Bool { getenv("CNI_COMMAND") != nil }

    /// Runs one CNI call with this process's `CNI_*` variables and stdin; returns the exit status.
    static func run() -> Int32 {
        var environment: [String: String] = [:]
        for name in variables {
            if let value = getenv(name) { environment[name] = String(cString: value) }
        }
        return CNIHandler(boundary: .live(.current())).run(
            environment: environment,
            stdin: { () throws(FileEdit.ReadFailure) -> [UInt8] in
                try FileEdit.readAll(0, limit: CNIHandler.stdinLimit, seconds: CNIHandler.stdinSeconds)
            },
            write: writeStandardOutput)
    }
}
