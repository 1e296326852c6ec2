import MeshConfig
import MeshIptables
import MeshModel
import MeshNetlink
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The resolver's view of the live system (MeshSystem's libc calls).
struct HostLookup: SystemLookup {
    let system = LiveSystem()

    func userID(named name: String) -> UInt32? { system.userID(named: name) }
    func groupID(named name: String) -> UInt32? { system.groupID(named: name) }
    func detectIPv6(dualStack: Bool) -> Bool? { system.detectIPv6(dualStack: dualStack) }
    func loopbackHasIPv6() -> Bool { system.loopbackHasIPv6() }
    func readFile(_ path: String) -> String? { system.readFile(path) }
    func readFile(_ path: String, limit: Int) -> FileRead {
        do {
            return .text(String(decoding: try Files.read(path, limit: limit), as: UTF8.self))
        } catch {
            return error.errno == EFBIG ? .tooLarge : .unreadable
        }
    }
}

/// Resolves flags and environment into settings, mapping bad input to exit 64. When a
/// network namespace is named, it is entered first, so that everything after (interface
/// detection, rules, routes) happens inside it.
func resolveSettings(
    given: FlagMap<String>, environment: ProcessEnvironment = .current(), enterNamespace: Bool = true
) throws -> Settings {
    do {
        if enterNamespace,
            let netns = try ConfigResolver.networkNamespace(flags: given, environment: environment.values)
        {
            do {
                try enterNetworkNamespace(netns)
            } catch {
                throw failure(error)
            }
        }
        return try ConfigResolver(system: HostLookup()).resolve(flags: given, environment: environment.values)
    } catch let error as ConfigError {
        throw failure(error)
    }
}

func printWarnings(_ settings: Settings) {
    for warning in settings.warnings { writeStandardError("meshinit: warning: \(warning)\n") }
}

/// One nfnetlink socket per run, opened when first needed (each open and close costs).
final class NetfilterSocketCache {
    private var socket: NetfilterSocket?

    func get() throws(NetlinkError) -> NetfilterSocket {
        if let socket { return socket }
        let opened = try NetfilterSocket()
        socket = opened
        return opened
    }
}

/// The pieces a command needs to act: logger, process runner, backends.
struct Context {
    var settings: Settings
    var log: Logger
    let environment: ProcessEnvironment
    let sockets = NetfilterSocketCache()
    let cache = RunCache()

    init(_ settings: Settings, environment: ProcessEnvironment = .current()) {
        self.settings = settings
        self.environment = environment
        log = Logger(level: settings.run.logLevel, json: settings.run.logAsJSON)
    }

    /// Runs iptables tools with this process's environment (in the C locale).
    var runner: SpawnRunner {
        SpawnRunner(
            path: environment.path, environment: ProcessEnvironment.entries,
            timeoutMilliseconds: settings.run.childTimeoutMilliseconds)
    }

    var iptables: IptablesBackend {
        let log = self.log
        let sockets = self.sockets
        let cache = self.cache
        return IptablesBackend(
            runner: runner, forced: settings.run.forceIptablesVariant, lockWait: lockWaitSeconds,
            childTimeoutMilliseconds: settings.run.childTimeoutMilliseconds,
            legacyTablesLoaded: legacyTablesLoaded,
            hasTables: { variant, family in
                switch variant {
                case .legacy: return legacyTablesLoaded(family)
                case .nft:
                    // One netlink dump instead of an iptables-nft-save process (the table list
                    // read to choose the backend, when there is one).
                    if let inventory = cache.inventory { return inventory.hasIptablesNftTables(ipv6: family == .ipv6) }
                    guard let socket = try? sockets.get() else { return nil }
                    return try? NftablesBackend(transport: socket).hasIptablesNftTables(ipv6: family == .ipv6)
                case .plain: return nil
                }
            },
            log: { log.info($0) })
    }

    /// The netlink backend, on a socket in the current network namespace.
    func netlink() throws -> NftablesBackend {
        do {
            return NftablesBackend(transport: try sockets.get())
        } catch {
            throw failure(error)
        }
    }

    var routing: PolicyRouting {
        let log = self.log
        return PolicyRouting(log: { log.info($0) })
    }

    func logConfig(backend: String) {
        let c = settings.capture
        log.info(
            "meshinit \(meshinitVersion): proxy port \(c.proxyPort), inbound \(c.inboundCapturePort), tunnel \(c.inboundTunnelPort), uids \(c.proxyUIDs.map(\.description).joined(separator: ",")), gids \(c.proxyGIDs.map(\.description).joined(separator: ",")), mode \(c.interceptionMode.rawValue), ipv6 \(c.ipv6), dns \(c.dns.map { "\($0)" } ?? "off"), backend \(backend)"
        )
        for warning in settings.warnings { log.warn(warning) }
    }
}

/// Whether this namespace has legacy xtables tables (`/proc/net/ip{,6}_tables_names`).
func legacyTablesLoaded(_ family: Family) -> Bool {
    let file = family == .ipv4 ? "/proc/net/ip_tables_names" : "/proc/net/ip6_tables_names"
    return !(LiveSystem().readFile(file) ?? "").isEmpty
}

/// Seconds to wait for a lock (the namespace lock, and the xtables lock of iptables-legacy).
let lockWaitSeconds = 30

/// The namespace lock (see `NamespaceLock`), waited for as long as iptables waits for its own.
func lockNamespace(_ context: Context) throws -> NamespaceLock? {
    do {
        let lock = try NamespaceLock.acquire(timeoutSeconds: lockWaitSeconds)
        if lock == nil { context.log.info("no /proc/thread-self/ns/net to lock: going on without the namespace lock") }
        return lock
    } catch {
        throw failure(error)
    }
}
