import MeshConfig
import MeshModel

/// meshinit's keys in a CNI network configuration: the capture settings as Istio's flag names
/// (defaults: Istio's injected arguments), plus the plugin's own.
///
/// ```json
/// { "type": "meshinit", "backend": "auto", "excludeNamespaces": ["kube-system"],
///   "istio-service-exclude-cidr": "10.96.0.1/32", "redirect-dns": true,
///   "capabilities": { "io.kubernetes.cri.pod-annotations": true } }
/// ```
public struct PluginConfig: Sendable {
    /// How rules are installed.
    public enum Backend: String, Sendable, Hashable, CaseIterable {
        /// The netlink backend (no binary, no xtables lock).
        case auto
        case nftables
        case iptables
    }

    /// Capture settings from config keys, by flag.
    public var flags: FlagMap<ConfigInput.Value> = [:]
    public var excludeNamespaces: [String] = []
    public var backend: Backend = .auto
    /// Act only on pods with a `sidecar.istio.io/status` annotation (as istio-cni does). While
    /// true, a runtime that passes no annotation map at all fails ADD (it cannot tell which
    /// pods have a sidecar); false: every pod not excluded is captured, annotations or not.
    public var requireAnnotation = true
    /// Where the one-line-per-call log goes (default: stderr).
    public var logFile: String?
    /// The pod's annotations (`runtimeConfig["io.kubernetes.cri.pod-annotations"]`; `null`
    /// there is an empty map, as containerd passes for a pod without annotations).
    public var annotations: [String: String] = [:]
    /// Whether the runtime passed the annotation map at all (false: the key is missing from
    /// `runtimeConfig`, i.e. the runtime does not honour the capability).
    public var annotationsPassed = false

    /// Istio's injected `istio-init` arguments: the defaults of the capture keys.
    public static let injectedDefaults: FlagMap<String> = [
        .envoyPort: "15001", .inboundCapturePort: "15006", .proxyUID: "1337", .interceptionMode: "REDIRECT",
        .serviceCIDR: "*", .serviceExcludeCIDR: "", .inboundPorts: "*", .localExcludePorts: "15090,15021,15020",
    ]

    /// Flags that are capture settings (config keys); the run-mode flags (dry-run, cleanup,
    /// validation, backend choice, logging, namespace) are not: the plugin decides those.
    /// Nor is `resolv-conf`: the plugin runs on the node, which is not where the pod's
    /// resolv.conf is (and the runtime writes that file after the network is set up).
    public static let settingFlags: [IstioFlag] = [
        .envoyPort, .inboundCapturePort, .inboundTunnelPort, .proxyUID, .proxyGID, .interceptionMode, .inboundPorts,
        .localExcludePorts, .excludeInterfaces, .serviceCIDR, .serviceExcludeCIDR, .outboundPorts,
        .localOutboundPortsExclude, .kubeVirtInterfaces, .tproxyMark, .tproxyRouteTable, .redirectDNS, .dropInvalid,
        .dualStack, .captureAllDNS, .ipv6,
    ]

    /// Keys every CNI network configuration may carry (set by the spec or the runtime).
    static let standardKeys: Set<String> = [
        "cniVersion", "name", "type", "capabilities", "runtimeConfig", "prevResult", "args", "dns",
        "cni.dev/valid-attachments",
    ]

    static let annotationsCapability = "io.kubernetes.cri.pod-annotations"

    /// Reads our keys from `config`, strictly: every key known, every value of its type.
    ///
    /// - Throws: `CNIError` 7 naming a key with a bad value, or an unknown key (a typo must
    ///   not silently drop a setting), or a setting CNI mode cannot honour (see
    ///   `checkNodeLookups`).
    public init(_ config: JSONSpan) throws(CNIError) {
        guard case .object(let members) = config.kind else {
            throw CNIError(.invalidConfig, "the network configuration is not an object")
        }
        let flagKeys = Dictionary(Self.settingFlags.map { ($0.long, $0) }, uniquingKeysWith: { a, _ in a })
        for (key, value) in members {
            if Self.standardKeys.contains(key) {
                try Self.checkStandard(key, value)
                continue
            }
            if let flag = flagKeys[key] {
                flags[flag] = ConfigInput.Value(
                    try Self.text(value, key: key, boolean: flag.isBoolean), .configKey(key))
                continue
            }
            switch key {
            case "excludeNamespaces":
                guard case .array(let items) = value.kind, let names = Optional(items.compactMap(\.string)),
                    names.count == items.count
                else {
                    throw CNIError(
                        .invalidConfig,
                        "invalid value for config key \"excludeNamespaces\": expected an array of strings, not \(value.typeName)"
                    )
                }
                excludeNamespaces = names
            case "backend":
                guard let text = value.string, let parsed = Backend(rawValue: text) else {
                    throw CNIError(
                        .invalidConfig,
                        "invalid value \(value.string.map { brief($0) } ?? value.typeName) for config key \"backend\": expected auto, nftables or iptables"
                    )
                }
                backend = parsed
            case "requireAnnotation":
                guard case .bool(let flag) = value.kind else {
                    throw CNIError(
                        .invalidConfig,
                        "invalid value for config key \"requireAnnotation\": expected true or false, not \(value.typeName)"
                    )
                }
                requireAnnotation = flag
            case "logFile":
                guard let path = value.string, Self.isLogPath(path) else {
                    throw CNIError(
                        .invalidConfig,
                        "invalid value \(value.string.map { brief($0) } ?? value.typeName) for config key \"logFile\": expected an absolute file path"
                    )
                }
                logFile = path
            default:
                if key == IstioFlag.resolvConf.long {
                    throw CNIError(
                        .invalidConfig, "config key \"resolv-conf\" is not a CNI setting",
                        details:
                            "the plugin runs on the node, where the pod's resolv.conf is not; use \"capture-all-dns\": true with \"redirect-dns\""
                    )
                }
                if let flag = IstioFlag(long: key) {
                    throw CNIError(
                        .invalidConfig, "config key \(brief(key)) is not a capture setting",
                        details: "\(flag.displayName) is decided by the plugin, not configured")
                }
                throw CNIError(.invalidConfig, "unknown config key \(brief(key))")
            }
        }
        try checkNodeLookups()
        // Annotations arrive only through the declared capability.
        switch config["runtimeConfig"]?[Self.annotationsCapability] {
        case nil:
            annotationsPassed = false
        case let annotations? where annotations.isNull:
            annotationsPassed = true
        case let annotations?:
            guard case .object(let entries) = annotations.kind else {
                throw CNIError(
                    .invalidConfig,
                    "runtimeConfig \(quoted(Self.annotationsCapability)) is \(annotations.typeName), not an object")
            }
            annotationsPassed = true
            for (name, value) in entries {
                guard let text = value.string else {
                    throw CNIError(.invalidConfig, "annotation \(brief(name)) is \(value.typeName), not a string")
                }
                self.annotations[name] = text
            }
        }
    }

    /// The keys set by the spec or the runtime: each of its type (`null` stands for absent,
    /// as a Go runtime may write it).
    static func checkStandard(_ key: String, _ value: JSONSpan) throws(CNIError) {
        if value.isNull { return }
        switch key {
        case "type":
            guard value.string != nil else {
                throw CNIError(.invalidConfig, "\"type\" is \(value.typeName), not a string")
            }
        case "capabilities":
            guard case .object(let entries) = value.kind else {
                throw CNIError(.invalidConfig, "\"capabilities\" is \(value.typeName), not an object")
            }
            for (name, flag) in entries {
                guard case .bool = flag.kind else {
                    throw CNIError(.invalidConfig, "capability \(brief(name)) is \(flag.typeName), not true or false")
                }
            }
        case "runtimeConfig", "args", "dns", "prevResult":
            guard case .object = value.kind else {
                throw CNIError(.invalidConfig, "\(quoted(key)) is \(value.typeName), not an object")
            }
        case "cni.dev/valid-attachments":
            guard case .array(let items) = value.kind else {
                throw CNIError(.invalidConfig, "\"cni.dev/valid-attachments\" is \(value.typeName), not an array")
            }
            for (i, item) in items.enumerated() {
                guard case .object = item.kind, item["containerID"]?.string != nil, item["ifname"]?.string != nil
                else {
                    throw CNIError(
                        .invalidConfig,
                        "cni.dev/valid-attachments[\(i)] is not an object with string containerID and ifname")
                }
            }
        default:
            break  // cniVersion and name: checked with the request
        }
    }

    /// What the plugin would have to look up on the node, where the answer is the node's and
    /// not the pod's: a user or group *name* (the node's /etc/passwd and /etc/group; the
    /// pod's image may not even have the user), an empty proxy uid (the node's `istio-proxy`),
    /// and the DNS servers for `redirect-dns` without `capture-all-dns` (the node's
    /// /etc/resolv.conf). Refused: numeric ids and `capture-all-dns` mean the same in every
    /// namespace.
    func checkNodeLookups() throws(CNIError) {
        for flag in [IstioFlag.proxyUID, .proxyGID] {
            guard let value = flags[flag] else { continue }
            let items = splitList(value.text)
            if flag == .proxyUID, items.isEmpty {
                throw CNIError(
                    .invalidConfig,
                    "invalid value \(brief(value.text)) for config key \(quoted(flag.long)): expected numeric uids",
                    details: "an empty proxy uid means the node's istio-proxy user, not the pod's")
            }
            for item in items where !item.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
                throw CNIError(
                    .invalidConfig,
                    "invalid value \(brief(String(item))) for config key \(quoted(flag.long)): expected numeric \(flag == .proxyUID ? "uids" : "gids")",
                    details:
                        "a name would resolve against the node's /etc/\(flag == .proxyUID ? "passwd" : "group"), not the pod's"
                )
            }
        }
        if let redirect = flags[.redirectDNS], parseGoBool(redirect.text) == true,
            parseGoBool(flags[.captureAllDNS]?.text ?? "false") != true
        {
            throw CNIError(
                .invalidConfig, "config key \"redirect-dns\" needs \"capture-all-dns\": true in CNI mode",
                details:
                    "without it the DNS servers to capture come from /etc/resolv.conf, which the plugin would read on the node, not in the pod"
            )
        }
    }

    /// An absolute path to a file: no NUL, not a directory name, at most PATH_MAX.
    static func isLogPath(_ path: String) -> Bool {
        path.utf8.first == UInt8(ascii: "/") && path.utf8.last != UInt8(ascii: "/") && !path.utf8.contains(0)
            && path.utf8.count < 4096
    }

    /// The `logFile` of a configuration that may be invalid otherwise (so that an error about
    /// it is still logged where the node's operator looks), or nil.
    public static func logFile(of config: JSONSpan?) -> String? {
        guard let path = config?["logFile"]?.string, isLogPath(path) else { return nil }
        return path
    }

    /// A key's value as flag text: a string as is, a number as written, a boolean for a
    /// boolean flag, an array of those joined with commas (a list flag).
    static func text(_ value: JSONSpan, key: String, boolean: Bool) throws(CNIError) -> String {
        switch value.kind {
        case .string(let s): return s
        case .number(let n) where !boolean: return n
        case .bool(let b) where boolean: return b ? "true" : "false"
        case .array(let items) where !boolean:
            var parts: [String] = []
            for item in items {
                switch item.kind {
                case .string(let s): parts.append(s)
                case .number(let n): parts.append(n)
                default:
                    throw CNIError(
                        .invalidConfig,
                        "invalid value for config key \(quoted(key)): expected strings or numbers in the list, not \(item.typeName)"
                    )
                }
            }
            return parts.joined(separator: ",")
        default:
            throw CNIError(
                .invalidConfig,
                "invalid value for config key \(quoted(key)): expected \(boolean ? "true or false" : "a string, number or list"), not \(value.typeName)"
            )
        }
    }
}

/// Istio's pod annotations that change the capture (istio-cni reads the same ones).
public enum PodAnnotation {
    public static let inject = "sidecar.istio.io/inject"
    public static let status = "sidecar.istio.io/status"

    /// Annotation → the flag it sets. The deprecated `kubevirtInterfaces` is read only when
    /// `istio.io/reroute-virtual-interfaces` is absent.
    public static let flags: [(annotation: String, flag: IstioFlag)] = [
        ("sidecar.istio.io/interceptionMode", .interceptionMode),
        ("traffic.sidecar.istio.io/includeOutboundIPRanges", .serviceCIDR),
        ("traffic.sidecar.istio.io/excludeOutboundIPRanges", .serviceExcludeCIDR),
        ("traffic.sidecar.istio.io/includeInboundPorts", .inboundPorts),
        ("traffic.sidecar.istio.io/excludeInboundPorts", .localExcludePorts),
        ("traffic.sidecar.istio.io/includeOutboundPorts", .outboundPorts),
        ("traffic.sidecar.istio.io/excludeOutboundPorts", .localOutboundPortsExclude),
        ("traffic.sidecar.istio.io/excludeInterfaces", .excludeInterfaces),
        ("istio.io/reroute-virtual-interfaces", .kubeVirtInterfaces),
        ("traffic.sidecar.istio.io/kubevirtInterfaces", .kubeVirtInterfaces),
    ]

    /// Inbound ports never captured, whatever the annotations say (istio-cni adds them).
    public static let alwaysExcludedInbound = ["15020", "15021", "15090"]
}

/// What the plugin does for a pod.
public enum PodDecision: Sendable {
    /// Nothing: the reason, for the log.
    case skip(String)
    /// Install the capture these values resolve to.
    case capture(ConfigInput)

    /// Istio's rules for acting on a pod (istio-cni's), and the values it gets: Istio's
    /// injected defaults < config keys < annotations, with 15020,15021,15090 always excluded
    /// inbound.
    ///
    /// - Throws: `CNIError` 7 when the runtime passed no annotation map while
    ///   `requireAnnotation` is on: whether the pod has a sidecar cannot be known, and
    ///   guessing "no" would start every sidecar pod uncaptured.
    public static func decide(_ request: CNIRequest, _ config: PluginConfig) throws(CNIError) -> PodDecision {
        if let namespace = request.podNamespace, config.excludeNamespaces.contains(namespace) {
            return .skip("namespace \(namespace) is excluded")
        }
        if !config.annotationsPassed && config.requireAnnotation {
            throw CNIError(
                .invalidConfig,
                "the runtime passed no pod annotations (capability \"\(PluginConfig.annotationsCapability)\")",
                details:
                    "runtimeConfig has no \"\(PluginConfig.annotationsCapability)\": declare it in \"capabilities\" and use a runtime that honours it (containerd, CRI-O), or set \"requireAnnotation\": false to capture every pod"
            )
        }
        if let reason = skipReason(annotations: config.annotations, config) { return .skip(reason) }
        return .capture(input(config))
    }

    /// Why a pod with these annotations gets no capture, or nil when it gets one.
    public static func skipReason(annotations: [String: String], _ config: PluginConfig) -> String? {
        if annotations[PodAnnotation.inject]?.lowercased() == "false" {
            return "\(PodAnnotation.inject) is false"
        }
        if config.requireAnnotation, annotations[PodAnnotation.status] == nil {
            return "no \(PodAnnotation.status) annotation (no sidecar)"
        }
        if annotations["sidecar.istio.io/interceptionMode"] == "NONE" {
            return "sidecar.istio.io/interceptionMode is NONE"
        }
        return nil
    }

    /// The values for a pod with these annotations (the ConfigInput the resolver takes).
    public static func input(_ config: PluginConfig) -> ConfigInput {
        var defaults: ConfigInput.Layer = [:]
        for (flag, text) in PluginConfig.injectedDefaults {
            defaults[flag] = ConfigInput.Value(text, .pluginDefault(flag))
        }
        var annotated: ConfigInput.Layer = [:]
        for (annotation, flag) in PodAnnotation.flags.reversed() {
            // Reversed: the first name listed for a flag wins.
            if let text = config.annotations[annotation] {
                annotated[flag] = ConfigInput.Value(text, .annotation(annotation))
            }
        }
        var layers = [defaults, config.flags, annotated]
        // 15020, 15021, 15090 are always excluded inbound: added to whichever value wins.
        let winner = layers.last { $0[.localExcludePorts] != nil }?[.localExcludePorts]
        let ports = winner.map { splitList($0.text).map(String.init) } ?? []
        let missing = PodAnnotation.alwaysExcludedInbound.filter { !ports.contains($0) }
        if !missing.isEmpty {
            let text = (ports + missing).joined(separator: ",")
            layers.append([
                .localExcludePorts: ConfigInput.Value(text, winner?.source ?? .pluginDefault(.localExcludePorts))
            ])
        }
        return ConfigInput(layers: layers)
    }
}
