import MeshConfig
import MeshSystem

/// Where a run's values come from.
public enum ConfigSource: Sendable {
    /// Istio's flags (as text) and the environment: install, plan, clean, verify, explain.
    case flags(FlagMap<String>, environment: [String: String])
    /// Layered values already gathered, e.g. the CNI plugin's config keys and a pod's
    /// annotations (`PodDecision.input`).
    case input(ConfigInput)

    var input: ConfigInput {
        switch self {
        case .flags(let flags, let environment): ConfigInput(flags: flags, environment: environment)
        case .input(let input): input
        }
    }
}

/// The network namespace values are resolved in (interface detection reads it, and whatever
/// runs after acts in it).
public enum NamespaceChoice {
    /// The caller's own.
    case current
    /// The one the values name (`--network-namespace`), entered first; the caller's if none.
    case named
    /// This path, entered first (explain's `--netns`); the caller's if nil.
    case path(String?)
    /// A namespace already opened and checked (the CNI plugin's `CNI_NETNS`), entered first.
    case handle(any PodNamespace)
}

extension SystemBoundary {
    /// The one way values become settings: enter the namespace asked for, then resolve.
    ///
    /// The lookup is the host's for flags and the pod's for gathered input (live — reading
    /// the namespace's interfaces — once a namespace was entered); `lookup` overrides it.
    ///
    /// - Throws: `ConfigError` for a bad value, `NamespaceError` when the namespace cannot be
    ///   entered (nothing is resolved then).
    public func resolve(
        _ source: ConfigSource, in namespace: NamespaceChoice, lookup: (any SystemLookup)? = nil
    ) throws -> Settings {
        let input = source.input
        var entered = false
        switch namespace {
        case .current:
            break
        case .named:
            if let path = try ConfigResolver.networkNamespace(input) {
                try enterNamespace(path)
                entered = true
            }
        case .path(let path):
            if let path {
                try enterNamespace(path)
                entered = true
            }
        case .handle(let handle):
            try handle.enter()
            entered = true
        }
        let system: any SystemLookup
        switch source {
        case .flags: system = lookup ?? hostLookup
        case .input: system = lookup ?? podLookup(entered)
        }
        return try ConfigResolver(system: system).resolve(input)
    }

    /// `resolve` for the command line: a bad value is exit 64, a namespace that cannot be
    /// entered its own status (see `failure(_:)`).
    public func resolveForCommand(
        _ source: ConfigSource, in namespace: NamespaceChoice, lookup: (any SystemLookup)? = nil
    ) throws(CommandFailure) -> Settings {
        do {
            return try resolve(source, in: namespace, lookup: lookup)
        } catch let error as ConfigError {
            throw failure(error)
        } catch let error as NamespaceError {
            throw failure(error)
        } catch {
            throw CommandFailure(status: .failure, message: "\(error)")
        }
    }
}
