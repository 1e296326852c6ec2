import CMeshShims

#if canImport(Glibc)
    import Glibc
#endif

/// A network namespace found on the node.
public struct NetworkNamespaceFile: Sendable, Hashable {
    /// A path that refers to it (`/run/netns/NAME` preferred over `/proc/PID/ns/net`).
    public var path: String
    /// nsfs inode: the namespace's identity.
    public var inode: UInt64
}

/// Every network namespace reachable from `/run/netns/*` and `/proc/*/ns/net`,
/// deduplicated by inode, named ones first.
public func listNetworkNamespaces() -> [NetworkNamespaceFile] {
    var seen: Set<UInt64> = []
    var out: [NetworkNamespaceFile] = []
    func add(_ path: String) {
        var info = stat()
        guard stat(path, &info) == 0, seen.insert(UInt64(info.st_ino)).inserted else { return }
        out.append(NetworkNamespaceFile(path: path, inode: UInt64(info.st_ino)))
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

/// Runs `body` inside the namespace at `path`, then returns the calling thread to where it
/// was (children spawned inside inherit the namespace).
public func withNetworkNamespace<T>(_ path: String, _ body: () throws -> T) throws -> T {
    let home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
    guard home >= 0 else { throw NamespaceError(path: "/proc/thread-self/ns/net", errno: errno) }
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
