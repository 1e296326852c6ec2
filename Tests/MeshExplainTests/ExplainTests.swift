import MeshCNI
import MeshConfig
import MeshExplain
import MeshIptables
import MeshModel
import MeshPlanner
import MeshRender
import PropertyBased
import Testing

/// A system with istio-proxy = 1337, no IPv6 detected unless asked, a resolv.conf.
struct Lookup: SystemLookup {
    func userID(named name: String) -> UInt32? { name == "istio-proxy" ? 1337 : nil }
    func groupID(named name: String) -> UInt32? { name == "istio-proxy" ? 1337 : nil }
    func detectIPv6(dualStack: Bool) -> Bool? { false }
    func loopbackHasIPv6() -> Bool { false }
    func readFile(_ path: String) -> String? {
        path == "/etc/resolv.conf" ? "nameserver 10.96.0.10\nnameserver fd00::a\n" : nil
    }
}

/// The injected istio-init's flags.
let seed = [
    "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d",
    "15090,15021,15020",
]

struct Setup {
    var settings: Settings
    var plan: Plan
    var sources: [CaptureSetting: [String]]

    init(_ arguments: [String], environment: [String: String] = [:]) throws {
        let flags = try IstioArguments.parse(arguments)
        let input = ConfigInput(flags: flags, environment: environment)
        settings = try ConfigResolver(system: Lookup()).resolve(input)
        plan = Planner.plan(settings.capture)
        sources = input.origins(of: settings).mapValues { $0.map(\.description) }
    }

    func explain(_ packet: String, _ backend: Backend = .iptables, pod: PodNetwork? = nil) throws -> Walk {
        let explainer = Explainer(ruleset: Ruleset(plan: plan, backend: backend), pod: pod)
        return Walk(
            e: explainer.explain(try Packet.parse(packet)), report: Report(ruleset: explainer.ruleset, sources: sources)
        )
    }
}

/// An explanation with its report, for terse checks.
@dynamicMemberLookup
struct Walk {
    var e: Explanation
    var report: Report

    subscript<T>(dynamicMember path: KeyPath<Explanation, T>) -> T { e[keyPath: path] }

    func line(_ i: Int) -> String { report.iptables(e.steps[i]) }
    func entry(_ i: Int) -> RuleEntry { report.entry(e.steps[i]) }
    func from(_ i: Int) -> [String] { report.from(entry(i)) }
    var decided: Int { get throws { try #require(e.decisive) } }
    var reason: String { report.reasonText(e) }
    var verdictText: String { report.verdictText(e) }
}

@Suite("explain: verdicts for the seed's flags")
struct SeedTests {
    @Test("an app connection is redirected to the outbound listener, on both backends")
    func appConnection() throws {
        let setup = try Setup(seed)
        for backend in Backend.allCases {
            let e = try setup.explain("out tcp 10.0.0.5:80 uid=1000", backend)
            #expect(e.verdict == .redirected(port: Port(15001)!, listener: .proxyPort))
            let decisive = try e.decided
            #expect(e.steps[decisive].table == .nat)
            #expect(e.steps[decisive].chain == .own(.redirect))
            #expect(e.steps.map(\.chain) == [.builtin(.output), .own(.output), .own(.redirect)])
            #expect(e.line(1) == "-A ISTIO_OUTPUT -j ISTIO_REDIRECT")
            #expect(e.from(1) == [#"-i/--istio-service-cidr "*""#])
            #expect(e.from(2) == [#"-p/--envoy-port "15001""#])
            #expect(
                e.entry(2).nft
                    == "add rule inet istio-proxy-nat istio-redirect meta l4proto tcp counter redirect to :15001")
        }
    }

    @Test("the proxy's own connection goes out, let go by the uid rule")
    func proxyConnection() throws {
        let setup = try Setup(seed)
        let e = try setup.explain("out tcp 10.0.0.5:80 uid=1337")
        #expect(e.verdict == .notCaptured)
        let decisive = try e.decided
        #expect(e.line(decisive) == "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN")
        #expect(e.entry(decisive).origin == [.proxyUIDs])
        #expect(e.reason.contains(#"-u/--proxy-uid "1337""#))
        #expect(e.verdictText == "not captured: leaves the pod for 10.0.0.5:80 through eth0")
    }

    @Test("gid 1337 alone is the proxy too (Istio's -g defaults to -u)")
    func proxyGroup() throws {
        let e = try Setup(seed).explain("out tcp 10.0.0.5:80 uid=1000 gid=1337")
        #expect(e.verdict == .notCaptured)
        #expect(e.entry(try e.decided).origin == [.proxyGIDs])
    }

    @Test("inbound: captured to the inbound listener, except the excluded ports and the tunnel port")
    func inbound() throws {
        let setup = try Setup(seed)
        let app = try setup.explain("in tcp :8080")
        #expect(app.verdict == .redirected(port: Port(15006)!, listener: .inboundCapturePort))
        #expect(app.steps.map(\.chain) == [.builtin(.prerouting), .own(.inbound), .own(.inRedirect)])
        for port in [15090, 15021, 15020] {
            let e = try setup.explain("in tcp 10.1.2.3:\(port)")
            #expect(e.verdict == .notCaptured)
            let decisive = try e.decided
            #expect(e.entry(decisive).origin == [.inboundExcludePorts])
            #expect(
                e.from(decisive) == [#"-d/--istio-local-exclude-ports "15090,15021,15020""#])
            #expect(e.verdictText == "not captured: delivered to the app on port \(port)")
        }
        let tunnel = try setup.explain("in tcp :15008")
        #expect(tunnel.verdict == .notCaptured)
        #expect(tunnel.entry(try tunnel.decided).origin == [.inboundTunnelPort])
        #expect(try setup.explain("in udp :8080").verdict == .notCaptured)
    }

    @Test("loopback: app-to-app over lo is not captured; the proxy to the pod's own address goes inbound")
    func loopback() throws {
        let setup = try Setup(seed)
        let local = try setup.explain("out tcp 127.0.0.1:8080 uid=1000")
        #expect(local.verdict == .notCaptured)
        #expect(
            local.line(try local.decided)
                == "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN")
        let toSelf = try setup.explain("out tcp 10.0.0.7:8080 uid=1337 iface=lo")
        #expect(toSelf.verdict == .redirected(port: Port(15006)!, listener: .inboundCapturePort))
        let passthrough = try setup.explain("out tcp 10.0.0.7:8080 uid=1337 iface=lo src=127.0.0.6")
        #expect(passthrough.verdict == .notCaptured)
        #expect(passthrough.entry(try passthrough.decided).origin == [])
        #expect(passthrough.reason.contains("Istio's fixed rules"))
    }

    @Test("UDP is not captured without DNS capture; the text says which rule let it go")
    func udp() throws {
        let setup = try Setup(seed)
        let e = try setup.explain("out udp 10.96.0.10:53 uid=1000")
        #expect(e.verdict == .notCaptured)
        // It jumps to ISTIO_REDIRECT, which redirects TCP only, and falls off the end.
        #expect(e.steps.last?.chain == .own(.output))
        #expect(e.reason == "no rule captured it: rule 2 sent it to ISTIO_REDIRECT, where no rule matched it")
    }
}

@Suite("explain: the flag families")
struct FamilyTests {
    @Test("DNS capture: port 53 to a resolv.conf server goes to istio-agent, from the proxy it does not")
    func dns() throws {
        let setup = try Setup(seed + ["--redirect-dns"])
        let e = try setup.explain("out udp 10.96.0.10:53 uid=1000")
        #expect(e.verdict == .redirected(port: Port(15053)!, listener: .dns))
        #expect(e.verdictText.hasPrefix("DNS captured: redirected to port 15053"))
        #expect(e.steps.indices.contains { e.steps[$0].table == .raw && e.entry($0).target == .conntrackZone(2) })
        let other = try setup.explain("out udp 8.8.8.8:53 uid=1000")
        #expect(other.verdict == .notCaptured)
        let tcp = try setup.explain("out tcp 10.96.0.10:53 uid=1000")
        #expect(tcp.verdict == .redirected(port: Port(15053)!, listener: .dns))
        let proxy = try setup.explain("out udp 10.96.0.10:53 uid=1337")
        #expect(proxy.verdict == .notCaptured)
        #expect(
            proxy.steps.indices.contains {
                proxy.steps[$0].table == .raw && proxy.entry($0).target == .conntrackZone(1)
            })
        let all = try Setup(seed + ["--redirect-dns", "--capture-all-dns"])
        #expect(
            try all.explain("out udp 8.8.8.8:53 uid=1000").verdict == .redirected(port: Port(15053)!, listener: .dns))
    }

    @Test("excluded CIDRs and ports, included ports, owner groups")
    func outboundSelection() throws {
        let setup = try Setup(
            ["-i", "10.0.0.0/8", "-x", "10.9.0.0/16", "-q", "3306", "-o", "6379", "-b", ""],
            environment: ["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "999"])
        #expect(
            try setup.explain("out tcp 10.1.0.1:80 uid=1000").verdict
                == .redirected(port: Port(15001)!, listener: .proxyPort))
        let excluded = try setup.explain("out tcp 10.9.3.4:80 uid=1000")
        #expect(excluded.verdict == .notCaptured)
        #expect(excluded.entry(try excluded.decided).origin == [.outboundExclude])
        #expect(try setup.explain("out tcp 192.168.0.1:80 uid=1000").verdict == .notCaptured)
        #expect(
            try setup.explain("out tcp 192.168.0.1:3306 uid=1000").verdict
                == .redirected(port: Port(15001)!, listener: .proxyPort))
        let port = try setup.explain("out tcp 10.1.0.1:6379 uid=1000")
        #expect(port.entry(try port.decided).origin == [.outboundExcludePorts])
        let group = try setup.explain("out tcp 10.1.0.1:80 uid=1000 gid=999")
        #expect(group.verdict == .notCaptured)
        #expect(
            group.from(try #require(group.decisive)) == [
                #"environment variable ISTIO_OUTBOUND_OWNER_GROUPS (default "*")"#,
                #"environment variable ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE "999""#,
            ])
        #expect(try setup.explain("in tcp :8080").verdict == .notCaptured)
    }

    @Test("a value from the environment is named as the variable")
    func environmentSource() throws {
        let setup = try Setup(["-i", "*"], environment: ["ISTIO_SERVICE_EXCLUDE_CIDR": "10.9.0.0/16"])
        let e = try setup.explain("out tcp 10.9.0.1:80 uid=1000")
        #expect(
            e.reason
                == #"let go by rule 2 (from environment variable ISTIO_SERVICE_EXCLUDE_CIDR "10.9.0.0/16")"#)
    }

    @Test("excluded interfaces and kube-virt interfaces")
    func interfaces() throws {
        let setup = try Setup(seed + ["-c", "veth+", "-k", "virt0"])
        let e = try setup.explain("in tcp :8080 iface=veth12")
        #expect(e.verdict == .notCaptured)
        #expect(e.line(try e.decided) == "-A PREROUTING -i veth+ -j RETURN")
        #expect(
            try setup.explain("in tcp :8080 iface=vet0").verdict
                == .redirected(port: Port(15006)!, listener: .inboundCapturePort))
        let out = try setup.explain("out tcp 10.0.0.5:80 uid=1000 iface=veth1")
        #expect(out.verdict == .notCaptured)
        let virt = try setup.explain("in tcp 10.0.0.5:80 iface=virt0")
        #expect(virt.verdict == .redirected(port: Port(15001)!, listener: .proxyPort))
    }

    @Test("TPROXY: inbound is TPROXYed with the mark; proxy to its own address over lo is marked")
    func tproxy() throws {
        let setup = try Setup([
            "-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-i", "*", "-b", "*", "-d", "15020",
        ])
        for backend in Backend.allCases {
            let e = try setup.explain("in tcp 10.0.0.7:8080", backend)
            #expect(e.verdict == .tproxied(port: Port(15006)!, mark: Mark(1337)))
            #expect(e.steps.last?.table == .mangle)
            #expect(try setup.explain("in tcp 10.0.0.7:15020", backend).verdict == .notCaptured)
            // The app to its own pod address: lo, not captured; mangle lets it go (mark != 1338).
            let local = try setup.explain("out tcp 10.0.0.7:8080 uid=1000 iface=lo", backend)
            #expect(local.verdict == .notCaptured)
            #expect(local.notes.contains { $0.contains("comes back in on lo") })
            // The proxy to its own address on the tunnel port: marked 1338 in OUTPUT, not
            // redirected there, TPROXYed when it comes back in on lo.
            let tunnel = try setup.explain("out tcp 10.0.0.7:15008 uid=1337 iface=lo", backend)
            #expect(tunnel.steps.indices.contains { tunnel.entry($0).target == .setMark(Mark(1338)) })
            #expect(tunnel.verdict == .tproxied(port: Port(15006)!, mark: Mark(1337)))
        }
    }

    @Test("drop-invalid only drops INVALID: a first packet passes the mangle rule")
    func dropInvalid() throws {
        let setup = try Setup(seed + ["--drop-invalid"])
        #expect(
            try setup.explain("in tcp :8080").verdict == .redirected(port: Port(15006)!, listener: .inboundCapturePort))
    }

    @Test("IPv6 with IPv6 off: iptables has no IPv6 rules, Istio's nft layout captures it anyway")
    func ipv6Off() throws {
        let setup = try Setup(seed)
        let iptables = try setup.explain("out tcp [fd00::5]:80 uid=1000", .iptables)
        #expect(iptables.verdict == .notCaptured)
        #expect(iptables.notes.first?.contains("no ipv6 rules") == true)
        let nft = try setup.explain("out tcp [fd00::5]:80 uid=1000", .nft)
        #expect(nft.verdict == .redirected(port: Port(15001)!, listener: .proxyPort))
        let on = try Setup(seed + ["--ipv6=on"])
        #expect(
            try on.explain("out tcp [fd00::5]:80 uid=1000").verdict
                == .redirected(port: Port(15001)!, listener: .proxyPort))
        #expect(try on.explain("out tcp [::1]:80 uid=1000").verdict == .notCaptured)
    }

    @Test("a long list is one nft set rule and one iptables rule per item; the matching item is shown")
    func longLists() throws {
        let cidrs = (1...20).map { "10.\($0).0.0/16" }.joined(separator: ",")
        let setup = try Setup(seed + ["-x", cidrs])
        for backend in Backend.allCases {
            let e = try setup.explain("out tcp 10.7.1.1:80 uid=1000", backend)
            #expect(e.verdict == .notCaptured)
            #expect(e.line(try e.decided) == "-A ISTIO_OUTPUT -d 10.7.0.0/16 -j RETURN")
            #expect(e.entry(try e.decided).nft.contains("ip daddr { 10.1.0.0/16, "))
        }
    }
}

@Suite("explain: the CNI plugin's sources")
struct CNISourceTests {
    @Test("a rule from a pod annotation names the annotation; one from the configuration, its key")
    func annotation() throws {
        var config = try PluginConfig(
            try JSONParser.parse(#"{"type":"meshinit","istio-service-exclude-cidr":"10.96.0.1/32"}"#))
        config.annotations = ["traffic.sidecar.istio.io/excludeOutboundPorts": "6379"]
        let input = PodDecision.input(config)
        let settings = try ConfigResolver(system: Lookup()).resolve(input)
        let ruleset = Ruleset(plan: Planner.plan(settings.capture), backend: .nft)
        let report = Report(ruleset: ruleset, sources: input.origins(of: settings).mapValues { $0.map(\.description) })
        let explainer = Explainer(ruleset: ruleset)
        let port = explainer.explain(try Packet.parse("out tcp 10.1.1.1:6379 uid=1000"))
        #expect(
            report.reasonText(port)
                == #"let go by rule 2 (from annotation traffic.sidecar.istio.io/excludeOutboundPorts "6379")"#)
        let cidr = explainer.explain(try Packet.parse("out tcp 10.96.0.1:443 uid=1000"))
        #expect(
            report.reasonText(cidr)
                == #"let go by rule 2 (from config key "istio-service-exclude-cidr" "10.96.0.1/32")"#)
        let app = explainer.explain(try Packet.parse("out tcp 10.1.1.1:80 uid=1000"))
        #expect(
            report.reasonText(app) == #"decided by rule 3 (from the CNI plugin's default for -p/--envoy-port "15001")"#)
    }
}

@Suite("explain: packets")
struct PacketTests {
    @Test("defaults are spelled out")
    func defaults() throws {
        #expect(try Packet.parse("out tcp 10.0.0.5:80").description == "out tcp 10.0.0.5:80 uid=0 gid=0 iface=eth0")
        #expect(
            try Packet.parse("out tcp 10.0.0.5:80 uid=1000").description
                == "out tcp 10.0.0.5:80 uid=1000 gid=1000 iface=eth0")
        #expect(
            try Packet.parse("out udp 127.0.0.1:53 uid=1").description
                == "out udp 127.0.0.1:53 uid=1 gid=1 iface=lo src=127.0.0.1")
        #expect(try Packet.parse("out tcp 10.0.0.7:80 iface=lo").source == IPAddress("10.0.0.7"))
        #expect(try Packet.parse("in tcp :8080").description == "in tcp :8080 iface=eth0")
        #expect(try Packet.parse("in tcp :8080 family=ipv6").family == .ipv6)
        #expect(
            try Packet.parse("in  tcp\t[fd00::1]:443  src=fd00::2 sport=999 mark=7").description
                == "in tcp [fd00::1]:443 iface=eth0 src=fd00::2 sport=999 mark=7")
    }

    @Test(
        "bad packets are refused, naming what is wrong",
        arguments: [
            ("", "expected DIRECTION"),
            ("out tcp", "expected DIRECTION"),
            ("up tcp 1.2.3.4:80", "direction \"up\""),
            ("out icmp 1.2.3.4:80", "protocol \"icmp\""),
            ("out tcp 1.2.3.4", "endpoint"),
            ("out tcp 1.2.3.4:0", "endpoint"),
            ("out tcp 1.2.3.4:65536", "endpoint"),
            ("out tcp 1.2.3:80", "not an IPv4 address"),
            ("out tcp fd00::1:80", "not an IPv4 address"),
            ("out tcp [1.2.3.4]:80", "not an IPv6 address"),
            ("out tcp :80", "needs a destination"),
            ("out tcp 1.2.3.4:80 uid", "expected KEY=VALUE"),
            ("out tcp 1.2.3.4:80 user=1", "unknown key \"user\""),
            ("out tcp 1.2.3.4:80 uid=1 uid=2", "given twice"),
            ("out tcp 1.2.3.4:80 uid=-1", "uid \"-1\""),
            ("out tcp 1.2.3.4:80 uid=4294967295", "uid"),
            ("out tcp 1.2.3.4:80 gid=x", "gid \"x\""),
            ("out tcp 1.2.3.4:80 iface=eth+", "iface"),
            ("out tcp 1.2.3.4:80 iface=a\u{20}b", "expected KEY=VALUE"),
            ("out tcp 1.2.3.4:80 iface=0123456789abcdef", "iface"),
            ("out tcp 127.0.0.1:80 iface=eth0", "loopback destination"),
            ("in tcp :80 uid=1", "out packets only"),
            ("in tcp :80 iface=lo", "iface=lo"),
            ("in tcp 1.2.3.4:80 family=ipv6", "family= goes with :PORT"),
            ("in tcp :80 family=inet", "family \"inet\""),
            ("in tcp :80 src=fd00::1", "not an ipv4 address"),
            ("in tcp :80 src=1.2.3", "not an IP address"),
            ("in tcp :80 sport=0", "sport"),
            ("in tcp :80 mark=4294967296", "mark"),
        ])
    func bad(_ text: String, _ fragment: String) {
        #expect {
            _ = try Packet.parse(text)
        } throws: { error in
            let message = (error as? PacketError)?.description ?? ""
            return message.contains(fragment) && !message.contains("\n")
        }
    }

    @Test("several packets in one argument list, each starting at out or in")
    func words() throws {
        let packets = try Packet.parse(words: [
            "out", "tcp", "1.2.3.4:80", "uid=1000", "in tcp :8080", "out udp 1.1.1.1:53",
        ])
        #expect(packets.map(\.direction) == [.out, .in, .out])
        #expect(packets[0].uid == NumericID(1000))
        #expect(try Packet.parse(words: []).isEmpty)
    }
}

@Suite("explain: live rules read back from iptables-save")
struct SaveParserTests {
    @Test("every rule of every plan family parses back to itself")
    func roundTrip() throws {
        let configs: [[String]] = [
            seed, seed + ["--redirect-dns", "--drop-invalid", "--ipv6=on", "-c", "veth+", "-k", "virt0"],
            [
                "-m", "TPROXY", "-i", "10.0.0.0/8,fd00::/8", "-x", "10.1.0.0/16", "-b", "80,8000-8010", "-o", "1-5,9",
                "-q", "3306", "--ipv6=on", "--redirect-dns", "--capture-all-dns",
            ],
        ]
        var count = 0
        for arguments in configs {
            let plan = try Setup(arguments).plan
            for family in plan.families {
                for op in plan.operations(for: family) {
                    for rule in op.rule.expanded {
                        let spec = SaveCanonical.spec(rule)
                        let (matches, target) = SaveParser.parse(spec.split(separator: " ").map(String.init))
                        let parsed = try #require(matches.flatMap { m in target.map { Rule(m, $0) } }, "\(spec)")
                        #expect(SaveCanonical.spec(parsed) == spec)
                        count += 1
                    }
                }
            }
        }
        #expect(count > 100)
    }

    @Test("foreign rules: matches understood, target not; unknown matches refused")
    func foreign() {
        let kube = SaveParser.parse(["-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"])
        #expect(kube.matches == [])
        #expect(kube.target == nil)
        let set = SaveParser.parse(["-m", "set", "--match-set", "x", "dst", "-j", "RETURN"])
        #expect(set.matches == nil)
        let masked = SaveParser.parse(["-m", "mark", "--mark", "0x1/0xff", "-j", "RETURN"])
        #expect(masked.matches == nil)
        let dnat = SaveParser.parse(["-p", "tcp", "-j", "DNAT", "--to-destination", "1.2.3.4"])
        #expect(dnat.matches == [.l4proto(.tcp, scope: .all)])
        #expect(dnat.target == nil)
    }
}

@Suite("Property: both backends agree where their layouts mean the same")
struct BackendAgreementTests {
    @Test("for random configurations and packets, iptables and nft give the same verdict (IPv4; IPv6 when on)")
    func agree() async {
        let gen = Gen.int(in: 0..<1_000_000).array(of: 24)
        await propertyCheck(count: 300, input: gen) { draws in
            var d = draws.makeIterator()
            func next(_ n: Int) -> Int { (d.next() ?? 0) % n }
            let ipv6 = next(2) == 0
            var arguments = [
                "-m", next(3) == 0 ? "TPROXY" : "REDIRECT", "-b", ["*", "", "80,8080", "1-9000"][next(4)],
                "-d", ["", "8080", "15020,22"][next(3)], "-i",
                ["*", "", "10.0.0.0/8", "10.0.0.0/8,fd00::/16"][next(4)],
                "-x", ["", "10.1.0.0/16", (1...20).map { "10.\($0).0.0/16" }.joined(separator: ",")][next(3)],
                "-o", ["", "6379", "1-100"][next(3)], "-q", ["", "3306"][next(2)], "-c", ["", "veth+"][next(2)],
                "--ipv6=\(ipv6 ? "on" : "off")",
            ]
            if next(2) == 0 { arguments.append("--redirect-dns") }
            if next(2) == 0 { arguments.append("--drop-invalid") }
            guard let setup = try? Setup(arguments) else {
                Issue.record("config refused: \(arguments)")
                return
            }
            let v4 = ["10.1.2.3", "10.20.0.9", "192.168.1.1", "127.0.0.1", "10.96.0.10"]
            let v6 = ["[fd00::5]", "[::1]", "[2001:db8::1]"]
            for _ in 0..<8 {
                let family6 = ipv6 && next(3) == 0
                let host = family6 ? v6[next(v6.count)] : v4[next(v4.count)]
                let port = [80, 53, 8080, 6379, 3306, 15020, 15008, 22][next(8)]
                let proto = next(3) == 0 ? "udp" : "tcp"
                let text: String
                if next(2) == 0 {
                    let loop = host.contains("127.") || host == "[::1]"
                    text =
                        "out \(proto) \(host):\(port) uid=\([1000, 1337, 0][next(3)])\(loop ? "" : next(4) == 0 ? " iface=lo" : "")"
                } else {
                    text = "in \(proto) \(host):\(port) iface=\(["eth0", "veth3"][next(2)])"
                }
                guard !(text.hasPrefix("in") && (host.contains("127.") || host == "[::1]")) else { continue }
                let a = try? setup.explain(text, .iptables)
                let b = try? setup.explain(text, .nft)
                #expect(a != nil && a?.verdict == b?.verdict, "\(arguments) \(text)")
            }
        }
    }
}

/// A pod between the world (eth0) and a VM (eth1, a kube-virt interface), as the
/// differential builds it.
let vmPod = try! PodNetwork.parse(["eth0=10.200.0.2/24,eth1=10.201.0.1/24,eth0=fd00:200::2/64,eth1=fd00:201::1/64"])

@Suite("explain: every hook, in order (issue 18)")
struct HookOrderTests {
    @Test("TPROXY ends mangle only: a kube-virt packet is TPROXYed, then nat's REDIRECT rewrites its destination")
    func tproxyThenNat() throws {
        let setup = try Setup([
            "-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-b", "*", "-i", "*", "-k", "eth1",
        ])
        for backend in Backend.allCases {
            for pod in [nil, vmPod] {
                let e = try setup.explain("in tcp 8.8.8.8:80 iface=eth1 src=10.201.0.2", backend, pod: pod)
                #expect(e.verdict == .tproxied(port: Port(15006)!, mark: Mark(1337)))
                #expect(e.steps[try e.decided].table == .mangle)
                // nat PREROUTING ran after mangle's TPROXY, and redirected to the proxy port.
                #expect(e.steps.map(\.table) == [.mangle, .mangle, .mangle, .nat, .nat])
                #expect(e.steps.last?.chain == .own(.redirect))
                #expect(e.rewritten)
                #expect(e.destinationPort == Port(15001)!)
                #expect(e.delivery == .local)
                #expect(e.verdictText.contains("then nat REDIRECT rewrote the destination"))
                #expect(e.verdictText.contains("original destination 8.8.8.8:80 kept"))
                if pod != nil { #expect(e.destination == IPAddress("10.201.0.1")) }
            }
            // Not on a kube-virt interface: TPROXY alone, addresses kept.
            let plain = try setup.explain("in tcp 10.200.0.2:80", backend, pod: vmPod)
            #expect(plain.verdict == .tproxied(port: Port(15006)!, mark: Mark(1337)))
            #expect(!plain.rewritten)
            #expect(plain.destination == IPAddress("10.200.0.2"))
        }
    }

    @Test("a packet to an address that is not the pod's is forwarded, through the interface of its route")
    func forwarded() throws {
        let setup = try Setup([
            "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-b", "*", "-d", "22", "-i", "*", "-k",
            "eth1", "--ipv6=on",
        ])
        for backend in Backend.allCases {
            // world -> VM: UDP (not captured) and an excluded inbound port.
            for packet in [
                "in udp 10.201.0.2:53 src=10.200.0.1", "in tcp 10.201.0.2:22 src=10.200.0.1",
                "in udp [fd00:201::2]:53 src=fd00:200::1",
            ] {
                let e = try setup.explain(packet, backend, pod: vmPod)
                #expect(e.verdict == .notCaptured, "\(packet)")
                #expect(e.delivery == .forwarded(InterfaceName("eth1")!), "\(packet)")
                #expect(e.verdictText.hasPrefix("not captured: forwarded"), "\(packet)")
                #expect(e.verdictText.hasSuffix("through eth1"), "\(packet)")
            }
            // VM -> world: UDP goes on through eth0; TCP is redirected to the proxy.
            let out = try setup.explain("in udp 8.8.8.8:53 iface=eth1 src=10.201.0.2", backend, pod: vmPod)
            #expect(out.delivery == .forwarded(InterfaceName("eth0")!))
            let tcp = try setup.explain("in tcp 8.8.8.8:443 iface=eth1 src=10.201.0.2", backend, pod: vmPod)
            #expect(tcp.verdict == .redirected(port: Port(15001)!, listener: .proxyPort))
            #expect(tcp.destination == IPAddress("10.201.0.1"))
            // world -> VM, TCP: captured inbound like any arriving packet.
            let inbound = try setup.explain("in tcp 10.201.0.2:80 src=10.200.0.1", backend, pod: vmPod)
            #expect(inbound.verdict == .redirected(port: Port(15006)!, listener: .inboundCapturePort))
            #expect(inbound.delivery == .local)
            // The pod's own address: delivered to the app.
            let own = try setup.explain("in udp 10.200.0.2:53 src=10.200.0.1", backend, pod: vmPod)
            #expect(own.delivery == .local)
            #expect(own.verdictText == "not captured: delivered to the app on port 53")
        }
        // Without forwarding, the kernel drops it.
        var off = vmPod
        off.forwarding[.ipv4] = false
        let dropped = try setup.explain("in udp 10.201.0.2:53", .iptables, pod: off)
        #expect(dropped.verdict == .dropped)
        #expect(dropped.notes.contains { $0.contains("does not forward") })
    }

    @Test("a batch is N single calls: a reason never carries the previous packet's path")
    func noStateBetweenPackets() throws {
        let setup = try Setup(["-u", "1337", "-i", "10.66.128.0/24", "-b", "80"])
        let packets = [
            "in tcp :8011", "out tcp 10.66.0.2:80 uid=7", "in tcp :8080", "out tcp 10.66.128.9:80 uid=7",
            "out udp 10.66.0.3:53 uid=1", "in udp :9",
        ]
        for backend in Backend.allCases {
            let ruleset = Ruleset(plan: setup.plan, backend: backend)
            let explainer = Explainer(ruleset: ruleset)
            let shared = Report(ruleset: ruleset, sources: setup.sources)
            var batchText = ""
            var batchJSON = ""
            var singleText = ""
            var singleJSON = ""
            for packet in packets {
                let e = explainer.explain(try Packet.parse(packet))
                shared.text(e, into: &batchText)
                shared.json(e, into: &batchJSON)
                let alone = Report(ruleset: ruleset, sources: setup.sources)
                alone.text(e, into: &singleText)
                alone.json(e, into: &singleJSON)
            }
            #expect(batchText == singleText)
            #expect(batchJSON == singleJSON)
            let second = explainer.explain(try Packet.parse(packets[1]))
            #expect(
                shared.reasonText(second)
                    == "no rule captured it: rule 1 sent it to ISTIO_OUTPUT, where no rule matched it")
        }
    }

    @Test("`in tcp :PORT` is the pod's address: a CIDR that covers it matches")
    func podAddressMatches() throws {
        let setup = try Setup([
            "-p", "15001", "-z", "15006", "-u", "1337", "-b", "", "-i", "10.201.0.0/16", "-k", "eth1",
        ])
        for backend in Backend.allCases {
            let e = try setup.explain("in tcp :8080 iface=eth1", backend, pod: vmPod)
            #expect(e.verdict == .redirected(port: Port(15001)!, listener: .proxyPort))
            #expect(e.line(try e.decided) == "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001")
            #expect(e.steps[0].table == .nat && e.line(0) == "-A PREROUTING -i eth1 -d 10.201.0.0/16 -j ISTIO_REDIRECT")
            // Unknown address: taken to match no CIDR, and said so.
            let unknown = try setup.explain("in tcp :8080 iface=eth1", backend)
            #expect(unknown.verdict == .notCaptured)
            #expect(unknown.notes.contains { $0.contains("--pod-ip") })
        }
    }

    @Test("a mark the TPROXY route takes sends an out packet through lo; a mangle mark reroutes")
    func markRoutes() throws {
        let setup = try Setup(["-p", "15001", "-z", "15006", "-u", "1337", "-m", "TPROXY", "-b", "*", "-i", "*"])
        let e = try setup.explain("out udp 10.9.9.9:80 uid=1000 mark=1337", .iptables, pod: vmPod)
        #expect(e.delivery == .local)
        #expect(e.verdictText.contains("over lo"))
        let plain = try setup.explain("out udp 10.9.9.9:80 uid=1000", .iptables, pod: vmPod)
        #expect(plain.delivery == .leaves(InterfaceName("eth0")!))
        // The pod's route picks the interface of a destination on the VM's subnet.
        let vm = try setup.explain("out udp 10.201.0.2:80 uid=1000", .iptables, pod: vmPod)
        #expect(vm.delivery == .leaves(InterfaceName("eth1")!))
        #expect(vm.verdictText == "not captured: leaves the pod for 10.201.0.2:80 through eth1")
    }

    @Test("--pod-ip items and /proc route tables parse")
    func podNetwork() throws {
        #expect(vmPod.addresses.count == 4)
        #expect(vmPod.route(IPAddress("10.201.0.9")!) == InterfaceName("eth1"))
        #expect(vmPod.route(IPAddress("1.1.1.1")!) == InterfaceName("eth0"))
        #expect(vmPod.route(IPAddress("fd00:201::9")!) == InterfaceName("eth1"))
        #expect(vmPod.isLocal(IPAddress("10.201.0.1")!) && !vmPod.isLocal(IPAddress("10.201.0.2")!))
        #expect(throws: PodNetworkError.self) { try PodNetwork.parse(["eth0=10.1.2"]) }
        #expect(throws: PodNetworkError.self) { try PodNetwork.parse(["eth+=10.1.2.3"]) }
        let v4 = """
            Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
            eth0\t00000000\t0100C80A\t0003\t0\t0\t0\t00000000\t0\t0\t0
            eth1\t0000C90A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
            """
        let v6 =
            "fd000201000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth1\n"
        let routes = PodNetwork.routes(procRoute: v4, procIPv6Route: v6)
        #expect(
            routes == [
                PodNetwork.Route(destination: CIDR("0.0.0.0/0")!, interface: InterfaceName("eth0")!),
                PodNetwork.Route(destination: CIDR("10.201.0.0/24")!, interface: InterfaceName("eth1")!),
                PodNetwork.Route(destination: CIDR("fd00:201::/64")!, interface: InterfaceName("eth1")!),
            ])
    }
}
