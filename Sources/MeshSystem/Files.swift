import CMeshShims

#if canImport(Glibc)
    import Glibc
#endif

/// Files, for the CNI plugin (stdin, its log) and the node install (the binary and the
/// primary `.conflist`): reads, atomic replacement, directory listing and watching.
public enum Files {
    /// What a read takes at most unless told otherwise (the largest file meshinit reads is
    /// its own binary, for `cni install`: about 16 MB).
    public static let defaultLimit = 64 << 20

    /// Everything readable from a descriptor (stdin: until EOF), at most `limit` bytes: more
    /// is an error (EFBIG, naming the limit), never a silently cut input.
    public static func readAll(_ fd: Int32, limit: Int = defaultLimit) throws(SystemCallError) -> [UInt8] {
        var info = stat()
        if fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFREG, Int(info.st_size) > limit {
            throw tooLarge("read", limit: limit)
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemCallError("read", errno: errno)
            }
            if n == 0 { return bytes }
            guard bytes.count + n <= limit else { throw tooLarge("read", limit: limit) }
            bytes.append(contentsOf: chunk[0..<n])
        }
    }

    /// A file's bytes, at most `limit` of them (more is an error, EFBIG).
    public static func read(_ path: String, limit: Int = defaultLimit) throws(SystemCallError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SystemCallError("open \(path)", errno: errno) }
        defer { close(fd) }
        do {
            return try readAll(fd, limit: limit)
        } catch {
            throw error.errno == EFBIG
                ? tooLarge("read \(path)", limit: limit) : SystemCallError("read \(path)", errno: error.errno)
        }
    }

    /// `read PATH (more than 1 MiB): File too large (EFBIG)`.
    static func tooLarge(_ call: String, limit: Int) -> SystemCallError {
        SystemCallError("\(call) (more than \(sizeText(limit)))", errno: EFBIG)
    }

    /// `1 MiB`, `64 KiB`, `100 bytes`.
    public static func sizeText(_ bytes: Int) -> String {
        if bytes >= 1 << 20 && bytes % (1 << 20) == 0 { return "\(bytes >> 20) MiB" }
        if bytes >= 1 << 10 && bytes % (1 << 10) == 0 { return "\(bytes >> 10) KiB" }
        return "\(bytes) bytes"
    }

    /// Whether something exists at `path`.
    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0
    }

    /// The permission bits of `path`, or nil.
    public static func mode(_ path: String) -> mode_t? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return info.st_mode & 0o7777
    }

    /// Replaces `path` with `bytes` atomically: a temporary file in the same directory,
    /// written, flushed to disk, renamed over `path`, and the directory flushed too. A
    /// reader sees the old file or the new one, never a part.
    /// All of `bytes` written to `fd` (EINTR retried), then the mode set and the data synced;
    /// the first failure, naming `path`, or nil.
    static func writeDurably(_ fd: Int32, _ bytes: [UInt8], mode: mode_t, path: String) -> SystemCallError? {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if errno != EINTR { return SystemCallError("write \(path)", errno: errno) }
            } else {
                offset += n
            }
        }
        if fchmod(fd, mode) != 0 { return SystemCallError("chmod \(path)", errno: errno) }
        if fsync(fd) != 0 { return SystemCallError("fsync \(path)", errno: errno) }
        return nil
    }

    public static func replace(_ path: String, with bytes: [UInt8], mode: mode_t) throws(SystemCallError) {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { String(path[..<$0]) }.flatMap { $0.isEmpty ? "/" : $0 } ?? "."
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let temporary = "\(directory)/.\(name).meshinit-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { throw SystemCallError("create \(temporary)", errno: errno) }
        var failure = Files.writeDurably(fd, bytes, mode: mode, path: temporary)
        close(fd)
        if failure == nil, rename(temporary, path) != 0 { failure = SystemCallError("rename to \(path)", errno: errno) }
        if let failure {
            unlink(temporary)
            throw failure
        }
        let dir = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 {
            _ = fsync(dir)
            close(dir)
        }
    }

    /// Removes `path`; a missing file is not an error.
    public static func remove(_ path: String) throws(SystemCallError) {
        if unlink(path) != 0 && errno != ENOENT { throw SystemCallError("unlink \(path)", errno: errno) }
    }

    /// The names in a directory (without `.` and `..`).
    public static func list(_ path: String) throws(SystemCallError) -> [String] {
        guard Files.exists(path) else { throw SystemCallError("opendir \(path)", errno: ENOENT) }
        return directoryEntries(path)
    }

    /// This process's own executable (`/proc/self/exe`).
    public static func ownExecutable() throws(SystemCallError) -> String {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { throw SystemCallError("readlink /proc/self/exe", errno: errno) }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Opens `path` for appending (created 0644 if missing): the CNI plugin's log.
    public static func openForAppend(_ path: String) throws(SystemCallError) -> Int32 {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SystemCallError("open \(path)", errno: errno) }
        return fd
    }
}

/// Waits for changes in a directory (inotify), or for SIGTERM/SIGINT (signalfd): the node
/// install's watch mode, which puts our plugin back when the primary CNI rewrites its file.
public final class DirectoryWatch {
    private let inotify: Int32
    private let signals: Int32

    /// What ended a wait.
    public enum Event: Sendable, Hashable {
        case changed
        case timeout
        /// SIGTERM or SIGINT: time to stop.
        case stop
    }

    public init(_ directory: String) throws(SystemCallError) {
        let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard fd >= 0 else { throw SystemCallError("inotify_init1", errno: errno) }
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB)
        guard inotify_add_watch(fd, directory, mask) >= 0 else {
            let code = errno
            close(fd)
            throw SystemCallError("inotify_add_watch \(directory)", errno: code)
        }
        let sfd = cmesh_stop_signalfd()
        guard sfd >= 0 else {
            let code = errno
            close(fd)
            throw SystemCallError("signalfd", errno: code)
        }
        inotify = fd
        signals = sfd
    }

    deinit {
        close(inotify)
        close(signals)
    }

    /// Blocks until the directory changes, a stop signal arrives, or `milliseconds` pass.
    public func wait(milliseconds: Int32) -> Event {
        var fds = [
            pollfd(fd: inotify, events: Int16(POLLIN), revents: 0),
            pollfd(fd: signals, events: Int16(POLLIN), revents: 0),
        ]
        let ready = poll(&fds, 2, milliseconds)
        if ready <= 0 { return .timeout }
        if fds[1].revents != 0 { return .stop }
        var buffer = [UInt8](repeating: 0, count: 8192)
        while buffer.withUnsafeMutableBytes({ Glibc.read(inotify, $0.baseAddress, $0.count) }) > 0 {}
        return .changed
    }
}
