import MeshConfig
import MeshModel
import MeshNetlink
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// What a run was given by its caller: the variables meshinit's flags and knobs read, PATH,
/// and (only when a child process is started) the whole environment for it. The CLI reads
/// the process environment; the runtime never calls `getenv`.
public struct ProcessEnvironment: Sendable {
    /// Istio's flag variables and aliases, the env-only knobs: name → value.
    public var values: [String: String]
    public var path: String
    /// Every `K=V` entry, for child processes.
    public var entries: @Sendable () -> [String]

    public init(
        values: [String: String] = [:], path: String = SpawnRunner.defaultPath,
        entries: @escaping @Sendable () -> [String] = { [] }
    ) {
        self.values = values
        self.path = path
        self.entries = entries
    }
}

/// A network namespace a CNI call acts in: opened and checked once, entered through the same
/// handle (`NetworkNamespaceHandle` on the live system).
public protocol PodNamespace: AnyObject {
    var path: String { get }
    var identity: NetworkNamespaceHandle.Identity { get }
    /// Moves the calling thread into the namespace.
    func enter() throws(NamespaceError)
}

extension NetworkNamespaceHandle: PodNamespace {}

/// The runtime's seam around the system: every effect an install, a cleanup or a CNI call
/// has (children, netlink sockets, the namespace lock, namespace files, `/proc` reads) goes
/// through one of these. `live` is the machine; tests build one from fakes and run every
/// path without root.
public struct SystemBoundary {
    public var environment: ProcessEnvironment
    /// The process runner for iptables' tools, with a deadline per child.
    public var runner: (_ environment: ProcessEnvironment, _ timeoutMilliseconds: Int64) -> any CommandRunner
    /// A `NETLINK_NETFILTER` socket in the current network namespace.
    public var openNetfilter: () throws(NetlinkError) -> any NetlinkTransport
    /// A `NETLINK_ROUTE` socket in the current network namespace, and `lo`'s index.
    public var openRoute: () throws(PolicyRouting.Failure) -> any NetlinkIO
    public var loopbackIndex: () -> UInt32
    /// Whether legacy xtables tables are loaded (`/proc/net/ip{,6}_tables_names`).
    public var legacyTablesLoaded: (Family) -> Bool
    public var ipv6: () -> IPv6Availability
    /// Takes the namespace lock (see `NamespaceLock`); nil: none to take, go on unlocked.
    public var lockNamespace: (_ timeoutSeconds: Int) throws(NamespaceLock.Failure) -> AnyObject?
    /// Opens a network namespace file (CNI_NETNS) and checks it is one.
    public var openNamespace: (String) throws(NetworkNamespaceHandle.Failure) -> any PodNamespace
    /// The namespaces a pod's can never be (see `NetworkNamespaceHandle.nodeNamespaces`).
    public var nodeNamespaces: () -> [(what: String, identity: NetworkNamespaceHandle.Identity)]
    /// The resolver's view of the system for the CLI (users, groups, files, interfaces).
    public var hostLookup: any SystemLookup
    /// The resolver's view in CNI mode: `live` once inside the pod's namespace.
    public var podLookup: (_ live: Bool) -> any SystemLookup
    /// Enters the network namespace at a path (`--network-namespace`, explain's `--netns`).
    public var enterNamespace: (String) throws(NamespaceError) -> Void

    public init(
        environment: ProcessEnvironment,
        runner: @escaping (ProcessEnvironment, Int64) -> any CommandRunner,
        openNetfilter: @escaping () throws(NetlinkError) -> any NetlinkTransport,
        openRoute: @escaping () throws(PolicyRouting.Failure) -> any NetlinkIO,
        loopbackIndex: @escaping () -> UInt32,
        legacyTablesLoaded: @escaping (Family) -> Bool,
        ipv6: @escaping () -> IPv6Availability,
        lockNamespace: @escaping (Int) throws(NamespaceLock.Failure) -> AnyObject?,
        openNamespace: @escaping (String) throws(NetworkNamespaceHandle.Failure) -> any PodNamespace,
        nodeNamespaces: @escaping () -> [(what: String, identity: NetworkNamespaceHandle.Identity)],
        hostLookup: any SystemLookup,
        podLookup: @escaping (Bool) -> any SystemLookup,
        enterNamespace: @escaping (String) throws(NamespaceError) -> Void
    ) {
        self.environment = environment
        self.runner = runner
        self.openNetfilter = openNetfilter
        self.openRoute = openRoute
        self.loopbackIndex = loopbackIndex
        self.legacyTablesLoaded = legacyTablesLoaded
        self.ipv6 = ipv6
        self.lockNamespace = lockNamespace
        self.openNamespace = openNamespace
        self.nodeNamespaces = nodeNamespaces
        self.hostLookup = hostLookup
        self.podLookup = podLookup
        self.enterNamespace = enterNamespace
    }

    /// This machine, with the environment the CLI read.
    public static func live(_ environment: ProcessEnvironment) -> SystemBoundary {
        SystemBoundary(
            environment: environment,
            runner: { environment, timeout in
                SpawnRunner(path: environment.path, environment: environment.entries, timeoutMilliseconds: timeout)
            },
            openNetfilter: { () throws(NetlinkError) -> any NetlinkTransport in try NetfilterSocket() },
            openRoute: PolicyRouting.openSocket,
            loopbackIndex: { if_nametoindex("lo") },
            legacyTablesLoaded: liveLegacyTablesLoaded,
            ipv6: IPv6Availability.current,
            lockNamespace: { seconds throws(NamespaceLock.Failure) -> AnyObject? in
                try NamespaceLock.acquire(timeoutSeconds: seconds)
            },
            openNamespace: { path throws(NetworkNamespaceHandle.Failure) -> any PodNamespace in
                try NetworkNamespaceHandle.open(path)
            },
            nodeNamespaces: NetworkNamespaceHandle.nodeNamespaces,
            hostLookup: HostLookup(),
            podLookup: { PodLookup(live: $0) },
            enterNamespace: enterNetworkNamespace)
    }
}

/// Whether this namespace has legacy xtables tables (`/proc/net/ip{,6}_tables_names`).
func liveLegacyTablesLoaded(_ family: Family) -> Bool {
    let file = family == .ipv4 ? "/proc/net/ip_tables_names" : "/proc/net/ip6_tables_names"
    return !(LiveSystem().readFile(file) ?? "").isEmpty
}

/// The resolver's view of the live system (MeshSystem's libc calls).
public struct HostLookup: SystemLookup {
    let system = LiveSystem()

    public init() {}

    public func userID(named name: String) -> UInt32? { system.userID(named: name) }
    public func groupID(named name: String) -> UInt32? { system.groupID(named: name) }
    public func detectIPv6(dualStack: Bool) -> Bool? { system.detectIPv6(dualStack: dualStack) }
    public func loopbackHasIPv6() -> Bool { system.loopbackHasIPv6() }
    public func readFile(_ path: String) -> String? { system.readFile(path) }
    public func readFile(_ path: String, limit: Int) -> FileRead {
        do {
            return .text(String(decoding: try Files.read(path, limit: limit), as: UTF8.self))
        } catch {
            return error.errno == EFBIG ? .tooLarge : .unreadable
        }
    }
}

/// The resolver's view of the system in CNI mode. The plugin runs on the node: the node's
/// passwd, group and resolv.conf are not the pod's, so nothing is looked up by name or read
/// from a file (`PluginConfig` refuses what would need it). IPv6 detection reads the
/// interfaces of the namespace the plugin is in — the pod's, once entered (`live`); STATUS
/// resolves without entering one and detects nothing.
public struct PodLookup: SystemLookup {
    public var live: Bool

    public init(live: Bool) { self.live = live }

    public func userID(named name: String) -> UInt32? { nil }
    public func groupID(named name: String) -> UInt32? { nil }
    public func detectIPv6(dualStack: Bool) -> Bool? { live ? LiveSystem().detectIPv6(dualStack: dualStack) : false }
    public func loopbackHasIPv6() -> Bool { live ? LiveSystem().loopbackHasIPv6() : false }
    public func readFile(_ path: String) -> String? { nil }
}
