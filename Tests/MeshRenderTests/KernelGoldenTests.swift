import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Loads our recorded goldens into fresh network namespaces and compares the kernel's read-back
/// with that of Istio's goldens (`../shared/conformance/istio`): the conformance check's idea,
/// applied to our own goldens. Needs root, `ip`, `iptables-restore`/`ip6tables-restore` (and
/// the `-save` tools) and `nft`. Skipped when those are missing, unless `CI=true`: then it fails.
@Suite("Kernel: goldens are Istio's rules", .serialized, .enabled(if: Kernel.shouldRun))
struct KernelGoldenTests {
    @Test("iptables goldens", arguments: GoldenCase.all)
    func iptables(_ c: GoldenCase) throws {
        guard Kernel.requireAvailable() else { return }
        let istio = c.istioIptables ? try Kernel.istioIptables(c.name) : nil
        for (index, family) in ["ipv4", "ipv6"].enumerated() {
            let ours = try String(contentsOf: KernelSupport.golden(c.name, family), encoding: .utf8)
            let got = try Kernel.iptablesReadback(ours, ipv6: index == 1)
            if let istio {
                let want = try Kernel.iptablesReadback(index == 0 ? istio.ipv4 : istio.ipv6, ipv6: index == 1)
                #expect(got == want, "\(c.name).\(family):\n\(Kernel.diff(want, got))")
            } else {
                // No Istio golden: at least every rule we wrote must be in the kernel.
                let written = ours.split(separator: "\n").filter { $0.hasPrefix("-A ") || $0.hasPrefix("-I ") }
                #expect(got.filter { $0.hasPrefix("-A ") }.count == written.count, "\(c.name).\(family)")
            }
        }
    }

    @Test("nft goldens", arguments: GoldenCase.all)
    func nft(_ c: GoldenCase) throws {
        guard Kernel.requireAvailable() else { return }
        let ours = try String(contentsOf: KernelSupport.golden(c.name, "nft"), encoding: .utf8)
        let got = try Kernel.nftReadback(ours)
        if c.istioNft {
            let istio = try Kernel.istioNft(c.name)
            let want = try Kernel.nftReadback(istio)
            #expect(got == want, "\(c.name).nft:\n\(Kernel.diff(want, got))")
        } else {
            let written = ours.split(separator: "\n").filter { $0.hasPrefix("add rule ") }
            let rules = got.filter { $0.hasPrefix("\t\t") && !$0.hasPrefix("\t\ttype ") }
            #expect(rules.count == written.count, "\(c.name).nft")
        }
    }

    @Test("namespaces are unique and removed")
    func namespaces() throws {
        guard Kernel.requireAvailable() else { return }
        let a = try Kernel.Namespace()
        let b = try Kernel.Namespace()
        #expect(a.name != b.name)
        let listed = try Kernel.run(["ip", "netns", "list"]).stdout
        #expect(listed.contains(a.name) && listed.contains(b.name))
        a.delete()
        b.delete()
        let after = try Kernel.run(["ip", "netns", "list"]).stdout
        #expect(!after.contains(a.name) && !after.contains(b.name))
    }
}

enum Kernel {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static let tools = [
        "ip", "iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save", "nft",
    ]
    static let searchPath: [String] = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        return path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
    }()

    static func locate(_ tool: String) -> String? {
        searchPath.map { "\($0)/\(tool)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }
    static var isRoot: Bool { geteuid() == 0 }
    static var missing: [String] { tools.filter { locate($0) == nil } }
    static var available: Bool { isRoot && missing.isEmpty }
    /// Run when possible; in CI always (to fail loudly).
    static var shouldRun: Bool { available || isCI }

    /// Records an issue (CI) when the kernel tests cannot run.
    static func requireAvailable(sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        if available { return true }
        var why: [String] = []
        if !isRoot { why.append("not running as root") }
        if !missing.isEmpty { why.append("missing tools: \(missing.joined(separator: ", "))") }
        Issue.record(
            "kernel golden tests cannot run with CI=true: \(why.joined(separator: "; ")) (run as root with iproute2, iptables and nftables installed)",
            sourceLocation: sourceLocation)
        return false
    }

    struct Output {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    static func run(_ argv: [String], stdin: String? = nil) throws -> Output {
        guard let executable = locate(argv[0]) else { throw Failure(description: "\(argv[0]) not found") }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = Array(argv.dropFirst())
        let input = Pipe()
        let output = Pipe()
        let error = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = error
        try process.run()
        if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
        try input.fileHandleForWriting.close()
        let out = output.fileHandleForReading.readDataToEndOfFile()
        let err = error.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Output(
            status: process.terminationStatus, stdout: String(decoding: out, as: UTF8.self),
            stderr: String(decoding: err, as: UTF8.self))
    }

    static func check(_ argv: [String], stdin: String? = nil) throws -> String {
        let result = try run(argv, stdin: stdin)
        guard result.status == 0 else {
            throw Failure(
                description: "\(argv.joined(separator: " ")) exited \(result.status): \(result.stderr)\(result.stdout)")
        }
        return result.stdout
    }

    /// A fresh network namespace with a unique name, deleted by `delete()` (or on deinit).
    final class Namespace {
        nonisolated(unsafe) static var counter = 0
        static let lock = NSLock()
        let name: String
        private var deleted = false

        init() throws {
            let n = Self.lock.withLock {
                Self.counter += 1
                return Self.counter
            }
            name = "mi-kt-\(getpid())-\(n)-\(UInt32.random(in: 0...UInt32.max))"
            _ = try Kernel.check(["ip", "netns", "add", name])
            do {
                _ = try exec(["ip", "link", "set", "lo", "up"])
            } catch {
                delete()
                throw error
            }
        }

        func exec(_ argv: [String], stdin: String? = nil) throws -> String {
            let tool = Kernel.locate(argv[0]) ?? argv[0]
            return try Kernel.check(["ip", "netns", "exec", name, tool] + argv.dropFirst(), stdin: stdin)
        }

        func delete() {
            guard !deleted else { return }
            deleted = true
            _ = try? Kernel.run(["ip", "netns", "del", name])
        }

        deinit { delete() }
    }

    static func withNamespace<T>(_ body: (Namespace) throws -> T) throws -> T {
        let ns = try Namespace()
        defer { ns.delete() }
        return try body(ns)
    }

    /// `iptables-save` with `#` lines dropped and counters zeroed.
    static func canonIptablesSave(_ text: String) -> [String] {
        text.split(separator: "\n", omittingEmptySubsequences: false).compactMap { line -> String? in
            if line.hasPrefix("#") { return nil }
            return String(line).replacing(/\[\d+:\d+\]/, with: "[0:0]")
        }
    }

    static func iptablesReadback(_ payload: String, ipv6: Bool) throws -> [String] {
        try withNamespace { ns in
            if !payload.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
                _ = try ns.exec([ipv6 ? "ip6tables-restore" : "iptables-restore"], stdin: payload)
            }
            return canonIptablesSave(try ns.exec([ipv6 ? "ip6tables-save" : "iptables-save"]))
        }
    }

    /// `nft list ruleset` with counters zeroed, handles dropped, and tables (and the chains in
    /// them) sorted by name, as the conformance check does.
    static func canonNft(_ text: String) -> [String] {
        var lines: [String] = []
        for raw in text.split(separator: "\n") {
            var l = String(raw).replacing(/counter packets \d+ bytes \d+/, with: "counter")
            l = l.replacing(/\s+# handle \d+$/, with: "")
            while l.last?.isWhitespace == true { l.removeLast() }
            if !l.trimmingCharacters(in: .whitespaces).isEmpty { lines.append(l) }
        }
        var tables: [(String, [[String]])] = []
        var current: (String, [[String]])?
        var block: [String]?
        for l in lines {
            if !l.hasPrefix("\t") {
                if l == "}" {
                    if let c = current { tables.append((c.0, c.1.sorted { $0.lexicographicallyPrecedes($1) })) }
                    current = nil
                } else {
                    current = (l, [])
                }
            } else if !l.hasPrefix("\t\t") && l != "\t}" {
                block = [l]
            } else if l == "\t}" {
                block?.append(l)
                if let b = block { current?.1.append(b) }
                block = nil
            } else {
                block?.append(l)
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

    static func nftReadback(_ script: String) throws -> [String] {
        try withNamespace { ns in
            if !script.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
                let file = FileManager.default.temporaryDirectory.appendingPathComponent("\(ns.name).nft")
                try script.write(to: file, atomically: true, encoding: .utf8)
                defer { try? FileManager.default.removeItem(at: file) }
                _ = try ns.exec(["nft", "-f", file.path])
            }
            return canonNft(try ns.exec(["nft", "list", "ruleset"]))
        }
    }

    /// Istio's golden with the `java` group (not in this host's /etc/group) replaced by the gid
    /// the fake system gives it, as the conformance check's private /etc/group does.
    static func istioGolden(_ folder: String, _ name: String) throws -> String {
        let url = KernelSupport.istioCases.appendingPathComponent(folder).appendingPathComponent("\(name).golden")
        guard let text = try? String(contentsOf: url, encoding: .utf8) else {
            throw Failure(description: "Istio golden \(url.path) is missing")
        }
        return text.replacing(/(--gid-owner|skgid|skgid !=) java\b/) { m in "\(m.1) \(KernelSupport.javaGID)" }
    }

    static func istioNft(_ name: String) throws -> String { try istioGolden("nftables", name) }

    /// An istio-iptables golden split into restore payloads per family (`-N X` → `:X - [0:0]`).
    static func istioIptables(_ name: String) throws -> (ipv4: String, ipv6: String) {
        let text = try istioGolden("iptables", name)
        var families: [[(String, [String])]] = [[]]
        var seen: Set<String> = []
        var current: Int?
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let line = String(raw)
            if line.hasPrefix("* ") {
                let table = line.dropFirst(2).trimmingCharacters(in: .whitespaces)
                if seen.contains(table) {
                    families.append([])
                    seen = []
                }
                seen.insert(table)
                families[families.count - 1].append((table, []))
                current = families[families.count - 1].count - 1
            } else if line == "COMMIT" {
                current = nil
            } else if let index = current {
                families[families.count - 1][index].1.append(line)
            }
        }
        let payloads = families.map { tables -> String in
            var out: [String] = []
            for (table, lines) in tables {
                out.append("*\(table)")
                out += lines.filter { $0.hasPrefix("-N ") }.map {
                    ":\($0.dropFirst(3).trimmingCharacters(in: .whitespaces)) - [0:0]"
                }
                out += lines.filter { !$0.hasPrefix("-N ") }
                out.append("COMMIT")
            }
            return out.isEmpty ? "" : out.joined(separator: "\n") + "\n"
        }
        return (payloads.first ?? "", payloads.count > 1 ? payloads[1] : "")
    }

    static func diff(_ want: [String], _ got: [String]) -> String {
        let removed = want.filter { !got.contains($0) }.map { "- \($0)" }
        let added = got.filter { !want.contains($0) }.map { "+ \($0)" }
        if removed.isEmpty && added.isEmpty { return "same lines, different order" }
        return (removed + added).joined(separator: "\n")
    }
}
