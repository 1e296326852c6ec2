import MeshCNI
import MeshConfig
import MeshModel
import Testing

/// The CNI protocol from the spec's side: every command against every version, every
/// variable missing, every key of the wrong type, hostile values. What each must give is the
/// spec's (and libcni's skel's) answer; DEL is the exception the spec makes itself: it must
/// succeed for whatever it does not need.
@Suite("CNI protocol, table-driven")
struct ProtocolSuiteTests {
    static let strictCommands = ["ADD", "CHECK", "STATUS", "GC"]
    static let allCommands = strictCommands + ["DEL", "VERSION"]

    static func environment(_ command: String) -> [String: String] {
        var e = addEnvironment
        e["CNI_COMMAND"] = command
        return e
    }

    static func config(_ version: String = "1.1.0", _ extra: String = "") -> String {
        "{\"cniVersion\":\(JSONValue.string(version).serialized),\"name\":\"net\",\"type\":\"meshinit\"\(extra.isEmpty ? "" : "," + extra)}"
    }

    /// The code an input gets, or nil when it is accepted.
    static func code(_ json: [UInt8], _ environment: [String: String]) -> Int? {
        do {
            _ = try CNIRequest.parse(environment: environment, stdin: json)
            return nil
        } catch {
            return error.code.rawValue
        }
    }

    static func code(_ json: String, _ environment: [String: String]) -> Int? {
        code(Array(json.utf8), environment)
    }

    @Test("every command against every cniVersion")
    func versions() {
        let versions = [
            "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "1.2.0", "2.0.0", "", "x", "1.0",
        ]
        for command in Self.allCommands {
            for version in versions {
                let got = Self.code(Self.config(version), Self.environment(command))
                let want: Int? =
                    switch command {
                    case "VERSION", "DEL": nil
                    case "STATUS", "GC": version == "1.1.0" ? nil : 1
                    default: CNIVersion.supported.contains(version) ? nil : 1
                    }
                #expect(got == want, "\(command) cniVersion \(quoted(version))")
            }
        }
    }

    @Test("VERSION answers for any input, in its own version")
    func versionAnswers() throws {
        for stdin in ["", "{}", #"{"cniVersion":"0.1.0"}"#, #"{"cniVersion":"0.3.1"}"#, "not json", "[1]", "\u{0}"] {
            let r = try CNIRequest.parse(environment: ["CNI_COMMAND": "VERSION"], stdin: Array(stdin.utf8))
            #expect(
                r.versionResult() == #"{"cniVersion":"1.1.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]}"# + "\n")
        }
    }

    @Test("each required variable missing or empty: 4 for ADD, CHECK, STATUS, GC; DEL goes on")
    func variables() {
        let required: [String: [String]] = [
            "ADD": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
            "CHECK": ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
            "STATUS": ["CNI_PATH"], "GC": ["CNI_PATH"],
            "DEL": [], "VERSION": [],
        ]
        for command in Self.allCommands {
            for name in CNIPluginVariables.all where name != "CNI_COMMAND" {
                for value in [nil, ""] as [String?] {
                    var e = Self.environment(command)
                    e[name] = value
                    let want = required[command]!.contains(name) ? 4 : nil
                    #expect(Self.code(Self.config(), e) == want, "\(command) \(name)=\(value ?? "(unset)")")
                }
            }
        }
        #expect(Self.code(Self.config(), [:]) == 4)
        #expect(Self.code(Self.config(), ["CNI_COMMAND": ""]) == 4)
        #expect(Self.code(Self.config(), ["CNI_COMMAND": "add"]) == 4)
    }

    @Test("bad variable values: 4 for ADD and CHECK, ignored by DEL")
    func variableValues() {
        let bad: [(String, String)] = [
            ("CNI_NETNS", "run/netns/x"), ("CNI_NETNS", "/run/netns/a\u{0}b"), ("CNI_IFNAME", "interfacename016"),
            ("CNI_IFNAME", "a/b"), ("CNI_IFNAME", "a b"), ("CNI_IFNAME", "eth:0"), ("CNI_IFNAME", "."),
            ("CNI_IFNAME", ".."), ("CNI_IFNAME", "eth\n0"), ("CNI_CONTAINERID", "-x"), ("CNI_CONTAINERID", "a b"),
            ("CNI_CONTAINERID", "a/b"), ("CNI_CONTAINERID", "é"), ("CNI_ARGS", "K8S_POD_NAME"), ("CNI_ARGS", "=v"),
        ]
        for (name, value) in bad {
            for command in ["ADD", "CHECK", "DEL"] {
                var e = Self.environment(command)
                e[name] = value
                #expect(
                    Self.code(Self.config(), e) == (command == "DEL" ? nil : 4), "\(command) \(name)=\(quoted(value))")
            }
        }
        var e = Self.environment("ADD")
        e["CNI_IFNAME"] = "interfacename01"  // 15 bytes: the longest name
        e["CNI_CONTAINERID"] = "a_b.c-1"
        #expect(Self.code(Self.config(), e) == nil)
    }

    @Test("stdin that is not a configuration: strict commands refuse it with the spec's code; DEL goes on")
    func hostileStdin() {
        let cases: [(String, [UInt8], Int)] = [
            ("not JSON", Array("{\"cniVersion\": ".utf8), 6), ("empty", [], 6), ("an array", Array("[1]".utf8), 6),
            ("a string", Array("\"x\"".utf8), 6), ("null", Array("null".utf8), 6),
            ("invalid UTF-8", Array(#"{"cniVersion":"1.1.0","name":"n","x":""#.utf8) + [0xff] + Array(#""}"#.utf8), 6),
            ("a key twice", Array(Self.config("1.1.0", #""cniVersion":"1.1.0""#).utf8), 7),
            ("a depth bomb", Array(String(repeating: "[", count: 100_000).utf8), 6),
            ("no cniVersion", Array(#"{"name":"n"}"#.utf8), 7),
            ("cniVersion a number", Array(#"{"cniVersion":1.1,"name":"n"}"#.utf8), 7),
            ("cniVersion null", Array(#"{"cniVersion":null,"name":"n"}"#.utf8), 7),
            ("cniVersion an array", Array(#"{"cniVersion":["1.1.0"],"name":"n"}"#.utf8), 7),
            ("no name", Array(#"{"cniVersion":"1.1.0"}"#.utf8), 7),
            ("name a number", Array(#"{"cniVersion":"1.1.0","name":5}"#.utf8), 7),
            ("name empty", Array(#"{"cniVersion":"1.1.0","name":""}"#.utf8), 7),
            ("name with a slash", Array(#"{"cniVersion":"1.1.0","name":"a/b"}"#.utf8), 7),
            ("name null", Array(#"{"cniVersion":"1.1.0","name":null}"#.utf8), 7),
        ]
        for (what, stdin, want) in cases {
            for command in Self.strictCommands {
                #expect(Self.code(stdin, Self.environment(command)) == want, "\(command): \(what)")
            }
            #expect(Self.code(stdin, Self.environment("DEL")) == nil, "DEL: \(what)")
            #expect(Self.code(stdin, ["CNI_COMMAND": "VERSION"]) == nil, "VERSION: \(what)")
        }
    }

    /// Wrong JSON types for every key the plugin reads.
    static let wrongTypes: [(key: String, values: [String])] = {
        var table: [(String, [String])] = []
        for flag in PluginConfig.settingFlags {
            table.append(
                (
                    flag.long,
                    flag.isBoolean
                        ? ["1", "[]", "{}", "null", "[true]"] : ["true", "{}", "null", "[{}]", "[null]", "[[1]]"]
                ))
        }
        table += [
            ("excludeNamespaces", ["\"kube-system\"", "[1]", "{}", "null", "true", "[null]"]),
            ("backend", ["1", "true", "[\"auto\"]", "null", "\"ebpf\"", "\"\""]),
            ("requireAnnotation", ["\"true\"", "1", "null", "[]"]),
            ("logFile", ["\"relative.log\"", "1", "null", "[]", "\"/var/log/\"", "\"\""]),
            ("type", ["1", "true", "[]", "{}"]), ("capabilities", ["1", "\"x\"", "[]", #"{"portMappings":1}"#]),
            ("runtimeConfig", ["1", "\"x\"", "[]", "true"]), ("prevResult", ["1", "\"x\"", "[]", "true"]),
            ("args", ["1", "\"x\"", "[]"]), ("dns", ["1", "\"x\"", "[]"]),
            ("cni.dev/valid-attachments", ["{}", "\"x\"", "[1]", #"[{"containerID":1,"ifname":"eth0"}]"#]),
        ]
        return table
    }()

    @Test("a key of the wrong type is refused (7), naming the key; null stands for absent only in the spec's keys")
    func keyTypes() throws {
        var cases = 0
        for (key, values) in Self.wrongTypes {
            for value in values {
                let member = "\(JSONValue.string(key).serialized):\(value)"
                let r = try request(
                    key == "type"
                        ? "{\"cniVersion\":\"1.1.0\",\"name\":\"net\",\(member)}" : Self.config("1.1.0", member))
                let json = try #require(r.config)
                let standard = [
                    "type", "capabilities", "runtimeConfig", "prevResult", "args", "dns", "cni.dev/valid-attachments",
                ]
                if value == "null" && standard.contains(key) {
                    _ = try PluginConfig(json)
                    continue
                }
                do {
                    _ = try PluginConfig(json)
                    Issue.record("\(key): \(value) accepted")
                } catch {
                    #expect(error.code == .invalidConfig, "\(key): \(value): \(error)")
                    let named =
                        error.description.contains(key) || error.description.contains("capability")
                        || error.description.contains("valid-attachments")
                    #expect(named, "\(key): \(value): \(error)")
                }
                cases += 1
            }
        }
        #expect(cases > 150)
    }

    @Test(
        "the annotation map: null is empty, absent fails ADD naming the capability (unless requireAnnotation is false), other types refused"
    )
    func annotationMap() throws {
        func decision(_ runtimeConfig: String?, _ keys: String = "") throws(CNIError) -> PodDecision {
            var extra = keys
            if let runtimeConfig { extra += (extra.isEmpty ? "" : ",") + "\"runtimeConfig\":\(runtimeConfig)" }
            let r: CNIRequest
            do { r = try request(Self.config("1.0.0", extra)) } catch { throw CNIError(.invalidConfig, "\(error)") }
            return try PodDecision.decide(r, try PluginConfig(r.config!))
        }
        func skipped(_ d: PodDecision) -> Bool {
            if case .skip = d { return true }
            return false
        }
        // null: the pod has no annotations (containerd): no sidecar, skipped, no error.
        #expect(skipped(try decision(#"{"io.kubernetes.cri.pod-annotations":null}"#)))
        #expect(skipped(try decision(#"{"io.kubernetes.cri.pod-annotations":{}}"#)))
        #expect(!skipped(try decision(#"{"io.kubernetes.cri.pod-annotations":{"sidecar.istio.io/status":"{}"}}"#)))
        // Absent (no runtimeConfig, runtimeConfig null or without the key): the runtime did not
        // pass them; ADD cannot know whether there is a sidecar.
        for runtimeConfig in [nil, "null", "{}", #"{"portMappings":[]}"#] {
            expectCNIError(.invalidConfig, "io.kubernetes.cri.pod-annotations") { _ = try decision(runtimeConfig) }
            // requireAnnotation false says otherwise: every pod is captured.
            #expect(!skipped(try decision(runtimeConfig, #""requireAnnotation":false"#)))
        }
        // An excluded namespace is skipped before that (nothing to decide).
        #expect(skipped(try decision(nil, #""excludeNamespaces":["default"]"#)))
        for bad in ["\"x\"", "[]", "1", "true", "[{}]"] {
            expectCNIError(.invalidConfig, "not an object") {
                _ = try decision("{\"io.kubernetes.cri.pod-annotations\":\(bad)}")
            }
        }
        for bad in ["1", "null", "true", "{}", "[]"] {
            expectCNIError(.invalidConfig, "annotation \"a\"") {
                _ = try decision("{\"io.kubernetes.cri.pod-annotations\":{\"a\":\(bad)}}")
            }
        }
    }

    @Test(
        "CNI mode refuses what would be looked up on the node instead of the pod",
        arguments: [
            (#""proxy-uid":"istio-proxy""#, "expected numeric uids"), (#""proxy-uid":"1337,envoy""#, "numeric uids"),
            (#""proxy-uid":"""#, "numeric uids"), (#""proxy-uid":",""#, "numeric uids"),
            (#""proxy-gid":"istio-proxy""#, "numeric gids"), (#""redirect-dns":true"#, "capture-all-dns"),
            (#""redirect-dns":"1""#, "capture-all-dns"),
            (#""redirect-dns":true,"capture-all-dns":false"#, "capture-all-dns"),
            (#""resolv-conf":"/etc/resolv.conf""#, "not a CNI setting"),
        ])
    func nodeLookups(keys: String, fragment: String) throws {
        let r = try request(configJSON(keys))
        expectCNIError(.invalidConfig, fragment) { _ = try PluginConfig(try #require(r.config)) }
    }

    @Test("numeric ids and capture-all-dns are what CNI mode takes instead")
    func nodeLookupsAccepted() throws {
        for keys in [
            #""proxy-uid":"1337","proxy-gid":"1337""#, #""proxy-uid":"1337,1338""#, #""proxy-gid":"""#,
            #""redirect-dns":true,"capture-all-dns":true"#, #""redirect-dns":false"#,
        ] {
            _ = try PluginConfig(try #require(try request(configJSON(keys)).config))
        }
    }

    static let results: [String: String] = [
        "0.2.0":
            #"{"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.5/24","gateway":"10.1.0.1","routes":[{"dst":"0.0.0.0/0"}]},"ip6":{"ip":"fd00::5/64"},"dns":{"nameservers":["10.96.0.10"]}}"#,
        "0.3.1":
            #"{"cniVersion":"0.3.1","interfaces":[{"name":"eth0","sandbox":"/run/netns/p"}],"ips":[{"version":"4","interface":0,"address":"10.1.0.5/24","gateway":"10.1.0.1"},{"version":"6","address":"fd00::5/64"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#,
        "0.4.0":
            #"{ "cniVersion": "0.4.0", "ips": [ {"version": "4", "address": "10.1.0.5/24"}, {"version":"6","address":"fd00::5/64"} ] }"#,
        "1.0.0":
            #"{ "cniVersion": "1.0.0", "interfaces": [{"name":"eth0"}], "ips": [ {"address": "10.1.0.5/24", "interface": 0}, {"address":"fd00::5/64"} ], "x": 1.50 }"#,
        "1.1.0":
            #"{"cniVersion":"1.1.0","ips":[{"address":"10.1.0.5/24"},{"address":"fd00::5/64"}],"routes":[{"dst":"0.0.0.0/0","mtu":1400}]}"#,
    ]

    @Test("ADD answers prevResult in the config's cniVersion: byte for byte when it is, converted when not")
    func prevResultVersions() throws {
        for target in CNIVersion.supported {
            for (source, text) in Self.results.sorted(by: { $0.key < $1.key }) {
                let r = try request(Self.config(target, "\"prevResult\":\(text)"))
                let out = try r.addResult()
                if source == target {
                    #expect(out == text + "\n", "\(source) → \(target)")
                    continue
                }
                let doc = try JSONParser.parse(out)
                #expect(doc["cniVersion"]?.string == target, "\(source) → \(target): \(out)")
                guard case .array(let ips)? = doc["ips"]?.kind else {
                    Issue.record("\(source) → \(target): no ips: \(out)")
                    continue
                }
                #expect(
                    ips.compactMap { $0["address"]?.string } == ["10.1.0.5/24", "fd00::5/64"], "\(source) → \(target)")
                // 0.4.0 results carry each IP's version; 1.x ones do not.
                let versions = ips.map { $0["version"]?.string }
                #expect(versions == (target == "0.4.0" ? ["4", "6"] : [nil, nil]), "\(source) → \(target): \(out)")
                if source != "0.2.0", case .object(let members) = try JSONParser.parse(text).kind {
                    // Every other member kept, in order.
                    #expect(
                        members.map(\.key).filter { $0 != "cniVersion" }
                            == (try JSONParser.parse(out)).objectKeys.filter { $0 != "cniVersion" },
                        "\(source) → \(target)")
                }
                if source == "0.2.0" { #expect(doc["routes"] != nil && doc["dns"] != nil, "\(out)") }
            }
            // 1.0.0 and 1.1.0 share a shape: only the version changes, every other byte kept.
            if target != "0.4.0" {
                let other = target == "1.0.0" ? "1.1.0" : "1.0.0"
                let text = try #require(Self.results[other])
                let out = try request(Self.config(target, "\"prevResult\":\(text)")).addResult()
                #expect(out == text.replacingOccurrences(of: "\"\(other)\"", with: "\"\(target)\"") + "\n")
            }
            // No cniVersion in the result (allowed before 1.0.0): the config's is added.
            let bare = try request(Self.config(target, #""prevResult":{"ips":[]}"#)).addResult()
            #expect(try JSONParser.parse(bare)["cniVersion"]?.string == target)
            #expect(
                try request(Self.config(target, #""prevResult":{}"#)).addResult() == "{\"cniVersion\":\"\(target)\"}\n")
            // null: no result.
            #expect(
                try request(Self.config(target, #""prevResult":null"#)).addResult()
                    == "{\"cniVersion\":\"\(target)\"}\n")
            // Unknown versions and broken results are refused, never echoed.
            for (prev, code) in [
                (#"{"cniVersion":"2.0.0"}"#, CNIErrorCode.incompatibleVersion),
                (#"{"cniVersion":"x"}"#, .incompatibleVersion),
                (#"{"cniVersion":1}"#, .invalidConfig), (#"{"cniVersion":"0.3.1","ips":{}}"#, .invalidConfig),
                (#"{"cniVersion":"0.3.1","ips":[1]}"#, .invalidConfig),
                (#"{"cniVersion":"0.2.0","ip4":{"ip":1}}"#, .invalidConfig),
            ] where !(target == "0.4.0" && prev.contains("0.3.1")) {
                expectCNIError(code, "prevResult") {
                    _ = try request(Self.config(target, "\"prevResult\":\(prev)")).addResult()
                }
            }
        }
        // 1.x → 0.4.0 needs each IP's address to tell its version.
        expectCNIError(.invalidConfig, "no address") {
            _ = try request(
                Self.config("0.4.0", #""prevResult":{"cniVersion":"1.0.0","ips":[{"gateway":"10.0.0.1"}]}"#)
            )
            .addResult()
        }
    }

    @Test("error messages stay short and details bounded, whatever value they name")
    func bounds() throws {
        let huge = String(repeating: "x", count: 100_000)
        let annotations = [PodAnnotation.status: "{}", "traffic.sidecar.istio.io/excludeOutboundPorts": huge]
        let r = try request(configJSON(annotations: annotations))
        let config = try PluginConfig(try #require(r.config))
        guard case .capture(let input) = try PodDecision.decide(r, config) else {
            Issue.record("skipped")
            return
        }
        do {
            _ = try ConfigResolver(system: NoSystem()).resolve(input)
            Issue.record("accepted")
        } catch {
            let cni = CNIError(error)
            let json = cni.json(cniVersion: "1.0.0")
            let printed = try JSONParser.parse(json)
            let msg = try #require(printed["msg"]?.string)
            #expect(msg.count <= CNIError.messageLimit, "\(msg.count)")
            #expect(msg.contains("traffic.sidecar.istio.io/excludeOutboundPorts"))
            #expect(msg.contains("100000 bytes"))
            #expect(json.utf8.count < 1000)
        }
        for (what, keys) in [
            ("unknown key", "\(JSONValue.string(huge).serialized):1"),
            ("bad backend", "\"backend\":\(JSONValue.string(huge).serialized)"),
            ("bad logFile", "\"logFile\":\(JSONValue.string(huge).serialized)"),
            (
                "annotation name",
                "\"runtimeConfig\":{\"io.kubernetes.cri.pod-annotations\":{\(JSONValue.string(huge).serialized):1}}"
            ),
        ] {
            let json = try #require(try request(Self.config("1.0.0", keys)).config)
            do {
                _ = try PluginConfig(json)
                Issue.record("\(what) accepted")
            } catch {
                #expect(error.json(cniVersion: "1.0.0").utf8.count < 600, "\(what)")
            }
        }
        var e = Self.environment("ADD")
        e["CNI_NETNS"] = "relative" + huge
        expectCNIError(.invalidEnvironment, "bytes") { _ = try request(configJSON(), e) }
        // A long message and long details: both cut when printed.
        let long = CNIError(
            .installFailed, String(repeating: "m", count: 5000), details: String(repeating: "d€", count: 5000))
        let printed = try JSONParser.parse(long.json(cniVersion: "1.1.0"))
        #expect(try #require(printed["msg"]?.string).count <= CNIError.messageLimit)
        #expect(try #require(printed["details"]?.string).utf8.count <= CNIError.detailsLimit)
    }
}

/// The CNI_* variables the plugin reads.
enum CNIPluginVariables {
    static let all = ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"]
}

extension JSONSpan {
    var objectKeys: [String] {
        guard case .object(let members) = kind else { return [] }
        return members.map(\.key)
    }
}
