import CMeshShims

#if canImport(Glibc)
    import Glibc
#endif

/// Why entering a network namespace failed.
public struct NamespaceError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The call that failed: `open` (the path) or `setns`.
    public var call: String
    public var path: String
    public var errno: Int32
    public var description: String { "cannot enter network namespace \(path): \(call): \(errnoText(errno))" }

    /// A `/proc/PID/ns/net` whose process has exited (found by a walk, gone when reached).
    public var vanished: Bool { path.hasPrefix("/proc/") && (errno == ENOENT || errno == ESRCH) }

    /// The path no longer refers to the namespace it did when listed (its process exited and
    /// the PID was reused), or refers to the caller's own: not entered.
    public var changed: Bool { call == NamespaceError.recheck }

    static let recheck = "re-check of the namespace's inode"
}

/// Moves the calling thread (call it first thing, on the main thread, so every later socket
/// and child process lives there) into the network namespace at `path`
/// (`/var/run/netns/NAME`, `/proc/PID/ns/net`). `setns(2)` with CLONE_NEWNET.
public func enterNetworkNamespace(_ path: String) throws(NamespaceError) {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw NamespaceError(call: "open", path: path, errno: errno) }
    defer { close(fd) }
    guard cmesh_setns_net(fd) == 0 else { throw NamespaceError(call: "setns", path: path, errno: errno) }
}

/// A network namespace found on the node.
public struct NetworkNamespaceFile: Sendable, Hashable {
    /// A path that refers to it (`/run/netns/NAME` preferred over `/proc/PID/ns/net`).
    public var path: String
    /// nsfs inode: the namespace's identity.
    public var inode: UInt64
    /// The nsfs device (with the inode, the identity; 0: not recorded).
    public var device: UInt64 = 0

    public init(path: String, inode: UInt64, device: UInt64 = 0) {
        self.path = path
        self.inode = inode
        self.device = device
    }
}

/// Every network namespace reachable from `/run/netns/*` and `/proc/*/ns/net`,
/// deduplicated by inode, named ones first.
public func listNetworkNamespaces() -> [NetworkNamespaceFile] {
    var seen: Set<UInt64> = []
    var out: [NetworkNamespaceFile] = []
    func add(_ path: String) {
        var info = stat()
        guard stat(path, &info) == 0, seen.insert(UInt64(info.st_ino)).inserted else { return }
        out.append(NetworkNamespaceFile(path: path, inode: UInt64(info.st_ino), device: UInt64(info.st_dev)))
    }
    for name in directoryEntries("/run/netns").sorted() { add("/run/netns/" + name) }
    for name in directoryEntries("/proc") where name.allSatisfy(\.isNumber) {
        add("/proc/\(name)/ns/net")
    }
    return out
}

/// The inode of the calling thread's network namespace.
public func currentNetworkNamespaceInode() -> UInt64? {
    var info = stat()
    guard stat("/proc/thread-self/ns/net", &info) == 0 else { return nil }
    return UInt64(info.st_ino)
}

/// Runs `body` inside the namespace `listed` (one `listNetworkNamespaces` found), never in
/// another: a `/proc/PID/ns/net` listed earlier may by now be another process's (the PID was
/// reused), even the caller's own. The file is opened once, its inode checked on that open
/// file, and `setns` is done on that same descriptor, so what is checked is what is entered;
/// a namespace whose inode is `refusing` (the caller's own) is never entered. Checked again
/// from inside, before `body` runs.
///
/// - Throws: `NamespaceError` — `changed` when the path now names another namespace or the
///   refused one; `vanished` when its process is gone.
public func withListedNetworkNamespace<T>(
    _ listed: NetworkNamespaceFile, refusing own: UInt64?, _ body: () throws -> T
) throws -> T {
    let fd = open(listed.path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw NamespaceError(call: "open", path: listed.path, errno: errno) }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw NamespaceError(call: "fstat", path: listed.path, errno: errno) }
    let inode = UInt64(info.st_ino)
    guard inode == listed.inode, listed.device == 0 || UInt64(info.st_dev) == listed.device, inode != own else {
        throw NamespaceError(call: NamespaceError.recheck, path: listed.path, errno: ESTALE)
    }
    let home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
    guard home >= 0 else { throw NamespaceError(call: "open", path: "/proc/thread-self/ns/net", errno: errno) }
    defer { close(home) }
    guard cmesh_setns_net(fd) == 0 else { throw NamespaceError(call: "setns", path: listed.path, errno: errno) }
    defer {
        if cmesh_setns_net(home) != 0 {
            writeStandardError("meshinit: cannot return to the original network namespace; exiting\n")
            exit(1)
        }
    }
    guard currentNetworkNamespaceInode() == listed.inode else {
        throw NamespaceError(call: NamespaceError.recheck, path: listed.path, errno: ESTALE)
    }
    return try body()
}

/// Runs `body` inside the namespace at `path`, then returns the calling thread to where it
/// was (children spawned inside inherit the namespace).
public func withNetworkNamespace<T>(_ path: String, _ body: () throws -> T) throws -> T {
    let home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
    guard home >= 0 else { throw NamespaceError(call: "open", path: "/proc/thread-self/ns/net", errno: errno) }
    defer { close(home) }
    try enterNetworkNamespace(path)
    defer {
        if cmesh_setns_net(home) != 0 {
            // Staying in a pod's namespace would make every later step act on the wrong one.
            writeStandardError("meshinit: cannot return to the original network namespace; exiting\n")
            exit(1)
        }
    }
    return try body()
}

func directoryEntries(_ path: String) -> [String] {
    guard let dir = opendir(path) else { return [] }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafePointer(to: entry.pointee.d_name) {
            $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

/// An exclusive lock on the calling thread's network namespace, held until released (or the
/// process exits): `flock(2)` on the namespace's nsfs inode (`/proc/thread-self/ns/net`).
/// Every process in the same namespace opens the same inode, so meshinit runs that change
/// one namespace (installs, cleanups, a node agent's and the pod's own) take turns, while
/// different pods' namespaces never contend — and it needs no file on disk (a read-only root
/// filesystem is fine) and does not touch `/run/xtables.lock`, which iptables-legacy takes
/// itself for every restore.
public final class NamespaceLock {
    private let fd: Int32

    /// Why the lock could not be taken.
    public enum Failure: Error, Sendable, Hashable, CustomStringConvertible {
        /// Another process held it for the whole wait.
        case busy(seconds: Int)
        case system(SystemCallError)

        public var description: String {
            switch self {
            case .busy(let seconds):
                "another meshinit is changing this network namespace (lock on /proc/thread-self/ns/net still held after \(seconds)s)"
            case .system(let error): "cannot lock the network namespace: \(error)"
            }
        }
    }

    /// Takes the lock, waiting up to `timeoutSeconds`. Returns nil where there is no `/proc`
    /// to lock through (a bare chroot): the caller goes on unlocked.
    public static func acquire(timeoutSeconds: Int) throws(Failure) -> NamespaceLock? {
        let fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT { return nil }
            throw .system(SystemCallError("open /proc/thread-self/ns/net", errno: code))
        }
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let deadline = Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000 + Int64(timeoutSeconds) * 1000
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            guard code == EWOULDBLOCK || code == EINTR else {
                close(fd)
                throw .system(SystemCallError("flock /proc/thread-self/ns/net", errno: code))
            }
            clock_gettime(CLOCK_MONOTONIC, &ts)
            if Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000 >= deadline {
                close(fd)
                throw .busy(seconds: timeoutSeconds)
            }
            usleep(5000)
        }
        return NamespaceLock(fd: fd)
    }

    private init(fd: Int32) { self.fd = fd }

    deinit { close(fd) }
}

/// Whether IPv6 can hold anything in this network namespace.
public enum IPv6Availability: Sendable, Hashable {
    case available
    /// The kernel has no IPv6 (booted with `ipv6.disable=1`, or built without it).
    case unsupported
    /// `net.ipv6.conf.all.disable_ipv6=1` in this namespace.
    case disabled

    public var reason: String? {
        switch self {
        case .available: nil
        case .unsupported: "the kernel has no IPv6 (AF_INET6 sockets are not supported)"
        case .disabled: "IPv6 is disabled in this network namespace (net.ipv6.conf.all.disable_ipv6=1)"
        }
    }

    /// Asks the kernel: an AF_INET6 socket, then the namespace's `disable_ipv6` sysctl.
    public static func current() -> IPv6Availability {
        let fd = socket(AF_INET6, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { return errno == EAFNOSUPPORT ? .unsupported : .available }
        close(fd)
        let flag = LiveSystem().readFile("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        return flag?.first == "1" ? .disabled : .available
    }
}

/// Whether a TCP socket of this network namespace listens on `port` (IPv4 or IPv6), from
/// `/proc/thread-self/net/tcp{,6}` (which show the calling thread's namespace). Nil when
/// neither can be read.
public func tcpListening(on port: UInt16) -> Bool? {
    var readAny = false
    for file in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        guard let text = LiveSystem().readFile(file) else { continue }
        readAny = true
        for line in text.split(separator: "\n").dropFirst() {
            // "  0: 00000000:3A99 00000000:0000 0A ..." — local address:port (hex), state 0A = LISTEN.
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 3, fields[3] == "0A", let colon = fields[1].lastIndex(of: ":"),
                let local = UInt16(fields[1][fields[1].index(after: colon)...], radix: 16)
            else { continue }
            if local == port { return true }
        }
    }
    return readAny ? false : nil
}
