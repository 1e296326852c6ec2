// The runtime (MeshRuntime) for every file of the CLI: its `Context`, `CommandFailure`,
// `failure(_:)` and the resolve entry, without an import in each command's file.
import MeshConfig
@_exported import MeshRuntime
import MeshSystem

extension Context {
    /// A context on the live system, with the environment this process was given.
    init(_ settings: Settings) { self.init(settings, boundary: .live(.current())) }

    /// The run's first log line.
    func logConfig(backend: String) { logConfig(backend: backend, version: meshinitVersion) }
}

/// Resolves flags and environment into settings (bad input is exit 64): the runtime's one
/// resolve entry on the live system. With `enterNamespace`, the network namespace the flags
/// name is entered first, so that everything after (interface detection, rules, routes)
/// happens inside it.
func resolveSettings(
    given: FlagMap<String>, environment: ProcessEnvironment = .current(), enterNamespace: Bool = true
) throws(CommandFailure) -> Settings {
    try SystemBoundary.live(environment).resolveForCommand(
        .flags(given, environment: environment.values), in: enterNamespace ? .named : .current)
}

func printWarnings(_ settings: Settings) {
    for warning in settings.warnings { writeStandardError("meshinit: warning: \(warning)\n") }
}
