import CMeshShims

#if canImport(Glibc)
    import Glibc
#endif

/// What a finished command left behind. A non-zero status is data, not an error.
public struct CommandResult: Sendable, Hashable {
    public var status: Int32
    public var stdout: String
    public var stderr: String

    public init(status: Int32, stdout: String = "", stderr: String = "") {
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
    }
}

/// Why a command could not be run at all.
public enum CommandError: Error, Sendable, Hashable, CustomStringConvertible {
    case notFound(String)
    case spawnFailed(String, errno: Int32)

    public var description: String {
        switch self {
        case .notFound(let name): "\(name) not found in PATH"
        case .spawnFailed(let path, let code): "cannot run \(path): \(errnoText(code))"
        }
    }
}

/// The seam around running programs (iptables-restore, ip): appliers take one, tests pass a
/// recording fake.
public protocol CommandRunner {
    /// Absolute path of `name` in PATH, or nil.
    func which(_ name: String) -> String?
    /// Runs `path` with `arguments`, feeding `stdin`, and collects its output.
    func run(_ path: String, _ arguments: [String], stdin: String) throws(CommandError) -> CommandResult
}

/// `posix_spawn` with three pipes; stdin is fed while stdout/stderr are drained (poll), so
/// large payloads cannot deadlock. No shell, no Foundation.
public struct SpawnRunner: CommandRunner {
    public var searchPath: [String]
    /// The caller's environment (`K=V` entries), asked for when a child is started.
    let environment: @Sendable () -> [String]

    /// The children's environment: the caller's, without locale variables, plus `LC_ALL=C`,
    /// so that the messages meshinit classifies errors by (iptables' "Bad rule", "Permission
    /// denied", …) never depend on the locale.
    public var childEnvironment: [String] { Self.cLocale(environment()) }

    /// Searches `path` (a PATH value) for binaries; children get `environment` (`K=V`
    /// entries, the caller's environment as it is) with its locale variables replaced by
    /// `LC_ALL=C`. Nothing is read from this process's environment here: the CLI passes it.
    public init(path: String, environment: @escaping @Sendable () -> [String]) {
        searchPath = path.split(separator: ":").map(String.init)
        self.environment = environment
    }

    /// The PATH searched when the environment has none.
    public static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    /// `environment` with every locale variable (`LANG`, `LANGUAGE`, `LC_*`) replaced by `LC_ALL=C`.
    public static func cLocale(_ environment: [String]) -> [String] {
        environment.filter { entry in
            let name = entry.prefix { $0 != "=" }
            return !(name == "LANG" || name == "LANGUAGE" || name.hasPrefix("LC_"))
        } + ["LC_ALL=C"]
    }

    public func which(_ name: String) -> String? {
        if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
        for dir in searchPath where !dir.isEmpty {
            let candidate = dir + "/" + name
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    public func run(_ path: String, _ arguments: [String], stdin input: String) throws(CommandError) -> CommandResult {
        var inPipe: [Int32] = [0, 0]
        var outPipe: [Int32] = [0, 0]
        var errPipe: [Int32] = [0, 0]
        guard cmesh_pipe_cloexec(&inPipe) == 0 else { throw .spawnFailed(path, errno: errno) }
        guard cmesh_pipe_cloexec(&outPipe) == 0 else {
            close(inPipe[0])
            close(inPipe[1])
            throw .spawnFailed(path, errno: errno)
        }
        guard cmesh_pipe_cloexec(&errPipe) == 0 else {
            for fd in inPipe + outPipe { close(fd) }
            throw .spawnFailed(path, errno: errno)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)

        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        let envp: [UnsafeMutablePointer<CChar>?] = childEnvironment.map { strdup($0) } + [nil]
        defer { for p in envp { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, envp)
        close(inPipe[0])
        close(outPipe[1])
        close(errPipe[1])
        guard rc == 0 else {
            close(inPipe[1])
            close(outPipe[0])
            close(errPipe[0])
            throw .spawnFailed(path, errno: rc)
        }

        var stdinBytes = Array(input.utf8)
        var written = 0
        var inFD: Int32 = inPipe[1]
        if stdinBytes.isEmpty {
            close(inFD)
            inFD = -1
        }
        _ = fcntl(outPipe[0], F_SETFL, O_NONBLOCK)
        var out: [UInt8] = []
        var err: [UInt8] = []
        var outOpen = true
        var errOpen = true
        var buffer = [UInt8](repeating: 0, count: 65536)
        // SIGPIPE on a child that exits early must not kill us.
        signal(SIGPIPE, SIG_IGN)
        while outOpen || errOpen || inFD >= 0 {
            var fds: [pollfd] = []
            if inFD >= 0 { fds.append(pollfd(fd: inFD, events: Int16(POLLOUT), revents: 0)) }
            if outOpen { fds.append(pollfd(fd: outPipe[0], events: Int16(POLLIN), revents: 0)) }
            if errOpen { fds.append(pollfd(fd: errPipe[0], events: Int16(POLLIN), revents: 0)) }
            let ready = poll(&fds, nfds_t(fds.count), -1)
            if ready < 0 {
                if errno == EINTR { continue }
                break
            }
            for entry in fds where entry.revents != 0 {
                if entry.fd == inFD {
                    let n = stdinBytes.withUnsafeMutableBytes { raw in
                        write(inFD, raw.baseAddress! + written, raw.count - written)
                    }
                    if n > 0 { written += n }
                    if n < 0 && errno != EINTR && errno != EAGAIN || written >= stdinBytes.count {
                        close(inFD)
                        inFD = -1
                        stdinBytes = []
                    }
                } else {
                    let n = buffer.withUnsafeMutableBytes { read(entry.fd, $0.baseAddress, $0.count) }
                    if n > 0 {
                        if entry.fd == outPipe[0] {
                            out.append(contentsOf: buffer[0..<n])
                        } else {
                            err.append(contentsOf: buffer[0..<n])
                        }
                    } else if n == 0 || (errno != EINTR && errno != EAGAIN) {
                        if entry.fd == outPipe[0] { outOpen = false } else { errOpen = false }
                    }
                }
            }
        }
        close(outPipe[0])
        close(errPipe[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        // WIFEXITED / WEXITSTATUS are macros: decode by hand.
        let exitCode: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return CommandResult(
            status: exitCode, stdout: String(decoding: out, as: UTF8.self), stderr: String(decoding: err, as: UTF8.self)
        )
    }
}
