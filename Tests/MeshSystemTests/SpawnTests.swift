import Testing

@testable import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

@Suite("SpawnRunner")
struct SpawnTests {
    /// iptables' messages are what errors are classified by: the children must always speak C.
    @Test("children run with LC_ALL=C and no other locale variable, whatever the caller's locale")
    func cLocale() throws {
        let caller = ["LANG=de_DE.UTF-8", "LC_MESSAGES=fr_FR.UTF-8", "LC_ALL=de_DE.UTF-8", "PATH=/usr/bin:/bin"]
        let result = try SpawnRunner(path: "/usr/bin:/bin", environment: { caller }).run("/usr/bin/env", [], stdin: "")
        #expect(result.status == 0)
        let lines = result.stdout.split(separator: "\n")
        #expect(lines.filter { $0.hasPrefix("LC_ALL=") } == ["LC_ALL=C"])
        #expect(!lines.contains { $0.hasPrefix("LANG=") || $0.hasPrefix("LC_MESSAGES=") })
        #expect(lines.contains { $0.hasPrefix("PATH=") }, "the rest of the environment is kept")
    }

    @Test("stdin is fed and stdout, stderr and the exit status come back")
    func roundTrip() throws {
        let result = try SpawnRunner(path: "/bin", environment: { [] }).run(
            "/bin/sh", ["-c", "cat; echo oops >&2; exit 3"], stdin: "hello\n")
        #expect(result.stdout == "hello\n")
        #expect(result.stderr == "oops\n")
        #expect(result.status == 3)
    }

    static func runner(timeout: Int64 = 20_000, pidfd: Bool = true) -> SpawnRunner {
        var runner = SpawnRunner(
            path: "/usr/bin:/bin", environment: { ["PATH=/usr/bin:/bin"] }, timeoutMilliseconds: timeout)
        runner.usesPidfd = pidfd
        return runner
    }

    static func elapsed(_ body: () throws -> Void) rethrows -> Int64 {
        let start = monotonicMilliseconds()
        try body()
        return monotonicMilliseconds() - start
    }

    /// The deadlock of issue 17: a child that writes 256 KiB to stderr before it reads a
    /// 300 KiB stdin. Fed blocking, stdin waits for the child, the child for us to drain
    /// stderr; fed in one poll loop with the drains, it completes at once.
    @Test("a child that writes 256 KiB to stderr before reading a 300 KiB stdin completes", arguments: [true, false])
    func chattyChild(pidfd: Bool) throws {
        let input = String(repeating: "0123456789abcdef\n", count: 300 * 1024 / 17)
        var result = CommandResult(status: -1)
        let took = try Self.elapsed {
            result = try Self.runner(pidfd: pidfd).run(
                "/bin/sh", ["-c", "head -c 262144 /dev/zero | tr '\\000' x >&2; wc -c"], stdin: input)
        }
        #expect(result.status == 0)
        #expect(result.stdout.trimmingPrefix(while: { $0 == " " }) == "\(input.utf8.count)\n")
        #expect(result.stderr.utf8.count <= 64 * 1024 + 64, "stderr is kept bounded")
        #expect(result.stderr.contains("bytes dropped"))
        #expect(took < 10_000, "took \(took) ms")
    }

    @Test(
        "a child past its deadline is killed, with its process group, and the run fails naming it",
        arguments: [true, false])
    func hungChild(pidfd: Bool) throws {
        let pidFile = "/tmp/meshinit-spawn-\(getpid())-\(pidfd)"
        defer { unlink(pidFile) }
        var caught: CommandError?
        let took = Self.elapsed {
            do {
                _ = try Self.runner(timeout: 300, pidfd: pidfd).run(
                    "/bin/sh", ["-c", "sleep 30 & echo $! > \(pidFile); sleep 30"], stdin: "")
            } catch {
                caught = error as? CommandError
            }
        }
        #expect(caught == .timedOut("/bin/sh", milliseconds: 300))
        #expect(caught?.description == "/bin/sh did not finish within 300ms: killed")
        #expect(took < 3000, "took \(took) ms")
        // The grandchild went with it (its process group was killed).
        let grandchild =
            Int32((try? String(decoding: Files.read(pidFile), as: UTF8.self))?.split(separator: "\n").first ?? "") ?? 0
        #expect(grandchild > 0)
        var gone = false
        for _ in 0..<200 where !gone {
            let stat = (try? Files.read("/proc/\(grandchild)/stat")).map { String(decoding: $0, as: UTF8.self) }
            gone = stat == nil || stat!.contains(") Z ")
            if !gone { usleep(10_000) }
        }
        #expect(gone, "grandchild \(grandchild) still running")
    }

    @Test("a child that closed its pipes but does not exit is killed at its deadline", arguments: [true, false])
    func closedPipesButRunning(pidfd: Bool) {
        let took = Self.elapsed {
            #expect(throws: CommandError.timedOut("/bin/sh", milliseconds: 300)) {
                try Self.runner(timeout: 300, pidfd: pidfd).run(
                    "/bin/sh", ["-c", "exec >&- 2>&- <&-; sleep 30"], stdin: "x")
            }
        }
        #expect(took < 3000, "took \(took) ms")
    }

    @Test("a child that exits while a grandchild holds its pipes returns at once")
    func grandchildHoldsPipes() throws {
        var result = CommandResult(status: -1)
        let took = try Self.elapsed {
            result = try Self.runner(timeout: 10_000).run("/bin/sh", ["-c", "sleep 5 & echo $!; exit 4"], stdin: "")
        }
        if let pid = Int32(result.stdout.split(separator: "\n").first ?? "") { kill(pid, SIGKILL) }
        #expect(result.status == 4)
        #expect(took < 2000, "took \(took) ms")
    }

    @Test("stdout past its limit is read and counted, not kept", arguments: [true, false])
    func stdoutLimit(pidfd: Bool) throws {
        var runner = Self.runner(pidfd: pidfd)
        runner.stdoutLimit = 1 << 20
        let result = try runner.run("/bin/sh", ["-c", "head -c 3000000 /dev/zero | tr '\\000' y"], stdin: "")
        #expect(result.status == 0)
        #expect(result.stdout.utf8.count == 1 << 20)
        #expect(result.stdoutDropped == 3_000_000 - (1 << 20))
    }

    @Test("stderr keeps its first and its last part")
    func stderrHeadAndTail() throws {
        var runner = Self.runner()
        runner.stderrLimit = 1000
        let result = try runner.run(
            "/bin/sh",
            ["-c", "echo first >&2; head -c 100000 /dev/zero | tr '\\000' z >&2; echo; echo 'line 12 failed' >&2"],
            stdin: "")
        #expect(result.stderr.hasPrefix("first\n"))
        #expect(result.stderr.hasSuffix("line 12 failed\n"))
        #expect(result.stderr.contains("bytes dropped"))
        #expect(result.stderr.utf8.count < 1100)
    }

    @Test("a child that exits without reading a large stdin is not an error of ours", arguments: [true, false])
    func unreadStdin(pidfd: Bool) throws {
        let result = try Self.runner(pidfd: pidfd).run(
            "/bin/sh", ["-c", "exit 0"], stdin: String(repeating: "x", count: 1 << 20))
        #expect(result.status == 0)
    }

    @Test("children start with no blocked signal and SIGPIPE at its default")
    func signalsReset() throws {
        var block = sigset_t()
        sigemptyset(&block)
        sigaddset(&block, SIGTERM)
        var old = sigset_t()
        pthread_sigmask(SIG_BLOCK, &block, &old)
        defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
        let result = try Self.runner().run("/bin/sh", ["-c", "kill -TERM $$; sleep 2; echo alive"], stdin: "")
        #expect(result.status == 128 + SIGTERM, "\(result)")
        let ignored = try Self.runner().run("/bin/sh", ["-c", "grep SigIgn /proc/self/status"], stdin: "")
        // SIGPIPE is signal 13: bit 12 of the mask.
        let field = ignored.stdout.split(whereSeparator: { $0 == "\t" || $0 == "\n" }).last ?? ""
        let mask = UInt64(field, radix: 16)
        #expect(mask.map { $0 & (1 << 12) == 0 } == true, "\(ignored.stdout)")
    }
}

@Suite("Files: bounded reads")
struct BoundedReadTests {
    static func file(_ bytes: Int) -> String {
        let path = "/tmp/meshinit-bounded-\(getpid())-\(bytes)"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let data = [UInt8](repeating: 0x61, count: bytes)
        _ = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        return path
    }

    @Test("a file up to the limit is read whole; one byte more is EFBIG, naming the file and the limit")
    func file() throws {
        let exact = Self.file(1 << 20)
        let over = Self.file((1 << 20) + 1)
        defer {
            unlink(exact)
            unlink(over)
        }
        #expect(try Files.read(exact, limit: 1 << 20).count == 1 << 20)
        do {
            _ = try Files.read(over, limit: 1 << 20)
            Issue.record("read past the limit")
        } catch {
            #expect(error.errno == EFBIG)
            #expect(error.description == "read \(over) (more than 1 MiB): File too large (EFBIG)")
        }
    }

    @Test("a pipe (stdin) past the limit is EFBIG, not a cut input")
    func pipe() throws {
        var fds: [Int32] = [0, 0]
        #expect(Glibc.pipe(&fds) == 0)
        defer { close(fds[0]) }
        let data = [UInt8](repeating: 0x62, count: 2000)
        _ = data.withUnsafeBytes { write(fds[1], $0.baseAddress, $0.count) }
        close(fds[1])
        #expect(throws: SystemCallError("read (more than 1000 bytes)", errno: EFBIG)) {
            try Files.readAll(fds[0], limit: 1000)
        }
    }
}
