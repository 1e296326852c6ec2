import MeshConfig
import MeshModel
import Testing

/// Resolves with a fake system.
func resolve(
    _ flags: FlagMap<String> = [:], env: [String: String] = [:], system: FakeSystem = FakeSystem()
) throws(ConfigError) -> Settings {
    try ConfigResolver(system: system).resolve(flags: flags, environment: env)
}

/// Asserts that resolving fails with a one-line `ConfigError` naming `source` and `value`.
func expectBad(
    _ flags: FlagMap<String> = [:], env: [String: String] = [:], system: FakeSystem = FakeSystem(),
    names source: String, value: String, sourceLocation: SourceLocation = #_sourceLocation
) {
    do {
        let settings = try resolve(flags, env: env, system: system)
        Issue.record(
            "accepted, expected an error naming \(source): \(settings.capture)", sourceLocation: sourceLocation)
    } catch {
        let text = error.description
        #expect(isOneLine(text), "not one line: \(text)", sourceLocation: sourceLocation)
        #expect(text.contains(source), "does not name \(source): \(text)", sourceLocation: sourceLocation)
        #expect(error.value == value, "value: \(text)", sourceLocation: sourceLocation)
        #expect(text.contains(quoted(value)), "does not show the value: \(text)", sourceLocation: sourceLocation)
    }
}

/// No line break of any kind (`Character.isNewline`: LF, CR, VT, FF, NEL, LS, PS).
func isOneLine(_ text: String) -> Bool { text.allSatisfy { !$0.isNewline } }

func ports(_ list: [PortRange]) -> [String] { list.map(\.description) }
func ids(_ list: [NumericID]) -> [UInt32] { list.map(\.value) }

@Suite("ConfigResolver: defaults")
struct DefaultsTests {
    @Test("Istio's defaults with no flags and no environment")
    func defaults() throws {
        let s = try resolve()
        let c = s.capture
        #expect(c.proxyPort.value == 15001)
        #expect(c.inboundCapturePort.value == 15006)
        #expect(c.inboundTunnelPort.value == 15008)
        #expect(ids(c.proxyUIDs) == [1337])
        #expect(ids(c.proxyGIDs) == [1337])
        #expect(c.interceptionMode == .redirect)
        #expect(c.inboundPorts == .none)
        #expect(c.outboundInclude == .none)
        #expect(c.outboundExclude.isEmpty)
        #expect(c.excludeInterfaces.isEmpty)
        #expect(c.kubeVirtInterfaces.isEmpty)
        #expect(c.tproxyMark.value == 1337)
        #expect(c.tproxyRouteTable == 133)
        #expect(c.dns == nil)
        #expect(!c.dropInvalid)
        #expect(!c.ipv6)
        #expect(c.ownerGroups == .allExcept([]))
        #expect(c.ipv4LoopbackCIDR.description == "127.0.0.1/32")
        let r = s.run
        #expect(r.probePort.value == 15002)
        #expect(r.probeTimeoutMilliseconds == 5000)
        #expect(r.logLevel == .info)
        #expect(r.ipv6Choice == .auto)
        #expect(r.resolvConfPath == "/etc/resolv.conf")
        #expect(r.forceIptablesVariant == nil)
        #expect(r.networkNamespace == nil)
        #expect(!r.dryRun && !r.cniMode && !r.nativeNftables && !r.cleanupOnly)
        #expect(s.warnings.isEmpty)
    }

    @Test("flag table: short names, env names, aliases")
    func flagTable() {
        #expect(IstioFlag.envoyPort.displayName == "-p/--envoy-port")
        #expect(IstioFlag.redirectDNS.displayName == "--redirect-dns")
        #expect(IstioFlag.envoyPort.environment == nil)
        #expect(IstioFlag.inboundCapturePort.environment == "INBOUND_CAPTURE_PORT")
        #expect(IstioFlag.serviceCIDR.environment == "ISTIO_SERVICE_CIDR")
        #expect(IstioFlag.logOutputLevel.environment == nil)
        #expect(IstioFlag.redirectDNS.aliasEnvironment == "ISTIO_META_DNS_CAPTURE")
        #expect(IstioFlag.dropInvalid.aliasEnvironment == "INVALID_DROP")
        #expect(IstioFlag.dualStack.aliasEnvironment == "ISTIO_DUAL_STACK")
        #expect(IstioFlag(short: "x") == .serviceExcludeCIDR)
        #expect(IstioFlag(long: "istio-inbound-interception-mode") == .interceptionMode)
        let shorts = IstioFlag.allCases.compactMap(\.short)
        #expect(Set(shorts).count == shorts.count)
        #expect(Set(shorts) == Set("pzeugmbdcixqoktrn"))
    }
}

@Suite("ConfigResolver: ports")
struct PortFlagTests {
    static let portFlags: [IstioFlag] = [.envoyPort, .inboundCapturePort, .inboundTunnelPort, .iptablesProbePort]

    @Test("good ports", arguments: portFlags)
    func good(flag: IstioFlag) throws {
        for text in ["1", "80", "65535"] {
            let s = try resolve([flag: text])
            let got: Port =
                switch flag {
                case .envoyPort: s.capture.proxyPort
                case .inboundCapturePort: s.capture.inboundCapturePort
                case .inboundTunnelPort: s.capture.inboundTunnelPort
                default: s.run.probePort
                }
            #expect(got.description == text)
        }
    }

    @Test("bad ports", arguments: portFlags)
    func bad(flag: IstioFlag) {
        for text in ["0", "65536", "80-70", "abc", "080", "", "-1", "80,90", " 80"] {
            expectBad([flag: text], names: flag.displayName, value: text)
        }
    }

    @Test("-p names the flag exactly")
    func envoyPortName() {
        expectBad([.envoyPort: "0"], names: "-p/--envoy-port", value: "0")
        expectBad([.inboundCapturePort: "65536"], names: "-z/--inbound-capture-port", value: "65536")
    }

    @Test("port lists: good", arguments: [IstioFlag.localExcludePorts, .outboundPorts, .localOutboundPortsExclude])
    func goodLists(flag: IstioFlag) throws {
        let s = try resolve([flag: "80,,90,8000-8010,", .inboundPorts: "*"])
        let got: [PortRange] =
            switch flag {
            case .localExcludePorts:
                if case .all(let except) = s.capture.inboundPorts { except } else { [] }
            case .outboundPorts: s.capture.outboundPorts
            default: s.capture.outboundExcludePorts
            }
        #expect(ports(got) == ["80", "90", "8000-8010"])
    }

    @Test(
        "port lists: bad items",
        arguments: [IstioFlag.inboundPorts, .localExcludePorts, .outboundPorts, .localOutboundPortsExclude])
    func badLists(flag: IstioFlag) {
        for (text, item) in [
            ("80,0", "0"), ("65536", "65536"), ("80-70", "80-70"), ("80,abc", "abc"), ("8080:8090", "8080:8090"),
            ("80, 90", " 90"), ("-", "-"),
        ] {
            var flags: FlagMap<String> = [.inboundPorts: "*"]
            flags[flag] = text
            expectBad(flags, names: flag.displayName, value: item)
        }
    }

    @Test("-b: '*', empty, list")
    func inbound() throws {
        #expect(try resolve([.inboundPorts: ""]).capture.inboundPorts == .none)
        #expect(try resolve([.inboundPorts: "*"]).capture.inboundPorts == .all(except: []))
        let only = try resolve([.inboundPorts: "80,,90,8000-8010"]).capture.inboundPorts
        #expect(
            only == .only([PortRange(parsing: "80")!, PortRange(parsing: "90")!, PortRange(parsing: "8000-8010")!]))
        let wildcard = try resolve([.inboundPorts: "*", .localExcludePorts: "15090,15021,15020"]).capture.inboundPorts
        #expect(wildcard == .all(except: ["15090", "15021", "15020"].map { PortRange(parsing: $0)! }))
        // "-b ',,'" is an empty list of ports, not "no capture".
        #expect(try resolve([.inboundPorts: ",,"]).capture.inboundPorts == .only([]))
        expectBad([.inboundPorts: "* "], names: "-b/--istio-inbound-ports", value: "* ")
    }

    @Test("-d is validated even when -b is not '*'")
    func excludeValidatedAlways() {
        expectBad([.inboundPorts: "80", .localExcludePorts: "0"], names: "-d/--istio-local-exclude-ports", value: "0")
    }
}

@Suite("ConfigResolver: CIDRs")
struct CIDRFlagTests {
    @Test("-i forms")
    func include() throws {
        #expect(try resolve([.serviceCIDR: ""]).capture.outboundInclude == .none)
        #expect(try resolve([.serviceCIDR: "*"]).capture.outboundInclude == .all)
        let only = try resolve([.serviceCIDR: "10.0.0.0/8,,2001:db8::/32,"]).capture.outboundInclude
        #expect(only == .only([CIDR("10.0.0.0/8")!, CIDR("2001:db8::/32")!]))
    }

    @Test("-x list")
    func exclude() throws {
        let s = try resolve([.serviceExcludeCIDR: "1.1.0.0/16,,fd00::/8"])
        #expect(s.capture.outboundExclude == [CIDR("1.1.0.0/16")!, CIDR("fd00::/8")!])
        #expect(try resolve([.serviceExcludeCIDR: ""]).capture.outboundExclude.isEmpty)
    }

    @Test(
        "bad CIDRs", arguments: [IstioFlag.serviceCIDR, .serviceExcludeCIDR],
        [
            ("10.0.0.0/33", "10.0.0.0/33"), ("300.1.1.1/8", "300.1.1.1/8"), ("10.0.0.1", "10.0.0.1"),
            ("10.0.0.0/8,::/129", "::/129"), ("10.0.0.0/8 ", "10.0.0.0/8 "), ("*,10.0.0.0/8", "*"),
            ("010.0.0.0/8", "010.0.0.0/8"),
        ])
    func bad(flag: IstioFlag, input: (String, String)) {
        expectBad([flag: input.0], names: flag.displayName, value: input.1)
    }

    @Test("-x '*' is refused")
    func excludeAll() {
        expectBad([.serviceExcludeCIDR: "*"], names: "-x/--istio-service-exclude-cidr", value: "*")
        expectBad(env: ["ISTIO_SERVICE_EXCLUDE_CIDR": "*"], names: "ISTIO_SERVICE_EXCLUDE_CIDR", value: "*")
    }
}

@Suite("ConfigResolver: interfaces")
struct InterfaceFlagTests {
    @Test("good names", arguments: [IstioFlag.excludeInterfaces, .kubeVirtInterfaces])
    func good(flag: IstioFlag) throws {
        let s = try resolve([flag: "eth0,,eth0.100,veth+,not-istio-nic"])
        let got = flag == .excludeInterfaces ? s.capture.excludeInterfaces : s.capture.kubeVirtInterfaces
        #expect(got.map(\.name) == ["eth0", "eth0.100", "veth+", "not-istio-nic"])
    }

    @Test(
        "bad names", arguments: [IstioFlag.excludeInterfaces, .kubeVirtInterfaces],
        [
            "eth0 -j ACCEPT", "eth 0", "eth\t0", "eth0\n", "eth\r0", "abcdefghijklmnop", "eth0!", "eth/0", "eth:0",
            "\"eth0\"", "'eth0'", "-eth0", ".", "..", "ethé", "+",
        ])
    func bad(flag: IstioFlag, name: String) {
        expectBad([flag: "eth1," + name], names: flag.displayName, value: name)
    }

    /// `+` alone means "every interface" to iptables and a literal name to nft: refused, so
    /// the backends can never disagree (`-c +` would turn all inbound capture off in iptables).
    @Test("a bare + is refused with exit-64 input error, a trailing + is a prefix")
    func bareWildcard() throws {
        expectBad([.excludeInterfaces: "+"], names: "-c/--istio-exclude-interfaces", value: "+")
        expectBad(env: ["ISTIO_EXCLUDE_INTERFACES": "eth0,+"], names: "ISTIO_EXCLUDE_INTERFACES", value: "+")
        let s = try resolve([.excludeInterfaces: "eth+"])
        #expect(s.capture.excludeInterfaces.map(\.name) == ["eth+"])
    }

    @Test("bad name from the environment")
    func badEnv() {
        expectBad(env: ["KUBE_VIRT_INTERFACES": "eth0 x"], names: "KUBE_VIRT_INTERFACES", value: "eth0 x")
        expectBad(env: ["ISTIO_EXCLUDE_INTERFACES": "a\tb"], names: "ISTIO_EXCLUDE_INTERFACES", value: "a\tb")
    }

    /// Control and separator characters must not break the one-line message.
    @Test("messages stay on one line", arguments: ["a\nb", "a\rb", "a\u{0B}b", "a\u{0C}b", "a\u{85}b", "a\u{2028}b"])
    func oneLine(value: String) throws {
        do {
            _ = try resolve([.excludeInterfaces: value])
            Issue.record("accepted \(quoted(value))")
        } catch {
            #expect(isOneLine(error.description), "\(Array(error.description.unicodeScalars))")
            #expect(error.description.split(whereSeparator: \.isNewline).count == 1)
        }
    }
}

@Suite("ConfigResolver: users and groups")
struct OwnerFlagTests {
    @Test("-u list, -g defaults to the uid list")
    func uidList() throws {
        let s = try resolve([.proxyUID: "3,,4"])
        #expect(ids(s.capture.proxyUIDs) == [3, 4])
        #expect(ids(s.capture.proxyGIDs) == [3, 4])
        let t = try resolve([.proxyUID: "3,4", .proxyGID: "1,2"])
        #expect(ids(t.capture.proxyGIDs) == [1, 2])
    }

    @Test("-g defaults to the uid list from the environment too")
    func gidFromEnvUID() throws {
        let s = try resolve(env: ["PROXY_UID": "3,4"])
        #expect(ids(s.capture.proxyUIDs) == [3, 4])
        #expect(ids(s.capture.proxyGIDs) == [3, 4])
        let t = try resolve([.proxyUID: "5"], env: ["PROXY_UID": "3,4", "PROXY_GID": "9"])
        #expect(ids(t.capture.proxyUIDs) == [5])
        #expect(ids(t.capture.proxyGIDs) == [9])
    }

    @Test("-u '' is the uid of ENVOY_USER, else 1337")
    func emptyUID() throws {
        #expect(ids(try resolve([.proxyUID: ""]).capture.proxyUIDs) == [1337])
        #expect(ids(try resolve([.proxyUID: ""], env: ["ENVOY_USER": "envoy"]).capture.proxyUIDs) == [101])
        #expect(ids(try resolve([.proxyUID: ""], env: ["ENVOY_USER": "envoy"]).capture.proxyGIDs) == [101])
        var noUser = FakeSystem()
        noUser.users = [:]
        #expect(ids(try resolve([.proxyUID: ""], system: noUser).capture.proxyUIDs) == [1337])
        #expect(ids(try resolve([.proxyUID: ""], env: ["ENVOY_USER": "nobody-here"]).capture.proxyUIDs) == [1337])
        // Default istio-proxy maps elsewhere on this system.
        var other = FakeSystem()
        other.users = ["istio-proxy": 2000]
        #expect(ids(try resolve(system: other).capture.proxyUIDs) == [2000])
        #expect(ids(try resolve(system: other).capture.proxyGIDs) == [2000])
    }

    @Test("user and group names resolve")
    func names() throws {
        let s = try resolve([.proxyUID: "istio-proxy,root,7", .proxyGID: "java,wheel,8"])
        #expect(ids(s.capture.proxyUIDs) == [1337, 0, 7])
        #expect(ids(s.capture.proxyGIDs) == [30000, 10, 8])
        let env = try resolve(env: ["PROXY_UID": "envoy", "PROXY_GID": "java"])
        #expect(ids(env.capture.proxyUIDs) == [101])
        #expect(ids(env.capture.proxyGIDs) == [30000])
    }

    @Test("-g '' with a user name falls back to a group of the same name")
    func gidFromUserName() throws {
        let s = try resolve([.proxyUID: "istio-proxy"])
        #expect(ids(s.capture.proxyGIDs) == [1337])
        expectBad([.proxyUID: "envoy"], names: "-g/--proxy-gid", value: "envoy")
    }

    @Test("bad uids and gids")
    func bad() {
        expectBad([.proxyUID: "nosuchuser"], names: "-u/--proxy-uid", value: "nosuchuser")
        expectBad([.proxyUID: "1,01"], names: "-u/--proxy-uid", value: "01")
        expectBad([.proxyUID: "4294967295"], names: "-u/--proxy-uid", value: "4294967295")
        expectBad([.proxyUID: "a b"], names: "-u/--proxy-uid", value: "a b")
        expectBad([.proxyUID: "-1"], names: "-u/--proxy-uid", value: "-1")
        expectBad([.proxyUID: ","], names: "-u/--proxy-uid", value: ",")
        expectBad([.proxyGID: "nosuchgroup"], names: "-g/--proxy-gid", value: "nosuchgroup")
        expectBad([.proxyGID: "1;2"], names: "-g/--proxy-gid", value: "1;2")
        expectBad(env: ["PROXY_UID": "x y"], names: "PROXY_UID", value: "x y")
    }
}

@Suite("ConfigResolver: mode, mark, table")
struct ModeFlagTests {
    @Test("-m accepted", arguments: [("REDIRECT", false), ("TPROXY", true), ("NONE", false), ("", false)])
    func modes(text: String, tproxy: Bool) throws {
        let s = try resolve([.interceptionMode: text])
        #expect(s.capture.interceptionMode == (tproxy ? .tproxy : .redirect))
    }

    @Test("-m refused", arguments: ["tproxy", "redirect", "FOO", "REDIRECT ", "TPROXY,REDIRECT", "none"])
    func badModes(text: String) {
        expectBad([.interceptionMode: text], names: "-m/--istio-inbound-interception-mode", value: text)
    }

    @Test("-m from the environment")
    func modeEnv() throws {
        let s = try resolve(env: ["ISTIO_INBOUND_INTERCEPTION_MODE": "TPROXY"])
        #expect(s.capture.interceptionMode == .tproxy)
        expectBad(
            env: ["ISTIO_INBOUND_INTERCEPTION_MODE": "tproxy"], names: "ISTIO_INBOUND_INTERCEPTION_MODE",
            value: "tproxy")
    }

    @Test("-t mark")
    func mark() throws {
        #expect(try resolve([.tproxyMark: "0"]).capture.tproxyMark.value == 0)
        #expect(try resolve([.tproxyMark: "4294967295"]).capture.tproxyMark.value == UInt32.max)
        for bad in ["-1", "4294967296", "0x10", "abc", "", "01", "1337/0xffffffff"] {
            expectBad([.tproxyMark: bad], names: "-t/--istio-inbound-tproxy-mark", value: bad)
        }
    }

    @Test("-r route table")
    func table() throws {
        #expect(try resolve([.tproxyRouteTable: "1"]).capture.tproxyRouteTable == 1)
        #expect(try resolve([.tproxyRouteTable: "252"]).capture.tproxyRouteTable == 252)
        #expect(try resolve([.tproxyRouteTable: "4294967295"]).capture.tproxyRouteTable == UInt32.max)
        for bad in ["0", "253", "254", "255", "abc", "", "4294967296", "0133"] {
            expectBad([.tproxyRouteTable: bad], names: "-r/--istio-inbound-tproxy-route-table", value: bad)
        }
    }
}

@Suite("ConfigResolver: booleans and run options")
struct RunFlagTests {
    static let booleanFlags: [IstioFlag] = IstioFlag.allCases.filter(\.isBoolean)

    @Test("every boolean flag: good and bad values", arguments: booleanFlags)
    func booleans(flag: IstioFlag) throws {
        var system = FakeSystem()
        system.files["/etc/resolv.conf"] = "nameserver 10.96.0.10\n"
        for text in ["true", "1", "t", "T", "TRUE", "True", "false", "0", "f", "F", "FALSE", "False"] {
            // Must not throw.
            _ = try resolve([flag: text], system: system)
        }
        for bad in ["yes", "no", "on", "", "TRue", "2", " true"] {
            expectBad([flag: bad], system: system, names: flag.displayName, value: bad)
        }
        if let name = flag.environment {
            expectBad(env: [name: "yes"], system: system, names: name, value: "yes")
            // An empty boolean variable means "unset" (Istio's env.Register).
            _ = try resolve(env: [name: ""], system: system)
        }
        if let alias = flag.aliasEnvironment {
            expectBad(env: [alias: "yes"], system: system, names: alias, value: "yes")
        }
    }

    @Test("boolean flags land in the settings")
    func booleansLand() throws {
        let s = try resolve([
            .dryRun: "true", .skipRuleApply: "1", .runValidation: "t", .cniMode: "true", .reconcile: "true",
            .cleanupOnly: "true", .forceApply: "true", .nativeNftables: "true", .logAsJSON: "true",
            .dropInvalid: "true",
        ])
        let r = s.run
        #expect(r.dryRun && r.skipRuleApply && r.runValidation && r.cniMode && r.reconcile)
        #expect(r.cleanupOnly && r.forceApply && r.nativeNftables && r.logAsJSON)
        #expect(s.capture.dropInvalid)
    }

    @Test("--probe-timeout")
    func probeTimeout() throws {
        #expect(try resolve([.probeTimeout: "500ms"]).run.probeTimeoutMilliseconds == 500)
        #expect(try resolve([.probeTimeout: "1m30s"]).run.probeTimeoutMilliseconds == 90000)
        #expect(try resolve(env: ["PROBE_TIMEOUT": "2s"]).run.probeTimeoutMilliseconds == 2000)
        for bad in ["0", "0s", "5", "-1s", "abc", "", "5 s", "1d"] {
            expectBad([.probeTimeout: bad], names: "--probe-timeout", value: bad)
        }
    }

    @Test("--network-namespace")
    func netns() throws {
        #expect(try resolve([.networkNamespace: "/var/run/netns/pod"]).run.networkNamespace == "/var/run/netns/pod")
        #expect(try resolve([.networkNamespace: ""]).run.networkNamespace == nil)
        expectBad([.networkNamespace: "pod"], names: "--network-namespace", value: "pod")
        expectBad(env: ["NETWORK_NAMESPACE": "relative/x"], names: "NETWORK_NAMESPACE", value: "relative/x")
    }

    @Test("--force-iptables-binary")
    func variant() throws {
        #expect(try resolve([.forceIptablesBinary: "legacy"]).run.forceIptablesVariant == .legacy)
        #expect(try resolve([.forceIptablesBinary: "nft"]).run.forceIptablesVariant == .nft)
        #expect(try resolve([.forceIptablesBinary: ""]).run.forceIptablesVariant == nil)
        for bad in ["iptables", "NFT", "iptables-legacy", "auto"] {
            expectBad([.forceIptablesBinary: bad], names: "--force-iptables-binary", value: bad)
        }
        expectBad(env: ["FORCE_IPTABLES_BINARY": "x"], names: "FORCE_IPTABLES_BINARY", value: "x")
    }

    @Test("--log_output_level")
    func logLevel() throws {
        #expect(try resolve([.logOutputLevel: "debug"]).run.logLevel == .debug)
        #expect(try resolve([.logOutputLevel: "default:warn,grpc:none"]).run.logLevel == .warn)
        #expect(try resolve([.logOutputLevel: "grpc:debug"]).run.logLevel == .info)
        for bad in ["loud", "a:b:c", ":info", "default:", "INFO"] {
            expectBad([.logOutputLevel: bad], names: "--log_output_level", value: bad)
        }
    }

    @Test("--ipv6 and --resolv-conf values")
    func ownFlags() throws {
        #expect(try resolve([.ipv6: "on"]).run.ipv6Choice == .on)
        #expect(try resolve([.ipv6: "off"]).run.ipv6Choice == .off)
        expectBad([.ipv6: "yes"], names: "--ipv6", value: "yes")
        expectBad([.ipv6: ""], names: "--ipv6", value: "")
        #expect(try resolve([.resolvConf: "/tmp/r"]).run.resolvConfPath == "/tmp/r")
        expectBad([.resolvConf: ""], names: "--resolv-conf", value: "")
    }
}

@Suite("ConfigResolver: precedence")
struct PrecedenceTests {
    @Test("default < env < flag")
    func envThenFlag() throws {
        #expect(try resolve(env: ["INBOUND_CAPTURE_PORT": "15007"]).capture.inboundCapturePort.value == 15007)
        let both = try resolve([.inboundCapturePort: "15009"], env: ["INBOUND_CAPTURE_PORT": "15007"])
        #expect(both.capture.inboundCapturePort.value == 15009)
        #expect(try resolve(env: ["ISTIO_SERVICE_CIDR": "*"]).capture.outboundInclude == .all)
        #expect(try resolve([.serviceCIDR: ""], env: ["ISTIO_SERVICE_CIDR": "*"]).capture.outboundInclude == .none)
    }

    @Test("ENVOY_PORT is not read (as in Istio)")
    func envoyPortEnv() throws {
        #expect(try resolve(env: ["ENVOY_PORT": "abc"]).capture.proxyPort.value == 15001)
    }

    @Test("alias env beats env; flag beats both")
    func alias() throws {
        let s = try resolve(
            [.captureAllDNS: "true"], env: ["REDIRECT_DNS": "false", "ISTIO_META_DNS_CAPTURE": "true"])
        #expect(s.capture.dns == .all)
        let t = try resolve(
            [.captureAllDNS: "true"], env: ["REDIRECT_DNS": "true", "ISTIO_META_DNS_CAPTURE": "false"])
        #expect(t.capture.dns == nil)
        let u = try resolve(
            [.captureAllDNS: "true", .redirectDNS: "false"], env: ["ISTIO_META_DNS_CAPTURE": "true"])
        #expect(u.capture.dns == nil)
        #expect(try resolve(env: ["INVALID_DROP": "true", "DROP_INVALID": "false"]).capture.dropInvalid)
        #expect(try !resolve([.dropInvalid: "false"], env: ["INVALID_DROP": "true"]).capture.dropInvalid)
        // An empty alias is unset: the plain variable decides.
        #expect(try resolve(env: ["INVALID_DROP": "", "DROP_INVALID": "true"]).capture.dropInvalid)
    }

    @Test("ISTIO_DUAL_STACK reaches IPv6 detection")
    func dualStack() throws {
        var system = FakeSystem()
        system.detect = { dual in dual }
        #expect(try !resolve(system: system).capture.ipv6)
        #expect(try resolve(env: ["ISTIO_DUAL_STACK": "true"], system: system).capture.ipv6)
        #expect(try resolve(env: ["DUAL_STACK": "true"], system: system).capture.ipv6)
        #expect(try resolve([.dualStack: "true"], env: ["ISTIO_DUAL_STACK": "false"], system: system).capture.ipv6)
    }
}

@Suite("ConfigResolver: environment-only knobs")
struct KnobTests {
    @Test("bad environment values name the variable")
    func badEnv() {
        expectBad(env: ["REDIRECT_DNS": "yes"], names: "REDIRECT_DNS", value: "yes")
        expectBad(env: ["ISTIO_META_DNS_CAPTURE": "yes"], names: "ISTIO_META_DNS_CAPTURE", value: "yes")
        expectBad(env: ["INBOUND_CAPTURE_PORT": "0"], names: "INBOUND_CAPTURE_PORT", value: "0")
        expectBad(env: ["INBOUND_TUNNEL_PORT": "65536"], names: "INBOUND_TUNNEL_PORT", value: "65536")
        expectBad(env: ["ISTIO_INBOUND_PORTS": "80-70"], names: "ISTIO_INBOUND_PORTS", value: "80-70")
        expectBad(env: ["ISTIO_SERVICE_CIDR": "10.0.0.0/33"], names: "ISTIO_SERVICE_CIDR", value: "10.0.0.0/33")
        expectBad(env: ["ISTIO_INBOUND_TPROXY_MARK": "x"], names: "ISTIO_INBOUND_TPROXY_MARK", value: "x")
        expectBad(env: ["PROBE_TIMEOUT": "forever"], names: "PROBE_TIMEOUT", value: "forever")
        expectBad(
            env: ["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "10.0.0.1/8"], names: "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR",
            value: "10.0.0.1/8")
        for bad in ["127.0.0.1/7", "::1/128", "127.0.0.1", "", "127.0.0.1/33"] {
            expectBad(
                env: ["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": bad], names: "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR", value: bad)
        }
    }

    @Test("ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR accepted")
    func loopbackCIDR() throws {
        let s = try resolve(env: ["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.0.0.1/8"])
        #expect(s.capture.ipv4LoopbackCIDR.description == "127.0.0.1/8")
        let t = try resolve(env: ["ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR": "127.1.2.3/32"])
        #expect(t.capture.ipv4LoopbackCIDR.description == "127.1.2.3/32")
    }

    @Test("owner groups: include list, exclude list, names")
    func ownerGroups() throws {
        #expect(
            try resolve(env: ["ISTIO_OUTBOUND_OWNER_GROUPS": "java,,202"]).capture.ownerGroups
                == .only([NumericID(30000)!, NumericID(202)!]))
        #expect(
            try resolve(env: ["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "java,202"]).capture.ownerGroups
                == .allExcept([NumericID(30000)!, NumericID(202)!]))
        #expect(try resolve(env: ["ISTIO_OUTBOUND_OWNER_GROUPS": "*"]).capture.ownerGroups == .allExcept([]))
    }

    @Test("owner groups: bad values")
    func badOwnerGroups() {
        let groups = (1...65).map(String.init).joined(separator: ",")
        expectBad(env: ["ISTIO_OUTBOUND_OWNER_GROUPS": groups], names: "ISTIO_OUTBOUND_OWNER_GROUPS", value: groups)
        expectBad(
            env: ["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": groups], names: "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
            value: groups)
        expectBad(
            env: ["ISTIO_OUTBOUND_OWNER_GROUPS": "nosuchgroup"], names: "ISTIO_OUTBOUND_OWNER_GROUPS",
            value: "nosuchgroup")
        expectBad(
            env: ["ISTIO_OUTBOUND_OWNER_GROUPS": "java", "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "202"],
            names: "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE", value: "202")
        expectBad(
            env: ["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "a b"], names: "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE",
            value: "a b")
    }

    @Test("exactly 64 owner groups are fine")
    func sixtyFourGroups() throws {
        let groups = (1...64).map(String.init).joined(separator: ",")
        guard case .only(let list) = try resolve(env: ["ISTIO_OUTBOUND_OWNER_GROUPS": groups]).capture.ownerGroups
        else {
            Issue.record("expected an include list")
            return
        }
        #expect(list.count == 64)
    }
}

@Suite("ConfigResolver: IPv6 choice")
struct IPv6Tests {
    @Test("--ipv6=on/off override detection")
    func onOff() throws {
        var system = FakeSystem()
        system.detect = { _ in false }
        #expect(try resolve([.ipv6: "on"], system: system).capture.ipv6)
        system.detect = { _ in true }
        #expect(try !resolve([.ipv6: "off"], system: system).capture.ipv6)
    }

    @Test("auto with detected addresses")
    func autoDetected() throws {
        var system = FakeSystem()
        system.detect = { _ in true }
        let on = try resolve(system: system)
        #expect(on.capture.ipv6)
        #expect(on.warnings.isEmpty)
        system.detect = { _ in false }
        system.loopbackIPv6 = true
        let off = try resolve([.ipv6: "auto"], system: system)
        #expect(!off.capture.ipv6)
        #expect(off.warnings.isEmpty)
    }

    @Test("auto without addresses falls back to lo's ::1, with a warning")
    func autoFallback() throws {
        var system = FakeSystem()
        system.detect = { _ in nil }
        system.loopbackIPv6 = true
        let on = try resolve(system: system)
        #expect(on.capture.ipv6)
        #expect(on.warnings.count == 1)
        system.loopbackIPv6 = false
        let off = try resolve(system: system)
        #expect(!off.capture.ipv6)
        #expect(off.warnings.count == 1)
    }
}

@Suite("ConfigResolver: DNS capture")
struct DNSTests {
    static func system(_ resolv: String?) -> FakeSystem {
        var s = FakeSystem()
        if let resolv { s.files["/etc/resolv.conf"] = resolv }
        return s
    }

    @Test("servers from resolv.conf, both families")
    func servers() throws {
        let text = "# comment\nsearch svc.cluster.local\nnameserver 10.96.0.10\nnameserver\tfd00::10\noptions ndots:5\n"
        let s = try resolve([.redirectDNS: "true"], system: Self.system(text))
        #expect(s.capture.dns == .servers(ipv4: [IPAddress("10.96.0.10")!], ipv6: [IPAddress("fd00::10")!]))
        #expect(s.warnings.isEmpty)
    }

    @Test("v4 only, v6 only, zone suffix")
    func oneFamily() throws {
        let v4 = try resolve([.redirectDNS: "true"], system: Self.system("nameserver 127.0.0.53\n"))
        #expect(v4.capture.dns == .servers(ipv4: [IPAddress("127.0.0.53")!], ipv6: []))
        let v6 = try resolve([.redirectDNS: "true"], system: Self.system("nameserver fe80::1%eth0\n"))
        #expect(v6.capture.dns == .servers(ipv4: [], ipv6: [IPAddress("fe80::1")!]))
    }

    @Test("--resolv-conf path is used")
    func path() throws {
        var system = FakeSystem()
        system.files["/tmp/r.conf"] = "nameserver 1.1.1.1\n"
        let s = try resolve([.redirectDNS: "true", .resolvConf: "/tmp/r.conf"], system: system)
        #expect(s.capture.dns == .servers(ipv4: [IPAddress("1.1.1.1")!], ipv6: []))
    }

    @Test("no nameserver: DNS capture off, with a warning")
    func none() throws {
        let s = try resolve([.redirectDNS: "true"], system: Self.system("search example\n"))
        #expect(s.capture.dns == nil)
        #expect(s.warnings.count == 1)
        #expect(s.warnings.first?.contains("/etc/resolv.conf") == true)
    }

    @Test("--capture-all-dns needs no resolv.conf")
    func captureAll() throws {
        let s = try resolve([.redirectDNS: "true", .captureAllDNS: "true"], system: Self.system(nil))
        #expect(s.capture.dns == .all)
        #expect(s.warnings.isEmpty)
        // Without --redirect-dns, --capture-all-dns does nothing.
        #expect(try resolve([.captureAllDNS: "true"], system: Self.system(nil)).capture.dns == nil)
    }

    /// A bad value is refused even when it would not change the rules (strict input, issue
    /// point 4): `CAPTURE_ALL_DNS=yes` must not be accepted just because DNS capture is off.
    @Test("--capture-all-dns is validated without --redirect-dns")
    func captureAllValidated() {
        expectBad(env: ["CAPTURE_ALL_DNS": "yes"], names: "CAPTURE_ALL_DNS", value: "yes")
        expectBad([.captureAllDNS: "yes"], names: "--capture-all-dns", value: "yes")
    }

    @Test("DNS off unless asked: resolv.conf is not read")
    func off() throws {
        #expect(try resolve(system: Self.system("nameserver bogus\n")).capture.dns == nil)
    }

    @Test("unreadable or bad resolv.conf")
    func badFile() {
        expectBad([.redirectDNS: "true"], system: Self.system(nil), names: "--resolv-conf", value: "/etc/resolv.conf")
        expectBad(
            [.redirectDNS: "true"], system: Self.system("nameserver 10.0.0\n"), names: "/etc/resolv.conf",
            value: "10.0.0")
        expectBad(
            [.redirectDNS: "true"], system: Self.system("nameserver\n"), names: "/etc/resolv.conf", value: "nameserver")
    }
}

@Suite("Go parsers")
struct GoParserTests {
    @Test(
        "parseGoBool",
        arguments: [
            ("1", true), ("t", true), ("T", true), ("TRUE", true), ("true", true), ("True", true), ("0", false),
            ("f", false), ("F", false), ("FALSE", false), ("false", false), ("False", false),
        ])
    func goBool(text: String, value: Bool) {
        #expect(parseGoBool(text) == value)
    }

    @Test("parseGoBool rejects", arguments: ["", "yes", "no", "on", "off", "tRUE", "TRUE ", " 1", "2", "y"])
    func goBoolRejects(text: String) {
        #expect(parseGoBool(text) == nil)
    }

    @Test(
        "parseGoDuration",
        arguments: [
            ("0", Int64(0)), ("0s", 0), ("5s", 5000), ("500ms", 500), ("1m30s", 90000), ("1h", 3_600_000),
            ("1.5s", 1500), (".5s", 500), ("100us", 1), ("1500us", 2), ("2000000ns", 2), ("1h1m1s1ms", 3_661_001),
            ("1\u{B5}s", 1), ("3000\u{3BC}s", 3),
        ])
    func goDuration(text: String, millis: Int64) {
        #expect(parseGoDuration(text) == millis)
    }

    @Test("parseGoDuration rejects", arguments: ["", "5", "s", "1d", "5 s", "abc", "1.2.3s", ".s", "5S", "1e3s"])
    func goDurationRejects(text: String) {
        #expect(parseGoDuration(text) == nil)
    }

    @Test("splitList drops empty items, does not trim")
    func split() {
        #expect(splitList("80,,90").map(String.init) == ["80", "90"])
        #expect(splitList(",,").isEmpty)
        #expect(splitList("").isEmpty)
        #expect(splitList(" a, b").map(String.init) == [" a", " b"])
    }

    @Test("quoted escapes control characters")
    func quoting() {
        #expect(quoted("a b") == "\"a b\"")
        #expect(quoted("a\tb\nc\r\"\\") == "\"a\\tb\\nc\\r\\\"\\\\\"")
        #expect(quoted("\u{1}") == "\"\\u{1}\"")
        #expect(quoted("a\u{85}b\u{2028}c") == "\"a\\u{85}b\\u{2028}c\"")
    }
}

@Suite("ConfigResolver: --child-timeout")
struct ChildTimeoutTests {
    /// The documented default (README, --help): 30 s per child process.
    @Test("default 30s; MESHINIT_CHILD_TIMEOUT, then the flag, override it")
    func values() throws {
        #expect(try resolve().run.childTimeoutMilliseconds == 30_000)
        #expect(IstioFlag.childTimeout.defaultValue == "30s")
        #expect(IstioFlag.childTimeout.environment == "MESHINIT_CHILD_TIMEOUT")
        #expect(try resolve(env: ["MESHINIT_CHILD_TIMEOUT": "2s"]).run.childTimeoutMilliseconds == 2000)
        #expect(
            try resolve([.childTimeout: "1500ms"], env: ["MESHINIT_CHILD_TIMEOUT": "2s"]).run.childTimeoutMilliseconds
                == 1500)
        #expect(try resolve([.childTimeout: "1m30s"]).run.childTimeoutMilliseconds == 90_000)
    }

    @Test(
        "zero, negative, over an hour and non-durations are refused, naming the source",
        arguments: ["0", "-1s", "2h", "30", "soon", ""])
    func refused(_ text: String) {
        expectBad([.childTimeout: text], names: "--child-timeout", value: text)
        expectBad(env: ["MESHINIT_CHILD_TIMEOUT": text], names: "MESHINIT_CHILD_TIMEOUT", value: text)
    }
}

@Suite("ConfigResolver: bounded files")
struct BoundedFileTests {
    @Test("a resolv.conf over 1 MiB is refused, naming --resolv-conf")
    func largeResolvConf() {
        var system = FakeSystem()
        system.files["/big"] = String(repeating: "# padding\n", count: (1 << 20) / 10 + 1) + "nameserver 10.0.0.1\n"
        expectBad([.redirectDNS: "true", .resolvConf: "/big"], system: system, names: "--resolv-conf", value: "/big")
        system.files["/ok"] = "nameserver 10.0.0.1\n"
        #expect(throws: Never.self) { try resolve([.redirectDNS: "true", .resolvConf: "/ok"], system: system) }
    }
}
