import CMeshShims

#if canImport(Glibc)
    import Glibc
#endif

/// What a finished command left behind. A non-zero status is data, not an error.
public struct CommandResult: Sendable, Hashable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    /// Bytes of stdout past the runner's limit, read and dropped (0: `stdout` is complete).
    /// A cut dump must never be taken for the whole state.
    public var stdoutDropped: Int

    public init(status: Int32, stdout: String = "", stderr: String = "", stdoutDropped: Int = 0) {
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        self.stdoutDropped = stdoutDropped
    }
}

/// Why a command could not be run at all, or did not finish.
public enum CommandError: Error, Sendable, Hashable, CustomStringConvertible {
    case notFound(String)
    case spawnFailed(String, errno: Int32)
    /// It ran past its deadline and was killed (SIGKILL to its process group).
    case timedOut(String, milliseconds: Int64)

    public var description: String {
        switch self {
        case .notFound(let name): "\(name) not found in PATH"
        case .spawnFailed(let path, let code): "cannot run \(path): \(errnoText(code))"
        case .timedOut(let path, let milliseconds):
            "\(path) did not finish within \(durationText(milliseconds)): killed"
        }
    }
}

/// `30s`, `1500ms`: a deadline as the flag takes it.
public func durationText(_ milliseconds: Int64) -> String {
    milliseconds % 1000 == 0 ? "\(milliseconds / 1000)s" : "\(milliseconds)ms"
}

/// The seam around running programs (iptables-restore, ip): appliers take one, tests pass a
/// recording fake.
public protocol CommandRunner {
    /// Absolute path of `name` in PATH, or nil.
    func which(_ name: String) -> String?
    /// Runs `path` with `arguments`, feeding `stdin`, and collects its output.
    func run(_ path: String, _ arguments: [String], stdin: String) throws(CommandError) -> CommandResult
}

/// `posix_spawn` with three pipes, and one poll loop that feeds stdin (non-blocking, a
/// chunk at a time) while it drains stdout and stderr, so a child that writes before it
/// reads (or never reads) cannot block us: nothing waits on one pipe while another is full.
/// Every child has a deadline: past it, its process group is killed (SIGKILL) and the run
/// fails with `.timedOut`. What is kept of its output is bounded (stdout up to
/// `stdoutLimit`, the rest counted in `stdoutDropped`; stderr's first and last
/// `stderrLimit / 2` bytes); the rest is read and dropped, so the child never blocks on a
/// full pipe. The child's end is watched through a pidfd (Linux 5.3+), so a child that
/// closed its pipes but hangs, or exited while a grandchild holds them, is seen as such.
/// No shell, no Foundation.
public struct SpawnRunner: CommandRunner {
    public var searchPath: [String]
    /// The caller's environment (`K=V` entries), asked for when a child is started.
    let environment: @Sendable () -> [String]
    /// How long one child may run before it is killed.
    public var timeoutMilliseconds: Int64
    /// stdout kept at most (an iptables-save of 10,000 excluded CIDRs is about 0.6 MB).
    public var stdoutLimit = 16 << 20
    /// stderr kept at most: its first and its last half (the messages that matter are the
    /// first line and the `line N failed` at the end).
    public var stderrLimit = 64 << 10
    /// Watch the child's end through a pidfd (false: the pre-5.3 way, pipes at EOF then a
    /// bounded wait; tests run both).
    var usesPidfd = true

    /// The deadline of each child unless `--child-timeout` / `MESHINIT_CHILD_TIMEOUT` says
    /// otherwise: 30 s.
    public static let defaultTimeoutMilliseconds: Int64 = 30_000

    /// The children's environment: the caller's, without locale variables, plus `LC_ALL=C`,
    /// so that the messages meshinit classifies errors by (iptables' "Bad rule", "Permission
    /// denied", …) never depend on the locale.
    public var childEnvironment: [String] { Self.cLocale(environment()) }

    /// Searches `path` (a PATH value) for binaries; children get `environment` (`K=V`
    /// entries, the caller's environment as it is) with its locale variables replaced by
    /// `LC_ALL=C`, and `timeoutMilliseconds` each. Nothing is read from this process's
    /// environment here: the CLI passes it.
    public init(
        path: String, environment: @escaping @Sendable () -> [String],
        timeoutMilliseconds: Int64 = SpawnRunner.defaultTimeoutMilliseconds
    ) {
        searchPath = path.split(separator: ":").map(String.init)
        self.environment = environment
        self.timeoutMilliseconds = timeoutMilliseconds
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
        // Its own process group (killed whole at the deadline), no blocked signals (a caller
        // may block SIGTERM for a signalfd), SIGPIPE back to its default (we ignore it).
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var defaultSignals = sigset_t()
        sigemptyset(&defaultSignals)
        sigaddset(&defaultSignals, SIGPIPE)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &defaultSignals)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        let envp: [UnsafeMutablePointer<CChar>?] = childEnvironment.map { strdup($0) } + [nil]
        defer { for p in envp { free(p) } }
        var pid: pid_t = 0
        // SIGPIPE on a child that exits early must not kill us.
        signal(SIGPIPE, SIG_IGN)
        let rc = posix_spawn(&pid, path, &actions, &attributes, argv, envp)
        close(inPipe[0])
        close(outPipe[1])
        close(errPipe[1])
        guard rc == 0 else {
            close(inPipe[1])
            close(outPipe[0])
            close(errPipe[0])
            throw .spawnFailed(path, errno: rc)
        }
        var child = Child(
            pid: pid, stdin: inPipe[1], stdout: outPipe[0], stderr: errPipe[0], input: Array(input.utf8),
            stdoutLimit: stdoutLimit, stderrLimit: stderrLimit, pidfd: usesPidfd)
        defer { child.closeAll() }
        switch child.run(deadline: monotonicMilliseconds() + timeoutMilliseconds) {
        case .exited(let status):
            // WIFEXITED / WEXITSTATUS are macros: decode by hand.
            let exitCode: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
            return CommandResult(
                status: exitCode, stdout: child.stdoutText.text, stderr: child.stderrText.text,
                stdoutDropped: child.stdoutText.dropped)
        case .timedOut:
            throw .timedOut(path, milliseconds: timeoutMilliseconds)
        case .failed(let code):
            throw .spawnFailed(path, errno: code)
        }
    }
}

/// Milliseconds of CLOCK_MONOTONIC.
func monotonicMilliseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}

/// Output kept up to a limit: the first `limit` bytes, or (`keepTail`) the first and the
/// last `limit / 2`; what is in between is counted in `dropped`.
struct BoundedOutput {
    let limit: Int
    let keepTail: Bool
    private(set) var head: [UInt8] = []
    private var tail: [UInt8] = []
    private(set) var dropped = 0

    init(limit: Int, keepTail: Bool) {
        self.limit = max(limit, 2)
        self.keepTail = keepTail
    }

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        let headRoom = (keepTail ? limit / 2 : limit) - head.count
        let intoHead = min(max(headRoom, 0), bytes.count)
        head.append(contentsOf: bytes[0..<intoHead])
        let rest = bytes[intoHead...]
        guard !rest.isEmpty else { return }
        guard keepTail else {
            dropped += rest.count
            return
        }
        tail.append(contentsOf: rest)
        let tailLimit = limit - limit / 2
        if tail.count > 2 * tailLimit {
            let excess = tail.count - tailLimit
            tail.removeFirst(excess)
            dropped += excess
        }
    }

    /// What was kept, as text (`[… N bytes dropped …]` where the middle went).
    var text: String {
        var tail = self.tail
        var dropped = self.dropped
        let tailLimit = limit - limit / 2
        if tail.count > tailLimit {
            dropped += tail.count - tailLimit
            tail.removeFirst(tail.count - tailLimit)
        }
        guard keepTail, dropped > 0 else { return String(decoding: head + tail, as: UTF8.self) }
        return String(decoding: head, as: UTF8.self) + "\n[… \(dropped) bytes dropped …]\n"
            + String(decoding: tail, as: UTF8.self)
    }
}

/// One running child's pipes and pid, driven by `run(deadline:)`.
struct Child {
    enum End {
        /// The raw wait status.
        case exited(Int32)
        case timedOut
        /// poll failed (errno); the child was killed.
        case failed(Int32)
    }

    let pid: pid_t
    var stdin: Int32
    var stdout: Int32
    var stderr: Int32
    let input: [UInt8]
    var written = 0
    var stdoutText: BoundedOutput
    var stderrText: BoundedOutput
    /// Polls readable when the child has exited; -1 where pidfd_open is not available.
    var pidfd: Int32
    var buffer = [UInt8](repeating: 0, count: 65536)

    init(
        pid: pid_t, stdin: Int32, stdout: Int32, stderr: Int32, input: [UInt8], stdoutLimit: Int, stderrLimit: Int,
        pidfd: Bool
    ) {
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.input = input
        stdoutText = BoundedOutput(limit: stdoutLimit, keepTail: false)
        stderrText = BoundedOutput(limit: stderrLimit, keepTail: true)
        self.pidfd = pidfd ? cmesh_pidfd_open(pid) : -1
        for fd in [stdin, stdout, stderr] { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        if input.isEmpty { Self.close(&self.stdin) }
    }

    static func close(_ fd: inout Int32) {
        if fd >= 0 { _ = Glibc.close(fd) }
        fd = -1
    }

    mutating func closeAll() {
        Self.close(&stdin)
        Self.close(&stdout)
        Self.close(&stderr)
        Self.close(&pidfd)
    }

    /// Feeds stdin and drains stdout/stderr until the child has exited (then what it wrote
    /// is read to the end of what the pipes hold), or until `deadline`: then its process
    /// group is killed.
    mutating func run(deadline: Int64) -> End {
        while true {
            if pidfd < 0 && stdout < 0 && stderr < 0 {
                // Without a pidfd, both pipes at EOF is the sign it is exiting: wait for it.
                Self.close(&stdin)
                return wait(until: deadline).map(End.exited) ?? kill()
            }
            var fds: [pollfd] = []
            if stdin >= 0 { fds.append(pollfd(fd: stdin, events: Int16(POLLOUT), revents: 0)) }
            if stdout >= 0 { fds.append(pollfd(fd: stdout, events: Int16(POLLIN), revents: 0)) }
            if stderr >= 0 { fds.append(pollfd(fd: stderr, events: Int16(POLLIN), revents: 0)) }
            if pidfd >= 0 { fds.append(pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)) }
            let remaining = deadline - monotonicMilliseconds()
            if remaining <= 0 { return kill() }
            if poll(&fds, nfds_t(fds.count), Int32(clamping: remaining)) < 0 {
                if errno == EINTR { continue }
                let code = errno
                _ = kill()
                return .failed(code)
            }
            for entry in fds where entry.revents != 0 {
                if entry.fd == stdin {
                    feed()
                } else if entry.fd == stdout {
                    Self.drain(&stdout, into: &stdoutText, buffer: &buffer, reads: 16)
                } else if entry.fd == stderr {
                    Self.drain(&stderr, into: &stderrText, buffer: &buffer, reads: 16)
                } else if entry.fd == pidfd {
                    // It has exited: what it wrote is in the pipes (a grandchild holding
                    // them open must not keep us here).
                    Self.close(&pidfd)
                    Self.drain(&stdout, into: &stdoutText, buffer: &buffer, reads: .max)
                    Self.drain(&stderr, into: &stderrText, buffer: &buffer, reads: .max)
                    Self.close(&stdout)
                    Self.close(&stderr)
                    Self.close(&stdin)
                    return wait(until: deadline).map(End.exited) ?? kill()
                }
            }
        }
    }

    /// Writes what the pipe takes now; closes stdin when all is written or the child closed it.
    mutating func feed() {
        let n = input.withUnsafeBytes { raw in write(stdin, raw.baseAddress! + written, raw.count - written) }
        if n > 0 {
            written += n
            if written >= input.count { Self.close(&stdin) }
        } else if !(n < 0 && (errno == EINTR || errno == EAGAIN)) {
            // EPIPE: it closed its stdin (or exited) without reading everything.
            Self.close(&stdin)
        }
    }

    /// Reads up to `reads` chunks, stopping when the pipe is empty; closes it at EOF.
    static func drain(_ fd: inout Int32, into output: inout BoundedOutput, buffer: inout [UInt8], reads: Int) {
        var count = 0
        while fd >= 0 && count < reads {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                buffer.withUnsafeBytes { output.append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                count += 1
            } else if n < 0 && errno == EINTR {
                continue
            } else if n < 0 && errno == EAGAIN {
                return
            } else {
                close(&fd)
            }
        }
    }

    /// The wait status once the child has exited, or nil if it is still running at `deadline`.
    func wait(until deadline: Int64) -> Int32? {
        var delay: UInt32 = 50
        while true {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { return status }
            if r < 0 && errno == EINTR { continue }
            // ECHILD: reaped behind our back (SIGCHLD ignored); the status is lost.
            if r < 0 { return 0xff00 }
            if monotonicMilliseconds() >= deadline { return nil }
            usleep(delay)
            delay = min(delay * 2, 10_000)
        }
    }

    /// SIGKILL to its process group (and to it); waits a little for it to go (a process in
    /// an uninterruptible kernel wait dies only when that returns: then we go on without it).
    mutating func kill() -> End {
        _ = Glibc.kill(-pid, SIGKILL)
        _ = Glibc.kill(pid, SIGKILL)
        closeAll()
        _ = wait(until: monotonicMilliseconds() + 2000)
        return .timedOut
    }
}
