import Foundation
import MeshConfig
import MeshModel
import MeshPlanner
import MeshTestKit
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
    var flags: FlagMap<String>
    var environment: [String: String]
    var resolvConf: String?
    /// Set when the case could not be read: running it fails, naming the path.
    var unreadablePath: String?

    var testDescription: String { name }

    /// Stands for cases that could not be read from `path`.
    init(unreadable path: String) {
        name = "unreadable: \(path)"
        flags = [:]
        environment = [:]
        unreadablePath = path
    }

    static let resolvPath = "/conformance/resolv.conf"

    init(name: String, argsText: String) {
        self.name = name
        var flags: FlagMap<String> = [:]
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
        if let unreadablePath {
            throw ConformanceUnavailable(path: unreadablePath)
        }
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

/// The conformance cases (`../shared/conformance/istio`) are missing or unreadable.
struct ConformanceUnavailable: Error, CustomStringConvertible {
    var path: String
    var description: String { "conformance cases not readable at \(path) (../shared must sit next to the repository)" }
}

enum Conformance {
    static let javaGID: UInt32 = 30000
    static let testsDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    /// `../shared/conformance/istio/nftables` next to the repository.
    static let directory = testsDirectory.deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("shared/conformance/istio/nftables")

    /// Every case of the directory. Never empty: when the cases cannot be read, one case
    /// stands for them and fails (a parameterized test over `[]` would pass by running nothing).
    static var all: [ConformanceCase] {
        let names =
            ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? [])
            .filter { $0.hasSuffix(".args") }.sorted()
        var cases: [ConformanceCase] = []
        for file in names {
            guard let text = try? String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8) else {
                cases.append(ConformanceCase(unreadable: directory.appendingPathComponent(file).path))
                continue
            }
            cases.append(ConformanceCase(name: String(file.dropLast(5)), argsText: text))
        }
        return cases.isEmpty ? [ConformanceCase(unreadable: directory.path)] : cases
    }

    /// A plan from istio-iptables flags (`["-p", "15001", …]`), IPv6 on or off.
    static func plan(_ args: [String], ipv6: Bool = true, resolvConf: String? = nil) throws -> Plan {
        var flags: FlagMap<String> = [.ipv6: ipv6 ? "on" : "off"]
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

extension Kernel.Namespace {
    /// `nft -f -` of `script`, with `java` resolvable as the conformance check makes it.
    func nftScript(_ script: String) throws {
        try loadNft(script, groups: ["java": Conformance.javaGID])
    }
}
