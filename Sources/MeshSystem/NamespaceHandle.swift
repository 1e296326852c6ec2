import CMeshShims

#if canImport(Glibc)
    import Glibc
#endif

/// An open network namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`): checked once when
/// opened, and entered through the same descriptor, so the path is looked up once and what was
/// checked is what is entered (a path replaced in between cannot redirect us).
public final class NetworkNamespaceHandle {
    /// A namespace's identity: the device and inode of its nsfs file (what libcni's skel
    /// compares to refuse the plugin's own namespace).
    public struct Identity: Sendable, Hashable, CustomStringConvertible {
        public var device: UInt64
        public var inode: UInt64

        public init(device: UInt64, inode: UInt64) {
            self.device = device
            self.inode = inode
        }

        public var description: String { "net:[\(inode)]" }
    }

    /// Why a path is not a network namespace that can be entered.
    public enum Failure: Error, Sendable, Hashable, CustomStringConvertible {
        /// Nothing at the path (or a parent is not a directory).
        case missing(path: String)
        /// Something that is not a network namespace (a regular file, another namespace type).
        case notNetworkNamespace(path: String)
        /// Opening or entering it failed otherwise (permission, …).
        case system(NamespaceError)

        public var description: String {
            switch self {
            case .missing(let path): "network namespace \(path) does not exist"
            case .notNetworkNamespace(let path): "\(path) is not a network namespace"
            case .system(let error): error.description
            }
        }
    }

    private let fd: Int32
    public let path: String
    public let identity: Identity

    /// `NS_GET_NSTYPE` (linux/nsfs.h: `_IO(0xb7, 0x3)`).
    private static let getNamespaceType: UInt = 0xb703
    private static let cloneNewNet: Int32 = 0x4000_0000

    /// Opens `path` and checks that it is a network namespace.
    public static func open(_ path: String) throws(Failure) -> NetworkNamespaceHandle {
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT || code == ENOTDIR { throw .missing(path: path) }
            throw .system(NamespaceError(call: "open", path: path, errno: code))
        }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let code = errno
            close(fd)
            throw .system(NamespaceError(call: "fstat", path: path, errno: code))
        }
        // A namespace file answers NS_GET_NSTYPE; anything else (a regular file, a directory)
        // fails with ENOTTY.
        guard ioctl(fd, getNamespaceType) == cloneNewNet else {
            close(fd)
            throw .notNetworkNamespace(path: path)
        }
        return NetworkNamespaceHandle(
            fd: fd, path: path, identity: Identity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino)))
    }

    private init(fd: Int32, path: String, identity: Identity) {
        self.fd = fd
        self.path = path
        self.identity = identity
    }

    deinit { close(fd) }

    /// Moves the calling thread into the namespace (`setns(2)`); call it on the main thread
    /// before any socket is opened or child spawned.
    public func enter() throws(NamespaceError) {
        guard cmesh_setns_net(fd) == 0 else { throw NamespaceError(call: "setns", path: path, errno: errno) }
    }

    /// The identity of the namespace at `path`, or nil.
    public static func identity(of path: String) -> Identity? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Identity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }

    /// The namespaces a pod's can never be: this process's own (the node's, for a plugin the
    /// runtime runs) and init's (the host's, also when this process runs elsewhere).
    public static func nodeNamespaces() -> [(what: String, identity: Identity)] {
        var out: [(String, Identity)] = []
        if let own = identity(of: "/proc/thread-self/ns/net") ?? identity(of: "/proc/self/ns/net") {
            out.append(("the plugin's own network namespace (the node's)", own))
        }
        if let initial = identity(of: "/proc/1/ns/net") {
            out.append(("the network namespace of PID 1 (the host's)", initial))
        }
        return out
    }
}
