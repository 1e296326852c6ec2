import Testing

@testable import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// Bounded input (the CNI plugin's stdin) and compare-and-swap replacement (the node's
/// `.conflist`, which the primary CNI may rewrite at any moment).
@Suite("File edits")
struct FileEditTests {
    static func temporaryDirectory() -> String {
        var template = Array("/tmp/meshinit-fileedit-XXXXXX".utf8CString)
        let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        return path
    }

    static func write(_ path: String, _ bytes: [UInt8]) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    static func remove(_ directory: String) {
        for name in entries(directory) { unlink(directory + "/" + name) }
        rmdir(directory)
    }

    static func entries(_ directory: String) -> [String] { (try? Files.list(directory))?.sorted() ?? [] }

    @Test("a replacement lands only if the file still holds what the edit was derived from")
    func compareAndSwap() throws {
        let dir = Self.temporaryDirectory()
        defer { Self.remove(dir) }
        let path = dir + "/10-net.conflist"
        let original = Array(#"{"plugins":[]}"#.utf8)
        Self.write(path, original)
        // Someone else rewrote it since we read it: nothing of ours is written.
        let theirs = Array(#"{"plugins":[{"type":"bridge"}]}"#.utf8)
        Self.write(path, theirs)
        #expect(try FileEdit.replace(path, expecting: original, with: Array("ours".utf8), mode: 0o644) == .changed)
        #expect(try Files.read(path) == theirs)
        #expect(Self.entries(dir) == ["10-net.conflist"], "no temporary file left")
        // Unchanged since: replaced, atomically, with the mode asked for.
        #expect(try FileEdit.replace(path, expecting: theirs, with: Array("ours".utf8), mode: 0o600) == .replaced)
        #expect(try Files.read(path) == Array("ours".utf8))
        #expect(Files.mode(path) == 0o600)
        #expect(Self.entries(dir) == ["10-net.conflist"])
        // A file that vanished is "changed" too.
        unlink(path)
        #expect(try FileEdit.replace(path, expecting: theirs, with: [1], mode: 0o644) == .changed)
        #expect(!Files.exists(path))
        // Without an expectation it is a plain atomic write (the plugin binary).
        #expect(try FileEdit.replace(path, expecting: nil, with: [1, 2], mode: 0o755) == .replaced)
        #expect(try Files.read(path) == [1, 2])
    }

    @Test("the temporary file is created exclusively: a file or symlink already at its name is never written")
    func exclusive() throws {
        let dir = Self.temporaryDirectory()
        defer { Self.remove(dir) }
        let target = dir + "/victim"
        Self.write(target, Array("keep".utf8))
        let planted = dir + "/.tmp-0"
        symlink(target, planted)
        Self.write(dir + "/.tmp-1", Array("stale".utf8))
        let path = dir + "/10-net.conflist"
        Self.write(path, [0])
        let outcome = try FileEdit.replace(path, expecting: [0], with: Array("new".utf8), mode: 0o644) {
            _, attempt in ".tmp-\(attempt)"
        }
        #expect(outcome == .replaced)
        #expect(try Files.read(target) == Array("keep".utf8))
        #expect(try Files.read(dir + "/.tmp-1") == Array("stale".utf8))
        #expect(try Files.read(path) == Array("new".utf8))
        #expect(!Files.exists(dir + "/.tmp-2"), "renamed into place")
    }

    @Test("bounded reads: more than the limit, or no end of input in time, is an error, not a hang or a huge buffer")
    func bounded() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        let chunk = [UInt8](repeating: 0x61, count: 4096)
        for _ in 0..<4 { _ = chunk.withUnsafeBytes { Glibc.write(fds[1], $0.baseAddress, $0.count) } }
        // 16 KiB written, writer still open, limit 8 KiB: refused as soon as it is exceeded.
        #expect(throws: FileEdit.ReadFailure.tooLarge(limit: 8192)) {
            try FileEdit.readAll(fds[0], limit: 8192, seconds: 5)
        }
        close(fds[0])
        close(fds[1])
        #expect(pipe(&fds) == 0)
        _ = chunk.withUnsafeBytes { Glibc.write(fds[1], $0.baseAddress, 10) }
        // Writer never closes: the deadline ends it.
        #expect(throws: FileEdit.ReadFailure.timedOut(seconds: 1)) {
            try FileEdit.readAll(fds[0], limit: 1 << 20, seconds: 1)
        }
        close(fds[1])
        #expect(try FileEdit.readAll(fds[0], limit: 1 << 20, seconds: 1).count == 0)
        close(fds[0])
        #expect(pipe(&fds) == 0)
        _ = chunk.withUnsafeBytes { Glibc.write(fds[1], $0.baseAddress, 100) }
        close(fds[1])
        #expect(try FileEdit.readAll(fds[0], limit: 100, seconds: 1).count == 100)
        close(fds[0])
    }
}
