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
    public var flags: [IstioFlag: ConfigInput.Value] = [:]
    public var excludeNamespaces: [String] = []
    public var backend: Backend = .auto
    /// Act only on pods with a `sidecar.istio.io/status` annotation (as istio-cni does).
    public var requireAnnotation = true
    /// Where the one-line-per-call log goes (default: stderr).
    public var logFile: String?
    /// The pod's annotations (`runtimeConfig["io.kubernetes.cri.pod-annotations"]`).
    public var annotations: [String: String] = [:]

    /// Istio's injected `istio-init` arguments: the defaults of the capture keys.
    public static let injectedDefaults: [IstioFlag: String] = [
        .envoyPort: "15001", .inboundCapturePort: "15006", .proxyUID: "1337", .interceptionMode: "REDIRECT",
        .serviceCIDR: "*", .serviceExcludeCIDR: "", .inboundPorts: "*", .localExcludePorts: "15090,15021,15020",
    ]

    /// Flags that are capture settings (config keys); the run-mode flags (dry-run, cleanup,
    /// validation, backend choice, logging, namespace) are not: the plugin decides those.
    public static let settingFlags: [IstioFlag] = [
        .envoyPort, .inboundCapturePort, .inboundTunnelPort, .proxyUID, .proxyGID, .interceptionMode, .inboundPorts,
        .localExcludePorts, .excludeInterfaces, .serviceCIDR, .serviceExcludeCIDR, .outboundPorts,
        .localOutboundPortsExclude, .kubeVirtInterfaces, .tproxyMark, .tproxyRouteTable, .redirectDNS, .dropInvalid,
        .dualStack, .captureAllDNS, .ipv6, .resolvConf,
    ]

    /// Keys every CNI network configuration may carry.
    static let standardKeys: Set<String> = [
        "cniVersion", "name", "type", "capabilities", "runtimeConfig", "prevResult", "args", "dns",
    ]

    static let annotationsCapability = "io.kubernetes.cri.pod-annotations"

    /// Reads our keys from `config`.
    ///
    /// - Throws: `CNIError` 7 naming a key with a bad value, or an unknown key (a typo must
    ///   not silently drop a setting).
    public init(_ config: JSONSpan) throws(CNIError) {
        guard case .object(let members) = config.kind else {
            throw CNIError(.invalidConfig, "the network configuration is not an object")
        }
        let flagKeys = Dictionary(Self.settingFlags.map { ($0.long, $0) }, uniquingKeysWith: { a, _ in a })
        for (key, value) in members {
            if Self.standardKeys.contains(key) { continue }
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
                        "invalid value for config key \"excludeNamespaces\": expected an array of strings")
                }
                excludeNamespaces = names
            case "backend":
                guard let text = value.string, let parsed = Backend(rawValue: text) else {
                    throw CNIError(
                        .invalidConfig, "invalid value for config key \"backend\": expected auto, nftables or iptables")
                }
                backend = parsed
            case "requireAnnotation":
                guard case .bool(let flag) = value.kind else {
                    throw CNIError(
                        .invalidConfig, "invalid value for config key \"requireAnnotation\": expected true or false")
                }
                requireAnnotation = flag
            case "logFile":
                guard let path = value.string, path.utf8.first == UInt8(ascii: "/") else {
                    throw CNIError(
                        .invalidConfig, "invalid value for config key \"logFile\": expected an absolute path")
                }
                logFile = path
            default:
                if let flag = IstioFlag(long: key) {
                    throw CNIError(
                        .invalidConfig, "config key \(quoted(key)) is not a capture setting",
                        details: "\(flag.displayName) is decided by the plugin, not configured")
                }
                throw CNIError(.invalidConfig, "unknown config key \(quoted(key))")
            }
        }
        // Annotations arrive only through the declared capability.
        if let annotations = config["runtimeConfig"]?[Self.annotationsCapability] {
            guard case .object(let entries) = annotations.kind else {
                throw CNIError(.invalidConfig, "runtimeConfig \(quoted(Self.annotationsCapability)) is not an object")
            }
            for (name, value) in entries {
                guard let text = value.string else {
                    throw CNIError(.invalidConfig, "annotation \(name) is not a string")
                }
                self.annotations[name] = text
            }
        }
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
                        .invalidConfig, "invalid value for config key \(quoted(key)): expected strings or numbers")
                }
            }
            return parts.joined(separator: ",")
        default:
            throw CNIError(
                .invalidConfig,
                "invalid value for config key \(quoted(key)): expected \(boolean ? "true or false" : "a string, number or list")"
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
    public static func decide(_ request: CNIRequest, _ config: PluginConfig) -> PodDecision {
        if request.netns.isEmpty { return .skip("no network namespace (host network)") }
        if let namespace = request.podNamespace, config.excludeNamespaces.contains(namespace) {
            return .skip("namespace \(namespace) is excluded")
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
