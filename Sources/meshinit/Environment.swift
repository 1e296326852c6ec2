import CArguments
import MeshConfig
import MeshRuntime
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

extension ProcessEnvironment {
    /// The process environment, read here and nowhere else: the variables meshinit's flags
    /// and knobs read (looked up one by one, cheaper at start-up than copying `environ`),
    /// PATH, and — only when a child process is run — the whole environment for it.
    static func current() -> ProcessEnvironment {
        var values: [String: String] = [:]
        for name in IstioFlag.environmentNames + EnvironmentKnob.allCases.map(\.rawValue) {
            if let value = getenv(name) { values[name] = String(cString: value) }
        }
        let path = getenv("PATH").map { String(cString: $0) } ?? SpawnRunner.defaultPath
        return ProcessEnvironment(values: values, path: path, entries: environmentEntries)
    }
}

/// Every `K=V` entry of the environment, for child processes.
@Sendable func environmentEntries() -> [String] {
    var out: [String] = []
    var cursor = environ
    while let entry = cursor.pointee {
        out.append(String(cString: entry))
        cursor += 1
    }
    return out
}

/// The process's arguments as the kernel passed them (an ELF constructor captures them:
/// without /proc, `CommandLine.arguments` is empty, and an install with no flags would apply
/// Istio's defaults). Nil when they cannot be read.
func processArguments() -> [String]? {
    let count = Int(carguments_argc())
    guard count >= 1, let argv = carguments_argv() else { return nil }
    return (1..<count).map { String(cString: argv[$0]!) }
}
