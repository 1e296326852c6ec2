import Foundation
import MeshConfig
import MeshModel
import MeshPlanner
import MeshRender
import Testing

/// A `SystemLookup` from tables (no real passwd/group/interfaces/files).
struct FakeSystem: SystemLookup {
    var users: [String: UInt32] = ["istio-proxy": 1337]
    /// `java` stands in for the group the conformance check adds to a private /etc/group.
    var groups: [String: UInt32] = ["java": KernelSupport.javaGID, "istio-proxy": 1337]
    var files: [String: String] = [:]

    func userID(named name: String) -> UInt32? { users[name] }
    func groupID(named name: String) -> UInt32? { groups[name] }
    func detectIPv6(dualStack: Bool) -> Bool? { false }
    func loopbackHasIPv6() -> Bool { true }
    func readFile(_ path: String) -> String? { files[path] }
}

/// Parses istio-iptables style arguments (`-p 15001`, `--envoy-port=15001`, `--redirect-dns`).
func parseArguments(_ args: [String]) -> FlagMap<String> {
    var flags: FlagMap<String> = [:]
    var i = 0
    while i < args.count {
        let arg = args[i]
        i += 1
        let flag: IstioFlag?
        var value: String?
        if arg.hasPrefix("--") {
            let body = arg.dropFirst(2)
            if let eq = body.firstIndex(of: "=") {
                flag = IstioFlag(long: body[..<eq])
                value = String(body[body.index(after: eq)...])
            } else {
                flag = IstioFlag(long: body)
            }
        } else {
            precondition(arg.count == 2 && arg.hasPrefix("-"), "not a flag: \(arg)")
            flag = IstioFlag(short: arg.last!)
        }
        guard let flag else { preconditionFailure("unknown flag \(arg)") }
        if value == nil {
            if flag.isBoolean {
                value = "true"
            } else {
                value = args[i]
                i += 1
            }
        }
        flags[flag] = value
    }
    return flags
}

/// One named configuration with golden renderings.
struct GoldenCase: Sendable, CustomTestStringConvertible {
    var name: String
    var args: [String]
    var environment: [String: String] = [:]
    var ipv6: Bool
    /// resolv.conf content (nil: none given).
    var resolvConf: String?
    /// Whether Istio's goldens of the same name exist under `../shared/conformance/istio`
    /// (iptables, nftables).
    var istioIptables = false
    var istioNft = false

    var testDescription: String { name }

    static let resolvPath = "/fake/resolv.conf"

    func settings() throws(ConfigError) -> Settings {
        var flags = parseArguments(args)
        flags[.ipv6] = ipv6 ? "on" : "off"
        var system = FakeSystem()
        if let resolvConf {
            flags[.resolvConf] = Self.resolvPath
            system.files[Self.resolvPath] = resolvConf
        }
        return try ConfigResolver(system: system).resolve(flags: flags, environment: environment)
    }

    func plan() throws -> Plan { Planner.plan(try settings().capture) }

    /// File extension → rendering.
    func renderings() throws -> [(ext: String, text: String)] {
        let plan = try plan()
        return [
            ("ipv4", IptablesRestore.render(plan, family: .ipv4)),
            ("ipv6", IptablesRestore.render(plan, family: .ipv6)),
            ("nft", NftScript.render(plan)),
            ("json", PlanJSON.render(plan)),
        ]
    }
}

extension GoldenCase {
    static func base(uid: String = "1337", gid: String = "1337") -> [String] {
        [
            "--envoy-port=15001", "--inbound-capture-port=15006", "--inbound-tunnel-port=15008", "--proxy-uid=\(uid)",
            "--proxy-gid=\(gid)", "--istio-inbound-tproxy-mark=1337", "--istio-inbound-tproxy-route-table=133",
        ]
    }

    static func resolv(_ servers: String...) -> String {
        servers.filter { !$0.isEmpty }.map { "nameserver \($0)\n" }.joined()
    }

    /// A conformance case (Istio golden exists for iptables unless `nftOnly`).
    static func istio(
        _ name: String, _ args: [String], ipv6: Bool, env: [String: String] = [:], resolv: String? = nil,
        nftOnly: Bool = false
    ) -> GoldenCase {
        GoldenCase(
            name: name, args: args, environment: env, ipv6: ipv6, resolvConf: resolv, istioIptables: !nftOnly,
            istioNft: true)
    }

    static let seedArgs = [
        "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d",
        "15090,15021,15020",
    ]

    /// The 21 conformance cases (their `#note`s translated), Istio's seed invocation, and our own.
    static let all: [GoldenCase] = [
        istio("basic-exclude-nic", base() + ["--istio-exclude-interfaces=not-istio-nic"], ipv6: false),
        istio(
            "dns-uid-gid", base(uid: "3,4", gid: "1,2") + ["--redirect-dns"], ipv6: true,
            resolv: resolv("127.0.0.53", "::127.0.0.53")),
        istio("drop-invalid", base() + ["--drop-invalid"], ipv6: false),
        istio("empty", base(), ipv6: false),
        istio(
            "host-ipv4-loopback-cidr", base(), ipv6: false, env: ["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/8"]),
        istio("inbound-ports-include", base() + ["--istio-inbound-ports=32000,31000"], ipv6: false),
        istio(
            "inbound-ports-tproxy",
            base() + ["--istio-inbound-ports=32000,31000", "--istio-inbound-interception-mode=TPROXY"], ipv6: false),
        istio("inbound-ports-wildcard", base() + ["--istio-inbound-ports=*"], ipv6: false),
        istio(
            "ip-range",
            base(uid: "3,4", gid: "1,2") + [
                "--istio-service-exclude-cidr=1.1.0.0/16", "--istio-service-cidr=9.9.0.0/16", "--dry-run",
                "--redirect-dns",
            ], ipv6: false, resolv: resolv("127.0.0.53")),
        istio("ipnets", base() + ["--istio-service-cidr=10.0.0.0/8"], ipv6: false),
        istio(
            "ipv6-dns-outbound-owner-groups", base() + ["--redirect-dns"], ipv6: true,
            env: ["ISTIO_OUTBOUND_OWNER_GROUPS": "java,202"], resolv: resolv()),
        istio("ipv6-dns-uid-gid", base(uid: "3,4", gid: "1,2") + ["--redirect-dns"], ipv6: true, resolv: resolv()),
        istio("ipv6-empty-inbound-ports", base() + ["--istio-inbound-ports="], ipv6: true),
        istio("ipv6-inbound-ports", base() + ["--istio-inbound-ports=4000,5000"], ipv6: true),
        istio(
            "ipv6-ipnets",
            base() + [
                "--istio-inbound-ports=4000,5000", "--istio-local-exclude-ports=6000,7000,",
                "--kube-virt-interfaces=eth0,eth1", "--istio-service-exclude-cidr=2001:db8::/32",
                "--istio-service-cidr=2001:db8::/32",
            ], ipv6: true),
        istio(
            "ipv6-uid-gid",
            base(uid: "3,4", gid: "1,2") + [
                "--istio-inbound-ports=4000,5000", "--istio-local-exclude-ports=6000,7000",
                "--kube-virt-interfaces=eth0,eth1", "--istio-service-exclude-cidr=2001:db8::/32",
                "--istio-service-cidr=2001:db8::/32",
            ], ipv6: true),
        istio(
            "kube-virt-interfaces", base() + ["--kube-virt-interfaces=eth1,eth2", "--istio-service-cidr=*"], ipv6: false
        ),
        istio("outbound-owner-groups", base(), ipv6: false, env: ["ISTIO_OUTBOUND_OWNER_GROUPS": "java,202"]),
        istio("outbound-ports-include", base() + ["--istio-outbound-ports=32000,31000"], ipv6: false),
        istio(
            "tproxy",
            base() + [
                "--istio-inbound-interception-mode=TPROXY", "--istio-inbound-ports=*",
                "--istio-service-exclude-cidr=1.1.0.0/16", "--istio-service-cidr=9.9.0.0/16", "--dry-run",
                "--redirect-dns", "--istio-exclude-interfaces=not-istio-nic",
            ], ipv6: true, resolv: resolv("127.0.0.53")),
        istio(
            "inbound-ports-empty-tproxy",
            base() + ["--istio-inbound-ports=", "--istio-inbound-interception-mode=TPROXY"], ipv6: false,
            nftOnly: true),
        // Istio's seed invocation.
        GoldenCase(name: "seed", args: seedArgs, ipv6: false),
        GoldenCase(name: "seed-ipv6", args: seedArgs, ipv6: true),
        // Our own.
        GoldenCase(
            name: "port-ranges",
            args: ["-b", "8000-8010,9080", "-q", "7000-7005,7100", "-o", "6000-6010", "-i", "10.0.0.0/8"], ipv6: true),
        GoldenCase(name: "wildcard-exclude-ranges", args: ["-b", "*", "-d", "15020-15021,15090"], ipv6: false),
        GoldenCase(name: "capture-all-dns", args: ["--redirect-dns", "--capture-all-dns", "-i", "*"], ipv6: true),
        GoldenCase(
            name: "capture-all-dns-ipv4", args: ["--redirect-dns", "--capture-all-dns", "-b", "*"], ipv6: false),
        GoldenCase(
            name: "dns-servers-both-families", args: ["--redirect-dns", "-i", "*"], ipv6: true,
            resolvConf: resolv("10.96.0.10", "fd00::a", "10.96.0.11")),
        GoldenCase(name: "outbound-exclude-ports", args: ["-o", "3306,5432", "-i", "*", "-b", "*"], ipv6: false),
        GoldenCase(
            name: "tproxy-wildcard-exclude",
            args: ["-m", "TPROXY", "-b", "*", "-d", "15090,15021,15020", "-i", "*"], ipv6: true),
        GoldenCase(
            name: "tproxy-custom-mark-table", args: ["-m", "TPROXY", "-b", "80,443", "-t", "4242", "-r", "200"],
            ipv6: false),
        GoldenCase(
            name: "mixed-families",
            args: [
                "-i", "10.0.0.0/8,2001:db8::/32,192.168.0.0/16,fd00::/8", "-x", "10.1.0.0/16,2001:db8:1::/48",
                "-k", "eth1",
            ], ipv6: true),
        GoldenCase(
            name: "mixed-families-ipv4-only",
            args: ["-i", "10.0.0.0/8,2001:db8::/32,192.168.0.0/16", "-x", "10.1.0.0/16,2001:db8:1::/48"], ipv6: false
        ),
        GoldenCase(
            name: "owner-groups-exclude", args: ["-i", "*"],
            environment: ["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "java,202"],
            ipv6: false),
        GoldenCase(name: "veth-wildcard", args: ["-c", "veth+,eth0.100", "-k", "kv+", "-i", "*"], ipv6: true),
        GoldenCase(name: "drop-invalid-tproxy", args: ["--drop-invalid", "-m", "TPROXY", "-b", "*"], ipv6: true),
        GoldenCase(name: "user-group-names", args: ["-u", "istio-proxy", "-g", "java", "-b", "80"], ipv6: false),
        GoldenCase(name: "loopback-include", args: ["-i", "127.0.0.0/8,10.0.0.0/8"], ipv6: false),
        // Lists longer than Planner.listThreshold: one nft rule with a set; iptables expands.
        GoldenCase(
            name: "long-lists",
            args: [
                "-x",
                ((0..<20).map { "10.\($0).0.0/16" } + (0..<17).map { "2001:db8:\($0)::/48" })
                    .joined(separator: ","),
                "-i", (1...18).map { "198.51.100.\($0)/32" }.joined(separator: ","),
                "-o", (1...17).map { "\(6000 + $0)" }.joined(separator: ","),
                "-q", (1...17).map { "\(7000 + $0)" }.joined(separator: ",") + ",7100-7200",
                "-b", (1...17).map { "\(8000 + $0)" }.joined(separator: ","), "-m", "TPROXY",
            ], ipv6: true),
        GoldenCase(
            name: "env-only",
            args: [],
            environment: [
                "ISTIO_INBOUND_PORTS": "*", "ISTIO_LOCAL_EXCLUDE_PORTS": "15090", "ISTIO_SERVICE_CIDR": "*",
                "INBOUND_CAPTURE_PORT": "15016", "PROXY_UID": "1400", "INVALID_DROP": "true",
            ], ipv6: false),
    ]
}

/// Paths and constants shared by the golden and kernel tests.
enum KernelSupport {
    static let javaGID: UInt32 = 30000
    static let testsDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    static let goldens = testsDirectory.appendingPathComponent("Goldens")
    /// `../shared/conformance/istio` next to the repository.
    static let istioCases = testsDirectory.deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("shared/conformance/istio")

    static func golden(_ name: String, _ ext: String) -> URL {
        goldens.appendingPathComponent("\(name).\(ext)")
    }
}
