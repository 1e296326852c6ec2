import MeshCNI
import MeshConfig
import MeshModel
import MeshPlanner
import MeshRender
import PropertyBased
import Testing

/// The resolver's system for these tests: no users but istio-proxy, IPv4 only, one DNS server.
struct NoSystem: SystemLookup {
    func userID(named: String) -> UInt32? { named == "istio-proxy" ? 1337 : nil }
    func groupID(named: String) -> UInt32? { nil }
    func detectIPv6(dualStack: Bool) -> Bool? { false }
    func loopbackHasIPv6() -> Bool { false }
    func readFile(_ path: String) -> String? { path == "/etc/resolv.conf" ? "nameserver 10.96.0.10\n" : nil }
}

let addEnvironment = [
    "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/pod", "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1", "CNI_PATH": "/opt/cni/bin",
]

func request(_ json: String, _ environment: [String: String] = addEnvironment) throws -> CNIRequest {
    try CNIRequest.parse(environment: environment, stdin: Array(json.utf8))
}

/// A network configuration with our keys and these pod annotations.
func configJSON(_ keys: String = "", annotations: [String: String] = [:]) -> String {
    let entries = annotations.sorted { $0.key < $1.key }.map {
        "\(JSONValue.string($0.key).serialized):\(JSONValue.string($0.value).serialized)"
    }
    let runtime = "\"runtimeConfig\":{\"io.kubernetes.cri.pod-annotations\":{\(entries.joined(separator: ","))}}"
    return
        "{\"cniVersion\":\"1.1.0\",\"name\":\"net\",\"type\":\"meshinit\",\(keys.isEmpty ? "" : keys + ",")\(runtime)}"
}

func expectCNIError(
    _ code: CNIErrorCode, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) {
    do {
        try body()
        Issue.record("no error, expected \(code) (\(fragment))", sourceLocation: sourceLocation)
    } catch let error as CNIError {
        #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        #expect(error.description.contains(fragment), "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("unexpected \(error)", sourceLocation: sourceLocation)
    }
}

@Suite("CNI protocol")
struct ProtocolTests {
    @Test("a chained ADD passes prevResult through byte for byte; without one, an empty result")
    func passThrough() throws {
        let previous =
            #"{ "cniVersion" : "1.0.0", "ips": [ {"address": "10.1.0.5/24", "gateway":"10.1.0.1"} ], "x": 1.50 }"#
        let r = try request(#"{"cniVersion":"1.0.0","name":"n","type":"meshinit","prevResult":"# + previous + "}")
        #expect(try r.addResult() == previous + "\n")
        #expect(r.cniVersion == "1.0.0")
        let bare = try request(#"{"cniVersion":"0.4.0","name":"n","type":"meshinit"}"#)
        #expect(try bare.addResult() == #"{"cniVersion":"0.4.0"}"# + "\n")
    }

    @Test("VERSION lists the supported versions, also without stdin")
    func version() throws {
        let r = try CNIRequest.parse(environment: ["CNI_COMMAND": "VERSION"], stdin: [])
        #expect(r.versionResult() == #"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"# + "\n")
    }

    @Test("errors: the spec's codes, and the error JSON")
    func errors() throws {
        expectCNIError(.invalidEnvironment, "CNI_COMMAND is not set") { _ = try request("{}", [:]) }
        expectCNIError(.invalidEnvironment, "unknown CNI_COMMAND \"FOO\"") {
            _ = try request("{}", ["CNI_COMMAND": "FOO"])
        }
        var noNetns = addEnvironment
        noNetns["CNI_NETNS"] = nil
        expectCNIError(.invalidEnvironment, "CNI_NETNS is not set") { _ = try request(configJSON(), noNetns) }
        var relative = addEnvironment
        relative["CNI_NETNS"] = "run/netns/x"
        expectCNIError(.invalidEnvironment, "not an absolute path") { _ = try request(configJSON(), relative) }
        var badArgs = addEnvironment
        badArgs["CNI_ARGS"] = "K8S_POD_NAME"
        expectCNIError(.invalidEnvironment, "CNI_ARGS item") { _ = try request(configJSON(), badArgs) }
        expectCNIError(.decodingFailure, "not JSON") { _ = try request("{\"cniVersion\": ") }
        expectCNIError(.decodingFailure, "not a JSON object") { _ = try request("[1]") }
        expectCNIError(.incompatibleVersion, "unsupported cniVersion \"0.3.1\"") {
            _ = try request(#"{"cniVersion":"0.3.1","name":"n"}"#)
        }
        let json = CNIError(.invalidConfig, "bad", details: "why").json(cniVersion: "1.0.0")
        #expect(json == #"{"cniVersion":"1.0.0","code":7,"msg":"bad","details":"why"}"# + "\n")
    }

    @Test("DEL needs no netns (the pod may be gone)")
    func delWithoutNetns() throws {
        var environment = addEnvironment
        environment["CNI_COMMAND"] = "DEL"
        environment["CNI_NETNS"] = ""
        let r = try request(configJSON(), environment)
        #expect(r.command == .del)
        #expect(r.netns.isEmpty)
        #expect(r.pod == "default/web-1")
    }
}

@Suite("CNI plugin configuration")
struct PluginConfigTests {
    @Test("keys: Istio flag names (strings, numbers, booleans, lists) and the plugin's own")
    func keys() throws {
        let r = try request(
            configJSON(
                #""envoy-port":15002,"istio-local-outbound-ports-exclude":[22,"8000-8010"],"redirect-dns":true,"capture-all-dns":true,"#
                    + #""excludeNamespaces":["kube-system"],"backend":"iptables","requireAnnotation":false,"logFile":"/var/log/m.log""#
            ))
        let config = try PluginConfig(try #require(r.config))
        #expect(config.flags[.envoyPort] == ConfigInput.Value("15002", .configKey("envoy-port")))
        #expect(config.flags[.localOutboundPortsExclude]?.text == "22,8000-8010")
        #expect(config.flags[.redirectDNS]?.text == "true")
        #expect(config.excludeNamespaces == ["kube-system"])
        #expect(config.backend == .iptables)
        #expect(!config.requireAnnotation)
        #expect(config.logFile == "/var/log/m.log")
    }

    @Test(
        "bad keys are refused (code 7), naming the key",
        arguments: [
            (#""envoy-prot":"15001""#, "unknown config key \"envoy-prot\""),
            (#""dry-run":true"#, "config key \"dry-run\" is not a capture setting"),
            (#""envoy-port":true"#, "config key \"envoy-port\": expected a string"),
            (#""redirect-dns":1"#, "config key \"redirect-dns\": expected true or false"),
            (#""backend":"ebpf""#, "expected auto, nftables or iptables"),
            (#""excludeNamespaces":"kube-system""#, "excludeNamespaces"),
            (#""logFile":"relative.log""#, "logFile"),
        ])
    func badKeys(keys: String, message: String) throws {
        let r = try request(configJSON(keys))
        expectCNIError(.invalidConfig, message) { _ = try PluginConfig(try #require(r.config)) }
    }
}

@Suite("Pod decisions")
struct DecisionTests {
    static let status = [PodAnnotation.status: #"{"containers":["istio-proxy"]}"#]

    static func decide(
        _ keys: String = "", annotations: [String: String], environment: [String: String] = addEnvironment
    )
        throws -> PodDecision
    {
        let r = try request(configJSON(keys, annotations: annotations), environment)
        return try PodDecision.decide(r, try PluginConfig(try #require(r.config)))
    }

    static func skipped(_ decision: PodDecision) -> String? {
        if case .skip(let reason) = decision { return reason }
        return nil
    }

    @Test("pods without a sidecar, opted out, in excluded namespaces, NONE: nothing, and why")
    func skips() throws {
        #expect(Self.skipped(try Self.decide(annotations: [:]))?.contains("no sidecar.istio.io/status") == true)
        #expect(
            Self.skipped(
                try Self.decide(annotations: Self.status.merging([PodAnnotation.inject: "false"]) { a, _ in a }))?
                .contains("inject is false") == true)
        #expect(
            Self.skipped(try Self.decide(#""excludeNamespaces":["default"]"#, annotations: Self.status))?.contains(
                "namespace default is excluded") == true)
        #expect(
            Self.skipped(
                try Self.decide(
                    annotations: Self.status.merging(["sidecar.istio.io/interceptionMode": "NONE"]) { a, _ in a }))?
                .contains("NONE") == true)
        #expect(Self.skipped(try Self.decide(annotations: Self.status)) == nil)
        // requireAnnotation false: a pod without the status annotation is captured too.
        #expect(Self.skipped(try Self.decide(#""requireAnnotation":false"#, annotations: [:])) == nil)
    }

    /// The settings a pod gets: Istio's injected defaults, the config keys, then annotations.
    static func settings(_ keys: String = "", annotations: [String: String]) throws -> Settings {
        guard case .capture(let input) = try decide(keys, annotations: annotations.merging(status) { a, _ in a })
        else { throw CNIError(.invalidConfig, "skipped") }
        return try ConfigResolver(system: NoSystem()).resolve(input)
    }

    @Test("no keys, no annotations: Istio's injected istio-init arguments")
    func injectedDefaults() throws {
        let cni = try Self.settings(annotations: [:])
        let flags = try ConfigResolver(system: NoSystem()).resolve(
            flags: try IstioArguments.parse([
                "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d",
                "15090,15021,15020",
            ]), environment: [:])
        #expect(cni.capture == flags.capture)
    }

    /// One good and one bad value per annotation: the good one sets the flag it stands for,
    /// the bad one is refused naming the annotation.
    @Test(
        "annotations",
        arguments: [
            ("sidecar.istio.io/interceptionMode", "TPROXY", "SIDEWAYS", ["-m", "TPROXY"]),
            (
                "traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/8,fd00::/8", "10.0.0.0/33",
                ["-i", "10.0.0.0/8,fd00::/8"]
            ),
            ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "10.96.0.1/32", "ten.96", ["-x", "10.96.0.1/32"]),
            ("traffic.sidecar.istio.io/includeInboundPorts", "8080,9000-9010", "80-70", ["-b", "8080,9000-9010"]),
            ("traffic.sidecar.istio.io/excludeInboundPorts", "8081", "0", ["-d", "8081,15020,15021,15090"]),
            ("traffic.sidecar.istio.io/includeOutboundPorts", "443", "65536", ["-q", "443"]),
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "22,3306", "ssh", ["-o", "22,3306"]),
            ("traffic.sidecar.istio.io/excludeInterfaces", "eth1,veth+", "eth 1", ["-c", "eth1,veth+"]),
            ("istio.io/reroute-virtual-interfaces", "k6t-eth0", "+", ["-k", "k6t-eth0"]),
            ("traffic.sidecar.istio.io/kubevirtInterfaces", "k6t-eth0", "a/b", ["-k", "k6t-eth0"]),
        ])
    func annotation(name: String, good: String, bad: String, equivalent: [String]) throws {
        let cni = try Self.settings(annotations: [name: good])
        let defaults = [
            "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d",
            "15090,15021,15020",
        ]
        let flags = try ConfigResolver(system: NoSystem()).resolve(
            flags: try IstioArguments.parse(defaults + equivalent), environment: [:])
        #expect(cni.capture == flags.capture, "\(name)=\(good)")
        do {
            _ = try Self.settings(annotations: [name: bad])
            Issue.record("\(name)=\(bad) accepted")
        } catch let error as ConfigError {
            #expect(error.description.contains("annotation \(name)"), "\(error)")
            #expect(!error.description.contains("\n"))
        }
    }

    @Test("istio.io/reroute-virtual-interfaces wins over the deprecated kubevirtInterfaces")
    func rerouteWins() throws {
        let s = try Self.settings(
            annotations: [
                "istio.io/reroute-virtual-interfaces": "new0", "traffic.sidecar.istio.io/kubevirtInterfaces": "old0",
            ])
        #expect(s.capture.kubeVirtInterfaces.map(\.name) == ["new0"])
    }

    @Test("a bad config key value is refused naming the key; an annotation overrides a key")
    func keysAndAnnotations() throws {
        do {
            _ = try Self.settings(#""istio-outbound-ports":"http""#, annotations: [:])
            Issue.record("accepted")
        } catch let error as ConfigError {
            #expect(error.description.contains("config key \"istio-outbound-ports\""), "\(error)")
        }
        // Overridden values are validated too (as the flags path does).
        do {
            _ = try Self.settings(
                #""istio-local-outbound-ports-exclude":"x""#,
                annotations: ["traffic.sidecar.istio.io/excludeOutboundPorts": "22"])
            Issue.record("accepted a bad overridden key")
        } catch let error as ConfigError {
            #expect(error.description.contains("config key"), "\(error)")
        }
        let s = try Self.settings(
            #""istio-local-outbound-ports-exclude":"23""#,
            annotations: ["traffic.sidecar.istio.io/excludeOutboundPorts": "22"])
        #expect(s.capture.outboundExcludePorts.map(\.description) == ["22"])
    }

    /// For random settings given as config keys and annotations, the CNI path and the flags
    /// path (the same values as `meshinit plan` flags) give the same plan.
    @Test func cniAndFlagsPlanAlike() async throws {
        let ports = ["", "80", "8080,9090", "7000-7010", "22,443,8000-8100", "15008"]
        let cidrs = ["", "*", "10.0.0.0/8", "10.96.0.0/12,192.168.0.0/16", "fd00::/8,10.1.2.3/32"]
        let pool: [(flag: IstioFlag, annotation: String?, values: [String])] = [
            (.envoyPort, nil, ["15001", "16001"]), (.inboundCapturePort, nil, ["15006", "16006"]),
            (.proxyUID, nil, ["1337", "1337,1338"]),
            (.interceptionMode, "sidecar.istio.io/interceptionMode", ["REDIRECT", "TPROXY"]),
            (.serviceCIDR, "traffic.sidecar.istio.io/includeOutboundIPRanges", cidrs),
            (.serviceExcludeCIDR, "traffic.sidecar.istio.io/excludeOutboundIPRanges", cidrs.filter { $0 != "*" }),
            (.inboundPorts, "traffic.sidecar.istio.io/includeInboundPorts", ["*"] + ports),
            (.localExcludePorts, "traffic.sidecar.istio.io/excludeInboundPorts", ports),
            (.outboundPorts, "traffic.sidecar.istio.io/includeOutboundPorts", ports),
            (.localOutboundPortsExclude, "traffic.sidecar.istio.io/excludeOutboundPorts", ports),
            (.excludeInterfaces, "traffic.sidecar.istio.io/excludeInterfaces", ["", "eth1", "veth+,eth2"]),
            (.kubeVirtInterfaces, "istio.io/reroute-virtual-interfaces", ["", "k6t-eth0"]),
            (.redirectDNS, nil, ["true", "false"]), (.captureAllDNS, nil, ["true", "false"]),
            (.dropInvalid, nil, ["true", "false"]), (.ipv6, nil, ["on", "off"]),
        ]
        // Per pool entry: how it is given (0 unset, 1 config key, 2 annotation if it has one, 3
        // both) and the two values.
        let gen = Gen.int(in: 0..<36).array(of: pool.count * 3)
        await propertyCheck(count: 200, input: gen) { draws in
            let ways = draws[0..<pool.count].map { $0 % 4 }
            let picks = Array(draws[pool.count...])
            var keys: [String] = []
            var annotations: [String: String] = [:]
            var flags: FlagMap<String> = [
                .envoyPort: "15001", .inboundCapturePort: "15006", .proxyUID: "1337", .interceptionMode: "REDIRECT",
                .serviceCIDR: "*", .serviceExcludeCIDR: "", .inboundPorts: "*", .localExcludePorts: "15090,15021,15020",
            ]
            for (i, entry) in pool.enumerated() {
                let keyValue = entry.values[picks[2 * i] % entry.values.count]
                let annotationValue = entry.values[picks[2 * i + 1] % entry.values.count]
                let way = entry.annotation == nil ? ways[i] % 2 : ways[i]
                if way == 1 || way == 3 {
                    keys.append(
                        "\(JSONValue.string(entry.flag.long).serialized):\(JSONValue.string(keyValue).serialized)")
                    flags[entry.flag] = keyValue
                }
                if way >= 2, let annotation = entry.annotation {
                    annotations[annotation] = annotationValue
                    flags[entry.flag] = annotationValue
                }
            }
            // istio-cni's always-excluded inbound ports.
            var excluded = splitList(flags[.localExcludePorts] ?? "").map(String.init)
            for port in PodAnnotation.alwaysExcludedInbound where !excluded.contains(port) { excluded.append(port) }
            flags[.localExcludePorts] = excluded.joined(separator: ",")
            // CNI mode refuses what would read the node's resolv.conf.
            if flags[.redirectDNS] == "true" && flags[.captureAllDNS] != "true" {
                expectCNIError(.invalidConfig, "needs \"capture-all-dns\": true") {
                    _ = try Self.settings(keys.joined(separator: ","), annotations: annotations)
                }
                return
            }
            do {
                let viaFlags = try ConfigResolver(system: NoSystem()).resolve(flags: flags, environment: [:])
                let viaCNI = try Self.settings(keys.joined(separator: ","), annotations: annotations)
                let a = Planner.plan(viaCNI.capture)
                let b = Planner.plan(viaFlags.capture)
                #expect(a == b, "keys \(keys) annotations \(annotations)")
                #expect(NftScript.render(a) == NftScript.render(b))
            } catch {
                Issue.record("\(error): keys \(keys) annotations \(annotations)")
            }
        }
    }
}

@Suite("The node's .conflist")
struct ConflistTests {
    static let ours = #"{"type":"meshinit","capabilities":{"io.kubernetes.cri.pod-annotations":true}}"#
    static let pretty = """
        {
          "cniVersion": "1.0.0",
          "name": "podnet",
          "plugins": [
            {
              "type": "bridge",
              "ipam": { "type": "host-local", "subnet": "10.22.0.0/16" }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
          ]
        }

        """

    static func insert(_ entry: String, _ text: String) throws -> String? {
        try Conflist.inserting(entry, into: Array(text.utf8)).map { String(decoding: $0, as: UTF8.self) }
    }

    static func remove(_ text: String) throws -> String? {
        try Conflist.removing(from: Array(text.utf8)).map { String(decoding: $0, as: UTF8.self) }
    }

    @Test("inserted at the end of plugins, every other byte kept; idempotent; removed back to the original")
    func roundTrip() throws {
        let inserted = try #require(try Self.insert(Self.ours, Self.pretty))
        #expect(
            inserted.contains(
                "  { \"type\": \"portmap\", \"capabilities\": { \"portMappings\": true } },\n    \(Self.ours)\n  ]"))
        #expect(inserted.replacingOccurrences(of: ",\n    \(Self.ours)", with: "") == Self.pretty)
        #expect(try Self.insert(Self.ours, inserted) == nil)
        #expect(try Conflist.contains(Array(inserted.utf8)))
        #expect(try Self.remove(inserted) == Self.pretty)
        #expect(try Self.remove(Self.pretty) == nil)
    }

    @Test("an entry of ours with other settings is replaced, not duplicated")
    func replaced() throws {
        let old = try #require(try Self.insert(#"{"type":"meshinit","backend":"iptables"}"#, Self.pretty))
        let new = try #require(try Self.insert(Self.ours, old))
        #expect(new.components(separatedBy: "\"meshinit\"").count == 2)
        #expect(new.contains(Self.ours))
    }

    @Test("compact files, empty lists, ours first")
    func shapes() throws {
        #expect(
            try Self.insert(Self.ours, #"{"name":"n","plugins":[{"type":"ptp"}]}"#)
                == #"{"name":"n","plugins":[{"type":"ptp"}, "# + Self.ours + "]}")
        #expect(try Self.insert(Self.ours, #"{"plugins":[]}"#) == #"{"plugins":["# + Self.ours + "]}")
        #expect(
            try Self.remove(#"{"plugins":["# + Self.ours + #", {"type":"ptp"}]}"#)
                == #"{"plugins":[{"type":"ptp"}]}"#)
        #expect(try Self.remove(#"{"plugins":["# + Self.ours + "]}") == #"{"plugins":[]}"#)
    }

    @Test("what is not a configuration list is refused")
    func refused() {
        #expect(throws: ConflistError.self) { try Self.insert(Self.ours, #"{"type":"bridge"}"#) }
        #expect(throws: ConflistError.self) { try Self.insert(Self.ours, "{") }
        #expect(throws: ConflistError.self) { try Self.insert(Self.ours, #"{"plugins":{}}"#) }
    }

    @Test("the primary is the first configuration file in lexicographic order")
    func primary() {
        #expect(
            Conflist.primary(among: ["99-x.conflist", "10-calico.conflist", "README", ".10-tmp.conflist"])
                == "10-calico.conflist")
        #expect(Conflist.primary(among: ["README"]) == nil)
    }
}
