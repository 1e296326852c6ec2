import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// Real-kernel test helpers shared by the test targets: running commands, throwaway network
/// namespaces, and the canonical read-back of rules (as `../shared/conformance/check` makes
/// it), so that "the kernel holds the same thing" is decided one way everywhere.
public enum Kernel {
    /// Root, plus `ip` and `nft`.
    public static let available: Bool = {
        guard geteuid() == 0 else { return false }
        return ["ip", "nft"].allSatisfy { tool in
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].contains {
                FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)")
            }
        }
    }()

    /// A real-kernel test's prerequisites are missing where it must run (`CI=true`).
    public struct Unavailable: Error, CustomStringConvertible {
        public var description: String
    }

    /// Whether the tests run under CI, where a test that cannot run is a failure.
    public static var underCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

    /// True when the test may run; false to skip, outside CI only: with `CI=true` a missing
    /// prerequisite throws, and the test fails. (No Testing import here: this kit is an
    /// ordinary target, built by `swift build -c release` too.)
    public static func require() throws -> Bool {
        try require(tools: [])
    }

    public struct Output: Sendable {
        public var status: Int32
        public var stdout: String
        public var stderr: String
    }

    public struct CommandError: Error, CustomStringConvertible {
        public var command: [String]
        public var output: Output
        public var description: String { "\(command.joined(separator: " ")) exited \(output.status): \(output.stderr)" }
    }

    @discardableResult
    public static func run(_ command: [String], stdin: String? = nil, check: Bool = true) throws -> Output {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = command
        var environment = ProcessInfo.processInfo.environment
        environment["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
        process.environment = environment
        let out = Pipe()
        let err = Pipe()
        let input = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = input
        try process.run()
        if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
        try input.fileHandleForWriting.close()
        let stdoutData = out.fileHandleForReading.readDataToEndOfFile()
        let stderrData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let output = Output(
            status: process.terminationStatus, stdout: String(decoding: stdoutData, as: UTF8.self),
            stderr: String(decoding: stderrData, as: UTF8.self))
        if check && output.status != 0 { throw CommandError(command: command, output: output) }
        return output
    }

    /// A network namespace for one test; deleted by `delete()` (call it in `defer`).
    public final class Namespace {
        nonisolated(unsafe) private static var counter = 0
        private static let lock = NSLock()
        public let name: String

        public init() throws {
            let n = Namespace.lock.withLock {
                Namespace.counter += 1
                return Namespace.counter
            }
            name = "meshnl-\(getpid())-\(n)"
            try Kernel.run(["ip", "netns", "add", name])
            try Kernel.run(["ip", "-n", name, "link", "set", "lo", "up"])
        }

        public var path: String { "/var/run/netns/\(name)" }

        @discardableResult
        public func exec(_ command: [String], stdin: String? = nil, check: Bool = true) throws -> Output {
            try Kernel.run(["ip", "netns", "exec", name] + command, stdin: stdin, check: check)
        }

        /// `nft -f -` of `script`; `groups` (name → gid) are made resolvable for it through a
        /// private `/etc/group`, as the conformance check does for names such as `java`.
        public func loadNft(_ script: String, groups: [String: UInt32] = [:]) throws {
            let needed = groups.filter { script.contains($0.key) }
            guard !needed.isEmpty else {
                try exec(["nft", "-f", "-"], stdin: script)
                return
            }
            let group = FileManager.default.temporaryDirectory.appendingPathComponent(
                "meshkit-group-\(getpid())-\(name)")
            let existing = (try? String(contentsOfFile: "/etc/group", encoding: .utf8)) ?? ""
            let extra = needed.map { "\($0.key):x:\($0.value):\n" }.joined()
            try (existing + extra).write(to: group, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(at: group) }
            try Kernel.run(
                [
                    "unshare", "--mount", "--propagation", "private", "sh", "-c",
                    "mount --bind \"$0\" /etc/group && exec ip netns exec \"$1\" nft -f -", group.path, name,
                ], stdin: script)
        }

        /// `nft list ruleset`, canonical.
        public func ruleset() throws -> [String] { Kernel.canonical(try exec(["nft", "list", "ruleset"]).stdout) }

        public func delete() { _ = try? Kernel.run(["ip", "netns", "del", name], check: false) }
    }

    /// `nft list ruleset` with counters zeroed, handles dropped, and tables (and the blocks
    /// inside each table) sorted by name, as `../shared/conformance/check` canonicalizes it.
    public static func canonical(_ text: String) -> [String] {
        var lines: [String] = []
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            var line = String(raw)
            line = line.replacingOccurrences(
                of: #"counter packets \d+ bytes \d+"#, with: "counter", options: .regularExpression)
            line = line.replacingOccurrences(of: #"\s+# handle \d+$"#, with: "", options: .regularExpression)
            while line.last == " " || line.last == "\t" { line.removeLast() }
            if !line.trimmingCharacters(in: .whitespaces).isEmpty { lines.append(line) }
        }
        var tables: [(String, [[String]])] = []
        var current: (String, [[String]])?
        var block: [String]?
        for line in lines {
            if !line.hasPrefix("\t") {
                if line == "}" {
                    if let c = current {
                        tables.append((c.0, c.1.sorted { $0.joined(separator: "\n") < $1.joined(separator: "\n") }))
                    }
                    current = nil
                } else {
                    current = (line, [])
                }
            } else if !line.hasPrefix("\t\t") && line != "\t}" {
                block = [line]
            } else if line == "\t}" {
                block?.append(line)
                if let b = block { current?.1.append(b) }
                block = nil
            } else {
                block?.append(line)
            }
        }
        var out: [String] = []
        for (head, blocks) in tables.sorted(by: { $0.0 < $1.0 }) {
            out.append(head)
            for b in blocks { out += b }
            out.append("}")
        }
        return out
    }

    /// A short unified-style diff for failure messages.
    public static func diff(_ want: [String], _ got: [String]) -> String {
        let missing = want.filter { !got.contains($0) }.map { "- \($0)" }
        let extra = got.filter { !want.contains($0) }.map { "+ \($0)" }
        return (missing + extra).joined(separator: "\n")
    }

    /// `iptables-save` output with `#` lines dropped and counters zeroed.
    public static func canonicalIptablesSave(_ text: String) -> [String] {
        text.split(separator: "\n", omittingEmptySubsequences: false).compactMap { line -> String? in
            if line.hasPrefix("#") { return nil }
            return String(line).replacingOccurrences(of: #"\[\d+:\d+\]"#, with: "[0:0]", options: .regularExpression)
        }
    }

    /// True when a kernel test may run with these tools (besides root, `ip` and `nft`);
    /// false to skip outside CI; with `CI=true` a missing prerequisite throws `Unavailable`.
    public static func require(tools: [String]) throws -> Bool {
        var missing = tools.filter { !hasTool($0) }
        if !available { missing.insert("root, ip and nft", at: 0) }
        if missing.isEmpty { return true }
        if underCI {
            throw Unavailable(description: "real-kernel test needs \(missing.joined(separator: ", ")) (CI=true)")
        }
        return false
    }

    /// For a test's `.enabled(if:)` trait: whether a kernel test with these tools (besides
    /// root, `ip` and `nft`) is to run. Outside CI it is skipped — reported as skipped, never
    /// counted as passed — when they are missing; under `CI=true` it always runs, and its
    /// `need(tools:)` fails it.
    public static func mayRun(tools: [String] = []) -> Bool {
        underCI || (available && tools.allSatisfy(hasTool))
    }

    /// The first line of a kernel test whose suite or test has `.enabled(if: mayRun(tools:))`:
    /// throws `Unavailable` (the test fails) when a prerequisite is missing.
    public static func need(tools: [String] = []) throws {
        var missing = tools.filter { !hasTool($0) }
        if !available { missing.insert("root, ip and nft", at: 0) }
        if !missing.isEmpty {
            throw Unavailable(description: "real-kernel test needs \(missing.joined(separator: ", "))")
        }
    }

    /// Whether `tool` is in one of the system binary directories.
    public static func hasTool(_ tool: String) -> Bool {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].contains {
            FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)")
        }
    }
}
