import Foundation
import MeshConfig
import MeshModel
import MeshPlanner
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A `SystemLookup` from tables. `java` has the gid the kernel tests also give it in a
/// private `/etc/group` (as the conformance check does).
struct FakeSystem: SystemLookup {
    var groups: [String: UInt32] = ["java": Conformance.javaGID, "istio-proxy": 1337]
    var files: [String: String] = [:]

    func userID(named name: String) -> UInt32? { name == "istio-proxy" ? 1337 : nil }
    func groupID(named name: String) -> UInt32? { groups[name] }
    func detectIPv6(dualStack: Bool) -> Bool? { false }
    func loopbackHasIPv6() -> Bool { true }
    func readFile(_ path: String) -> String? { files[path] }
}

/// A conformance case of `../shared/conformance/istio/nftables`, read the way
/// `../shared/conformance/check` reads it: flag lines, `#env K=V`, and the `#note`s for
/// IPv6 (`--ipv6=on|off`) and DNS servers (a resolv.conf).
struct ConformanceCase: Sendable, CustomTestStringConvertible {
    var name: String
    var flags: [IstioFlag: String]
    var environment: [String: String]
    var resolvConf: String?

    var testDescription: String { name }

    static let resolvPath = "/conformance/resolv.conf"

    init(name: String, argsText: String) {
        self.name = name
        var flags: [IstioFlag: String] = [:]
        var environment: [String: String] = [:]
        var notes: [String: String] = [:]
        for raw in argsText.split(separator: "\n") {
            let line = String(raw)
            if line.trimmingCharacters(in: .whitespaces).isEmpty { continue }
            if line.hasPrefix("#env ") || line.hasPrefix("#note ") {
                let body = line.drop { $0 != " " }.dropFirst()
                let key = String(body.prefix { $0 != "=" })
                let value = String(body.drop { $0 != "=" }.dropFirst())
                if line.hasPrefix("#env ") { environment[key] = value } else { notes[key] = value }
                continue
            }
            if line.hasPrefix("#") || line == "--dry-run" || line == "--native-nftables" { continue }
            let body = line.dropFirst(2)
            if let eq = body.firstIndex(of: "="), let flag = IstioFlag(long: body[..<eq]) {
                flags[flag] = String(body[body.index(after: eq)...])
            } else if let flag = IstioFlag(long: body) {
                flags[flag] = "true"
            }
        }
        if let ipv6 = notes["ENABLE_INBOUND_IPV6"] { flags[.ipv6] = ipv6 == "true" ? "on" : "off" }
        if notes["DNS_SERVERS_V4"] != nil || notes["DNS_SERVERS_V6"] != nil {
            let servers = ["DNS_SERVERS_V4", "DNS_SERVERS_V6"].flatMap {
                (notes[$0] ?? "").split(separator: ",").map(String.init)
            }
            resolvConf = servers.map { "nameserver \($0)\n" }.joined()
            flags[.resolvConf] = Self.resolvPath
        }
        self.flags = flags
        self.environment = environment
    }

    func plan() throws -> Plan {
        var system = FakeSystem()
        if let resolvConf { system.files[Self.resolvPath] = resolvConf }
        let settings = try ConfigResolver(system: system).resolve(flags: flags, environment: environment)
        return Planner.plan(settings.capture)
    }

    var golden: String {
        get throws {
            try String(contentsOf: Conformance.directory.appendingPathComponent("\(name).golden"), encoding: .utf8)
        }
    }
}

enum Conformance {
    static let javaGID: UInt32 = 30000
    static let testsDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    /// `../shared/conformance/istio/nftables` next to the repository.
    static let directory = testsDirectory.deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("shared/conformance/istio/nftables")

    static var all: [ConformanceCase] {
        let names =
            ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? [])
            .filter { $0.hasSuffix(".args") }.sorted()
        return names.compactMap { file in
            guard let text = try? String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8) else {
                return nil
            }
            return ConformanceCase(name: String(file.dropLast(5)), argsText: text)
        }
    }

    /// A plan from istio-iptables flags (`["-p", "15001", …]`), IPv6 on or off.
    static func plan(_ args: [String], ipv6: Bool = true, resolvConf: String? = nil) throws -> Plan {
        var flags: [IstioFlag: String] = [.ipv6: ipv6 ? "on" : "off"]
        var system = FakeSystem()
        if let resolvConf {
            flags[.resolvConf] = ConformanceCase.resolvPath
            system.files[ConformanceCase.resolvPath] = resolvConf
        }
        var i = 0
        while i < args.count {
            let arg = args[i]
            i += 1
            let flag =
                arg.hasPrefix("--") ? IstioFlag(long: arg.dropFirst(2)) : arg.last.flatMap { IstioFlag(short: $0) }
            guard let flag else { continue }
            if flag.isBoolean {
                flags[flag] = "true"
            } else if i < args.count {
                flags[flag] = args[i]
                i += 1
            }
        }
        return Planner.plan(try ConfigResolver(system: system).resolve(flags: flags, environment: [:]).capture)
    }

    static let seedArgs = [
        "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d",
        "15090,15021,15020",
    ]
}

/// Real-kernel helpers: commands, throwaway network namespaces, `nft list ruleset` in
/// canonical form. Tests need root, `ip` and `nft`; without them they are skipped, except
/// with `CI=true`, where the missing requirement is recorded as a failure.
enum Kernel {
    static let available: Bool = {
        guard geteuid() == 0 else { return false }
        return ["ip", "nft"].allSatisfy { tool in
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].contains {
                FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)")
            }
        }
    }()

    /// True when the test may run; false to skip (recording an issue when `CI=true`).
    static func require(sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        if available { return true }
        if ProcessInfo.processInfo.environment["CI"] == "true" {
            Issue.record("real-kernel test needs root, ip and nft (CI=true)", sourceLocation: sourceLocation)
        }
        return false
    }

    struct Output {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    struct CommandError: Error, CustomStringConvertible {
        var command: [String]
        var output: Output
        var description: String { "\(command.joined(separator: " ")) exited \(output.status): \(output.stderr)" }
    }

    @discardableResult
    static func run(_ command: [String], stdin: String? = nil, check: Bool = true) throws -> Output {
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
    final class Namespace {
        nonisolated(unsafe) private static var counter = 0
        private static let lock = NSLock()
        let name: String

        init() throws {
            let n = Namespace.lock.withLock {
                Namespace.counter += 1
                return Namespace.counter
            }
            name = "meshnl-\(getpid())-\(n)"
            try Kernel.run(["ip", "netns", "add", name])
            try Kernel.run(["ip", "-n", name, "link", "set", "lo", "up"])
        }

        var path: String { "/var/run/netns/\(name)" }

        @discardableResult
        func exec(_ command: [String], stdin: String? = nil, check: Bool = true) throws -> Output {
            try Kernel.run(["ip", "netns", "exec", name] + command, stdin: stdin, check: check)
        }

        /// `nft -f -` of `script`, with `java` resolvable (a private /etc/group, as the
        /// conformance check does) for goldens that name it.
        func nftScript(_ script: String) throws {
            guard script.contains("java") else {
                try exec(["nft", "-f", "-"], stdin: script)
                return
            }
            let group = FileManager.default.temporaryDirectory.appendingPathComponent("meshnl-group-\(getpid())")
            let existing = (try? String(contentsOfFile: "/etc/group", encoding: .utf8)) ?? ""
            try (existing + "java:x:\(Conformance.javaGID):\n").write(to: group, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(at: group) }
            try Kernel.run(
                [
                    "unshare", "--mount", "--propagation", "private", "sh", "-c",
                    "mount --bind \"$0\" /etc/group && exec ip netns exec \"$1\" nft -f -", group.path, name,
                ], stdin: script)
        }

        func ruleset() throws -> [String] { Kernel.canonical(try exec(["nft", "list", "ruleset"]).stdout) }

        func delete() { _ = try? Kernel.run(["ip", "netns", "del", name], check: false) }
    }

    /// `nft list ruleset` with counters zeroed, handles dropped, and tables (and the blocks
    /// inside each table) sorted by name, as `../shared/conformance/check` canonicalizes it.
    static func canonical(_ text: String) -> [String] {
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
    static func diff(_ want: [String], _ got: [String]) -> String {
        let missing = want.filter { !got.contains($0) }.map { "- \($0)" }
        let extra = got.filter { !want.contains($0) }.map { "+ \($0)" }
        return (missing + extra).joined(separator: "\n")
    }
}
