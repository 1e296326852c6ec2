import Foundation
import MeshConfig
import MeshIptables
import MeshModel
import MeshPlanner
import MeshRender
import MeshTestKit
import Testing

/// Both iptables variants' restore tools, both families.
let bothVariants = [
    "iptables-nft-restore", "iptables-legacy-restore", "ip6tables-nft-restore", "ip6tables-legacy-restore",
]

/// Real kernel: what `iptables-save` prints for our rules must be what `SaveCanonical`
/// predicts, or re-runs would not be no-ops and `verify` would report false drift. Every rule
/// shape the planner makes is loaded with Istio's spelling (`IptablesRestore.render`, what the
/// conformance check holds against Istio) through `iptables-restore`, read back with
/// `iptables-save`, and compared in our canonical form with the plan: for iptables-nft and
/// iptables-legacy, both families, over a generous set of flag combinations (the spellings
/// iptables-save normalises: `-d 0.0.0.0/0` and `::/0` dropped, hosts as `/32` and `/128`,
/// networks masked, IPv6 compressed, lower case and IPv4-embedded as glibc prints it, port
/// ranges `a:b`, marks in hex with and without a mask, TPROXY's `--on-ip`, CT zones …). Each
/// configuration and variant gets its own throwaway network namespace.
@Suite(.serialized, .enabled(if: Kernel.mayRun(tools: bothVariants)))
struct KernelCanonicalTests {

    struct Lookup: SystemLookup {
        static let resolvPath = "/fake/resolv.conf"
        var resolvConf = ""
        func userID(named name: String) -> UInt32? { name == "istio-proxy" ? 1337 : nil }
        func groupID(named name: String) -> UInt32? { name == "java" ? 30000 : nil }
        func detectIPv6(dualStack: Bool) -> Bool? { true }
        func loopbackHasIPv6() -> Bool { true }
        func readFile(_ path: String) -> String? { path == Self.resolvPath ? resolvConf : nil }
    }

    /// One flag combination: Istio's flags, the environment-only knobs, resolv.conf.
    struct Flags: CustomStringConvertible {
        var name: String
        var flags: FlagMap<String>
        var environment: [String: String] = [:]
        var resolvConf = "nameserver 10.96.0.10\nnameserver fd00::a\n"

        var description: String { name }

        func plan() throws -> Plan {
            var flags = self.flags
            flags[.ipv6] = flags[.ipv6] ?? "on"
            flags[.resolvConf] = Lookup.resolvPath
            let settings = try ConfigResolver(system: Lookup(resolvConf: resolvConf)).resolve(
                flags: flags, environment: environment)
            return Planner.plan(settings.capture)
        }
    }

    static let seed: FlagMap<String> = [
        .envoyPort: "15001", .inboundCapturePort: "15006", .proxyUID: "1337", .interceptionMode: "REDIRECT",
        .serviceCIDR: "*", .serviceExcludeCIDR: "", .inboundPorts: "*", .localExcludePorts: "15090,15021,15020",
    ]

    static func with(_ name: String, _ changes: FlagMap<String>, env: [String: String] = [:], resolv: String? = nil)
        -> Flags
    {
        var flags = Flags(name: name, flags: seed.merging(changes) { $1 }, environment: env)
        if let resolv { flags.resolvConf = resolv }
        return flags
    }

    /// Every spelling iptables-save normalises, at least once.
    static let fixed: [Flags] = [
        with("seed", [:]),
        with("seed-ipv4-only", [.ipv6: "off"]),
        with("include-all-v4", [.serviceCIDR: "0.0.0.0/0"]),
        with("include-all-both", [.serviceCIDR: "0.0.0.0/0,::/0"]),
        with("include-all-v6", [.serviceCIDR: "::/0,10.0.0.0/8"]),
        with("exclude-all", [.serviceExcludeCIDR: "0.0.0.0/0,::/0"]),
        with("kubevirt-include-all", [.kubeVirtInterfaces: "eth1,kv+", .serviceCIDR: "0.0.0.0/0,::/0"]),
        with("kubevirt-wildcard", [.kubeVirtInterfaces: "eth1", .serviceCIDR: "*"]),
        with("kubevirt-cidrs", [.kubeVirtInterfaces: "eth1", .serviceCIDR: "10.0.0.0/8,2001:db8::/32"]),
        with(
            "hosts-and-unmasked", [.serviceCIDR: "10.1.2.4/32,2001:db8::2/128,192.168.7.9/24,2001:db8::1:2/96"]),
        with(
            "ipv6-spellings",
            [
                .serviceExcludeCIDR:
                    "2001:DB8:0:0:0:0:0:1/128,::ffff:10.0.0.0/104,::a00:0/104,::10.0.0.1/128,fe80::/10,2001:db8:0:1::/64,2001:0:0:1:0:0:0:1/128,0:0:0:0:0:0:0:1/128,2001:db8::1:0:0:1/128,::1:0/112"
            ]),
        with(
            "port-ranges",
            [
                .inboundPorts: "80,8000-8010,1-1024,65535", .outboundPorts: "1-65535,53",
                .localOutboundPortsExclude: "20-22,65535",
            ]),
        with("wildcard-exclude-ranges", [.localExcludePorts: "15020-15021,1-1024,65535"]),
        with("inbound-all-ports", [.inboundPorts: "1-65535"]),
        with("tproxy", [.interceptionMode: "TPROXY", .localExcludePorts: "15020-15021", .tproxyMark: "1337"]),
        with("tproxy-mark-0", [.interceptionMode: "TPROXY", .tproxyMark: "0", .tproxyRouteTable: "1"]),
        with(
            "tproxy-mark-max",
            [.interceptionMode: "TPROXY", .tproxyMark: "4294967295", .inboundPorts: "80,443,9000-9100"]),
        with("tproxy-drop-invalid", [.interceptionMode: "TPROXY", .dropInvalid: "true", .excludeInterfaces: "veth+"]),
        with("drop-invalid", [.dropInvalid: "true"]),
        with(
            "dns-servers", [.redirectDNS: "true"],
            resolv: "nameserver 10.96.0.10\nnameserver fd00::a\nnameserver ::ffff:10.0.0.10\nnameserver ::10.0.0.11\n"
        ),
        with("dns-all", [.redirectDNS: "true", .captureAllDNS: "true"]),
        with(
            "dns-owner-groups", [.redirectDNS: "true", .proxyUID: "3,4", .proxyGID: "1,2"],
            env: ["ISTIO_OUTBOUND_OWNER_GROUPS": "java,202"]),
        with(
            "owner-groups-exclude", [.redirectDNS: "true", .captureAllDNS: "true"],
            env: ["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "0,4294967294"]),
        with("ids-extreme", [.proxyUID: "0,4294967294", .proxyGID: "4294967294"]),
        with("ports-extreme", [.envoyPort: "1", .inboundCapturePort: "65535", .inboundTunnelPort: "2"]),
        with(
            "interfaces", [.excludeInterfaces: "eth0.100,br_x-1,veth+,a@b", .kubeVirtInterfaces: "kv+,k.v-1"]),
        with("loopback-cidr-8", [:], env: ["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.0/8"]),
        with("loopback-cidr-unmasked", [:], env: ["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.1.2.3/16"]),
        with("nothing-captured", [.serviceCIDR: "", .inboundPorts: ""]),
        with("include-loopback", [.serviceCIDR: "127.0.0.0/8,::1/128,10.0.0.0/8"]),
        with(
            "long-lists-with-all",
            [
                .serviceExcludeCIDR:
                    ((0..<20).map { "10.\($0).0.0/16" } + ["0.0.0.0/0", "::/0"]
                    + (0..<17).map { "2001:db8:\($0)::/48" }).joined(separator: ","),
                .serviceCIDR: ((1...18).map { "198.51.100.\($0)/32" } + ["0.0.0.0/0"]).joined(separator: ","),
                .localOutboundPortsExclude: (1...17).map { "\(6000 + $0)" }.joined(separator: ",") + ",7000-7100",
                .inboundPorts: (1...17).map { "\(8000 + $0)" }.joined(separator: ",") + ",1-10",
                .interceptionMode: "TPROXY",
            ]),
        with(
            "long-exclude-ports", [.localExcludePorts: (1...17).map { "\(9000 + $0)" }.joined(separator: ",")]),
    ]

    /// Flag combinations drawn (fixed seed: the same every run) from pools of values of
    /// every flag family, the odd spellings included.
    static func drawn(count: Int, randomSeed: UInt64) -> [Flags] {
        var state = randomSeed
        func next(_ n: Int) -> Int {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Int((state >> 33) % UInt64(n))
        }
        func pick(_ values: [String]) -> String { values[next(values.count)] }
        let pools: [(IstioFlag, [String])] = [
            (
                .serviceCIDR,
                [
                    "*", "", "0.0.0.0/0", "::/0", "0.0.0.0/0,::/0", "10.0.0.0/8", "10.1.2.3/32", "2001:DB8::1/128",
                    "10.0.0.0/8,2001:db8::/32", "192.168.1.1/24,::ffff:192.168.0.0/120",
                ]
            ),
            (
                .serviceExcludeCIDR,
                [
                    "", "0.0.0.0/0", "::/0", "10.96.0.1/32,fd00::1/128", "::ffff:10.0.0.0/104", "::a00:0/104",
                    "2001:db8:0:1::/64", "169.254.169.254/32",
                ]
            ),
            (.inboundPorts, ["*", "", "80", "80,8000-8010", "1-65535", "15006"]),
            (.localExcludePorts, ["", "15090,15021,15020", "15020-15021", "1-1024"]),
            (.outboundPorts, ["", "3306", "1-65535", "53,8000-8100"]),
            (.localOutboundPortsExclude, ["", "6379", "20-22", "65535"]),
            (.interceptionMode, ["REDIRECT", "TPROXY", "NONE"]),
            (.tproxyMark, ["1337", "0", "4294967295", "7"]),
            (.excludeInterfaces, ["", "eth9", "veth+", "eth0.100,br_x-1"]),
            (.kubeVirtInterfaces, ["", "eth1", "kv+,eth2"]),
            (.proxyUID, ["1337", "0", "3,4"]),
            (.proxyGID, ["", "1,2", "4294967294"]),
            (.redirectDNS, ["false", "true"]),
            (.captureAllDNS, ["false", "true"]),
            (.dropInvalid, ["false", "true"]),
            (.ipv6, ["on", "on", "off"]),
        ]
        let groups = ["*", "202,203", "0"]
        let loopbacks = ["127.0.0.1/32", "127.0.0.0/8", "127.1.2.3/16"]
        return (0..<count).map { index in
            var flags = Self.seed
            for (flag, values) in pools { flags[flag] = pick(values) }
            var environment = [
                "ISTIO_OUTBOUND_OWNER_GROUPS": pick(groups), "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": pick(loopbacks),
            ]
            if environment["ISTIO_OUTBOUND_OWNER_GROUPS"] == "*" && next(2) == 0 {
                environment["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"] = "7"
            }
            return Flags(
                name: "drawn-\(index): "
                    + flags.filter { Self.seed[$0.key] != $0.value }.map { "\($0.key.long)=\($0.value)" }.sorted()
                    .joined(separator: " ") + " \(environment)",
                flags: flags, environment: environment,
                resolvConf: "nameserver 10.96.0.10\nnameserver ::ffff:10.0.0.10\nnameserver FD00::A\n")
        }
    }

    static let all = fixed + drawn(count: 30, randomSeed: 0x17b)

    @Test("iptables-save reads back what SaveCanonical predicts", arguments: ["nft", "legacy"])
    func saveOutputMatchesCanonicalRendering(variant: String) throws {
        try Kernel.need(tools: bothVariants)
        var seen: [String] = []
        for flags in Self.all {
            do {
                let plan = try flags.plan()
                let ns = try Kernel.Namespace()
                defer { ns.delete() }
                for family in plan.families {
                    seen += try check(
                        plan, family: family, variant: variant, ns: ns, label: "\(flags) \(family) \(variant)")
                }
            } catch {
                Issue.record("\(flags) \(variant): \(error)")
            }
        }
        // The spellings this test is about were all met (a pool edited away would go unnoticed).
        let shapes = [
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT", "-A ISTIO_OUTPUT -j RETURN", "-i eth1 -j ISTIO_REDIRECT",
            "-d 10.1.2.4/32 ", "-d 192.168.7.0/24 ", "-d 2001:db8::1/128 ", "-d ::10.0.0.1/128 ",
            "-d ::ffff:10.0.0.0/104 ", "-d ::10.0.0.0/104 ", "-d ::0.1.0.0/112 ", "-d 2001:db8:0:1::/64 ",
            "-d 2001:0:0:1::1/128 ", "-d ::1/128 ", "! -d ::1/128 ", "! -d 127.0.0.1/32 ", "! -d 127.0.0.0/8 ",
            "--dport 1:1024 ", "-m multiport ! --dports 53,15008 ", "--dport 65535 ", "--to-ports 15053",
            "--on-ip :: ", "--on-ip 0.0.0.0 ", "--tproxy-mark 0x0/0xffffffff", "--tproxy-mark 0xffffffff/0xffffffff",
            "-m mark --mark 0x539 ", "-m connmark --mark 0x539 ", "--set-xmark 0x53a/0xffffffff",
            "CT --zone 1", "CT --zone 2", "--uid-owner 4294967294 ", "! --gid-owner 0 ",
            "-m conntrack --ctstate INVALID",
            "-i veth+ ", "-o a@b ", "-i kv+ ", "-s ::10.0.0.11/128 ", "-d ::ffff:10.0.0.10/128 ", "-d fd00::a/128 ",
        ]
        for shape in shapes where !seen.contains(where: { $0.contains(shape) }) {
            Issue.record("\(variant): no rule read back contains \(quoted(shape))")
        }
    }

    /// Loads, reads back and compares one family; returns the rules read back (`-A CHAIN SPEC`).
    func check(_ plan: Plan, family: Family, variant: String, ns: Kernel.Namespace, label: String) throws -> [String] {
        let prefix = family == .ipv4 ? "iptables" : "ip6tables"
        let payload = IptablesRestore.render(plan, family: family)
        let restore = try ns.exec(["\(prefix)-\(variant)-restore", "--noflush"], stdin: payload, check: false)
        #expect(restore.status == 0, "\(label): \(restore.stderr)")
        let live = parseSave(try ns.exec(["\(prefix)-\(variant)-save"]).stdout)
        let ops = plan.operations(for: family)
        let drifted = drift(live: live, desired: ops, family: family)
        #expect(drifted == [], "\(label)")
        #expect(reconcile(live: live, desired: ops).isEmpty, "\(label): not converged")
        // explain --live reads the same rules back into the plan's vocabulary.
        for table in live {
            for rule in table.rules {
                let (matches, target) = SaveParser.parse(rule.tokens)
                guard let matches, let target else {
                    Issue.record("\(label): SaveParser does not read \(table.name) -A \(rule.chain) \(rule.spec)")
                    continue
                }
                #expect(SaveCanonical.spec(Rule(matches, target)) == rule.spec, "\(label): \(rule.spec)")
            }
        }
        // And cleanup from that state leaves nothing of ours.
        let clean = reconcile(live: live, desired: []).map(\.block).joined()
        let cleaned = try ns.exec(["\(prefix)-\(variant)-restore", "--noflush"], stdin: clean, check: false)
        #expect(cleaned.status == 0, "\(label) clean: \(cleaned.stderr)")
        let after = try ns.exec(["\(prefix)-\(variant)-save"]).stdout
        #expect(!after.contains("ISTIO"), "\(label): left after cleanup:\n\(after)")
        #expect(reconcile(live: parseSave(after), desired: []).isEmpty)
        return live.flatMap { table in table.rules.map { "-A \($0.chain) \($0.spec) " } }
    }
}
