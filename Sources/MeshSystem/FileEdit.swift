#if canImport(Glibc)
    import Glibc
#endif

/// Bounded input and compare-and-swap file replacement, for the CNI plugin (its stdin) and the
/// node install (the primary CNI's `.conflist`, which another program owns and rewrites).
public enum FileEdit {
    /// Why bounded input could not be read.
    public enum ReadFailure: Error, Sendable, Hashable, CustomStringConvertible {
        /// More than the limit.
        case tooLarge(limit: Int)
        /// No end of input within the deadline.
        case timedOut(seconds: Int)
        case system(SystemCallError)

        public var description: String {
            switch self {
            case .tooLarge(let limit): "more than \(limit) bytes"
            case .timedOut(let seconds): "no end of input after \(seconds) s"
            case .system(let error): error.description
            }
        }
    }

    /// Everything readable from `fd` until EOF, refusing more than `limit` bytes (it stops
    /// reading there) and waiting at most `seconds` in all.
    public static func readAll(_ fd: Int32, limit: Int, seconds: Int) throws(ReadFailure) -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        let deadline = monotonicMilliseconds() + Int64(seconds) * 1000
        while true {
            let left = deadline - monotonicMilliseconds()
            guard left > 0 else { throw .timedOut(seconds: seconds) }
            var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let n = poll(&ready, 1, Int32(min(left, Int64(Int32.max))))
            if n < 0 {
                if errno == EINTR { continue }
                throw .system(SystemCallError("poll", errno: errno))
            }
            if n == 0 { continue }
            let want = min(chunk.count, limit + 1 - bytes.count)
            let got = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, want) }
            if got < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw .system(SystemCallError("read", errno: errno))
            }
            if got == 0 { return bytes }
            bytes.append(contentsOf: chunk[0..<got])
            if bytes.count > limit { throw .tooLarge(limit: limit) }
        }
    }

    /// A file's bytes, refusing more than `limit`.
    public static func read(_ path: String, limit: Int) throws(ReadFailure) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .system(SystemCallError("open \(path)", errno: errno)) }
        defer { close(fd) }
        var info = stat()
        if fstat(fd, &info) == 0, Int(info.st_size) > limit { throw .tooLarge(limit: limit) }
        do {
            return try readAll(fd, limit: limit, seconds: 60)
        } catch .system(let error) {
            throw .system(SystemCallError("read \(path)", errno: error.errno))
        }
    }

    /// What `replace(_:expecting:with:mode:)` did.
    public enum Outcome: Sendable, Hashable {
        case replaced
        /// The file no longer held the expected bytes: nothing was written (read it again).
        case changed
    }

    /// Replaces `path` with `bytes`, but only if it still holds `expected` (the bytes the new
    /// content was derived from; nil: whatever it holds): a temporary file in the same directory, created exclusively
    /// (`O_EXCL`: never someone else's file, nor one left by a crash), written and flushed; the
    /// file is read again and compared right before the rename, so another writer's change in
    /// the meantime is not reverted (`.changed`: the caller re-reads and re-edits). The rename
    /// is atomic: a reader sees the old file or the new one. The window left is the one between
    /// that last read and the rename.
    public static func replace(_ path: String, expecting expected: [UInt8]?, with bytes: [UInt8], mode: mode_t)
        throws(SystemCallError) -> Outcome
    {
        try replace(path, expecting: expected, with: bytes, mode: mode) { name, attempt in
            // A dot name without the configuration suffix: runtimes do not load it.
            ".\(name).meshinit-\(getpid())-\(attempt)-\(randomSuffix())"
        }
    }

    /// `temporaryName(name, attempt)`: the temporary file's name in the directory (a test can
    /// make it collide).
    static func replace(
        _ path: String, expecting expected: [UInt8]?, with bytes: [UInt8], mode: mode_t,
        temporaryName: (String, Int) -> String
    ) throws(SystemCallError) -> Outcome {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { String(path[..<$0]) }.flatMap { $0.isEmpty ? "/" : $0 } ?? "."
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        var fd: Int32 = -1
        var temporary = ""
        for attempt in 0..<16 {
            temporary = "\(directory)/\(temporaryName(name, attempt))"
            fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
            if fd >= 0 || errno != EEXIST { break }
        }
        guard fd >= 0 else { throw SystemCallError("create \(temporary)", errno: errno) }
        let failure = Files.writeDurably(fd, bytes, mode: mode, path: temporary)
        close(fd)
        if let failure {
            unlink(temporary)
            throw failure
        }
        if let expected {
            let now: [UInt8]?
            do {
                now = try read(path, limit: expected.count + 65536)
            } catch {
                now = nil
            }
            guard now == expected else {
                unlink(temporary)
                return .changed
            }
        }
        if rename(temporary, path) != 0 {
            let code = errno
            unlink(temporary)
            throw SystemCallError("rename to \(path)", errno: code)
        }
        let dir = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 {
            _ = fsync(dir)
            close(dir)
        }
        return .replaced
    }

    /// A name part another process is unlikely to pick (O_EXCL makes sure it is ours).
    static func randomSuffix() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let mixed =
            (UInt64(bitPattern: Int64(ts.tv_nsec)) ^ UInt64(bitPattern: Int64(ts.tv_sec)) << 20)
            &* 0x9e37_79b9_7f4a_7c15
        return String(mixed >> 16, radix: 36)
    }

    static func monotonicMilliseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}
