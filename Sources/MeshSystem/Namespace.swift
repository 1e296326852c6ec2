import CMeshShims

#if canImport(Glibc)
    import Glibc
#endif

/// Why entering a network namespace failed.
public struct NamespaceError: Error, Sendable, Hashable, CustomStringConvertible {
    public var path: String
    public var errno: Int32
    public var description: String { "cannot enter network namespace \(path): \(errnoText(errno))" }

    /// A `/proc/PID/ns/net` whose process has exited (found by a walk, gone when reached).
    public var vanished: Bool { path.hasPrefix("/proc/") && (errno == ENOENT || errno == ESRCH) }
}

/// Moves the calling thread (call it first thing, on the main thread, so every later socket
/// and child process lives there) into the network namespace at `path`
/// (`/var/run/netns/NAME`, `/proc/PID/ns/net`). `setns(2)` with CLONE_NEWNET.
public func enterNetworkNamespace(_ path: String) throws(NamespaceError) {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw NamespaceError(path: path, errno: errno) }
    defer { close(fd) }
    guard cmesh_setns_net(fd) == 0 else { throw NamespaceError(path: path, errno: errno) }
}
