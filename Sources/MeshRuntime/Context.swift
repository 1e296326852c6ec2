import MeshConfig
import MeshIptables
import MeshModel
import MeshNetlink
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// One nfnetlink socket per run, opened when first needed (each open and close costs).
public final class NetfilterSocketCache {
    private var socket: (any NetlinkTransport)?
    private let open: () throws(NetlinkError) -> any NetlinkTransport

    init(open: @escaping () throws(NetlinkError) -> any NetlinkTransport) { self.open = open }

    public func get() throws(NetlinkError) -> any NetlinkTransport {
        if let socket { return socket }
        let opened = try open()
        socket = opened
        return opened
    }
}

/// What a run has read once and may use again until it writes.
public final class RunCache {
    /// The nft table list (its generation included), read while choosing the backend; cleared
    /// once rules are written, so that nothing acts on a list from before its own write.
    public var inventory: NftTables?
}

/// The pieces a command needs to act: settings, logger, the system boundary, and what is
/// opened or read once per run (the netfilter socket, the nft table list).
public struct Context {
    public var settings: Settings
    public var log: Logger
    public let boundary: SystemBoundary
    public let sockets: NetfilterSocketCache
    public let cache = RunCache()

    public init(_ settings: Settings, boundary: SystemBoundary) {
        self.settings = settings
        self.boundary = boundary
        sockets = NetfilterSocketCache(open: boundary.openNetfilter)
        log = Logger(level: settings.run.logLevel, json: settings.run.logAsJSON)
    }

    public var environment: ProcessEnvironment { boundary.environment }

    /// Runs iptables tools with the caller's environment (in the C locale).
    public var runner: any CommandRunner {
        boundary.runner(boundary.environment, settings.run.childTimeoutMilliseconds)
    }

    public var iptables: IptablesBackend {
        let log = self.log
        let sockets = self.sockets
        let cache = self.cache
        let legacyTablesLoaded = boundary.legacyTablesLoaded
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
    public func netlink() throws(CommandFailure) -> NftablesBackend {
        do {
            return NftablesBackend(transport: try sockets.get())
        } catch {
            throw failure(error)
        }
    }

    public var routing: PolicyRouting {
        let log = self.log
        return PolicyRouting(log: { log.info($0) }, open: boundary.openRoute, loopbackIndex: boundary.loopbackIndex)
    }

    /// The run's first log line: the values that shape the rules, and the backend.
    public func logConfig(backend: String, version: String) {
        let c = settings.capture
        log.info(
            "meshinit \(version): proxy port \(c.proxyPort), inbound \(c.inboundCapturePort), tunnel \(c.inboundTunnelPort), uids \(c.proxyUIDs.map(\.description).joined(separator: ",")), gids \(c.proxyGIDs.map(\.description).joined(separator: ",")), mode \(c.interceptionMode.rawValue), ipv6 \(c.ipv6), dns \(c.dns.map { "\($0)" } ?? "off"), backend \(backend)"
        )
        for warning in settings.warnings { log.warn(warning) }
    }

    /// The namespace lock (see `NamespaceLock`), waited for as long as iptables waits for its
    /// own. Hold the returned value for as long as the lock is needed.
    public func lockNamespace() throws(CommandFailure) -> AnyObject? {
        do {
            let lock = try boundary.lockNamespace(lockWaitSeconds)
            if lock == nil { log.info("no /proc/thread-self/ns/net to lock: going on without the namespace lock") }
            return lock
        } catch {
            throw failure(error)
        }
    }
}

/// Seconds to wait for a lock (the namespace lock, and the xtables lock of iptables-legacy).
public let lockWaitSeconds = 30
