/// Every input meshinit accepts: Istio's `istio-iptables` flags (same long and short
/// spellings, same environment variables and aliases, same defaults) plus meshinit's own.
///
/// Resolution order, as in Istio's `pkg/flag`: built-in default < environment variable <
/// alias environment variable < command line. Unlike Istio, a bad environment value is an
/// error, never silently dropped.
public enum IstioFlag: String, Sendable, Hashable, CaseIterable {
    case envoyPort = "envoy-port"
    case inboundCapturePort = "inbound-capture-port"
    case inboundTunnelPort = "inbound-tunnel-port"
    case proxyUID = "proxy-uid"
    case proxyGID = "proxy-gid"
    case interceptionMode = "istio-inbound-interception-mode"
    case inboundPorts = "istio-inbound-ports"
    case localExcludePorts = "istio-local-exclude-ports"
    case excludeInterfaces = "istio-exclude-interfaces"
    case serviceCIDR = "istio-service-cidr"
    case serviceExcludeCIDR = "istio-service-exclude-cidr"
    case outboundPorts = "istio-outbound-ports"
    case localOutboundPortsExclude = "istio-local-outbound-ports-exclude"
    case kubeVirtInterfaces = "kube-virt-interfaces"
    case tproxyMark = "istio-inbound-tproxy-mark"
    case tproxyRouteTable = "istio-inbound-tproxy-route-table"
    case dryRun = "dry-run"
    case iptablesProbePort = "iptables-probe-port"
    case probeTimeout = "probe-timeout"
    case skipRuleApply = "skip-rule-apply"
    case runValidation = "run-validation"
    case redirectDNS = "redirect-dns"
    case dropInvalid = "drop-invalid"
    case dualStack = "dual-stack"
    case captureAllDNS = "capture-all-dns"
    case networkNamespace = "network-namespace"
    case cniMode = "cni-mode"
    case reconcile = "reconcile"
    case cleanupOnly = "cleanup-only"
    case forceApply = "force-apply"
    case nativeNftables = "native-nftables"
    case forceIptablesBinary = "force-iptables-binary"
    case logOutputLevel = "log_output_level"
    case logAsJSON = "log_as_json"
    // meshinit's own
    case ipv6 = "ipv6"
    case resolvConf = "resolv-conf"

    /// The one-letter spelling, if Istio has one.
    public var short: Character? {
        switch self {
        case .envoyPort: "p"
        case .inboundCapturePort: "z"
        case .inboundTunnelPort: "e"
        case .proxyUID: "u"
        case .proxyGID: "g"
        case .interceptionMode: "m"
        case .inboundPorts: "b"
        case .localExcludePorts: "d"
        case .excludeInterfaces: "c"
        case .serviceCIDR: "i"
        case .serviceExcludeCIDR: "x"
        case .outboundPorts: "q"
        case .localOutboundPortsExclude: "o"
        case .kubeVirtInterfaces: "k"
        case .tproxyMark: "t"
        case .tproxyRouteTable: "r"
        case .dryRun: "n"
        default: nil
        }
    }

    /// The environment variable Istio reads for this flag (`-p` has none: `ENVOY_PORT` is
    /// only echoed in Istio's log, never read; the pilot-agent log flags have none).
    public var environment: String? {
        switch self {
        case .envoyPort, .logOutputLevel, .logAsJSON, .ipv6, .resolvConf: nil
        case .inboundCapturePort: "INBOUND_CAPTURE_PORT"
        case .inboundTunnelPort: "INBOUND_TUNNEL_PORT"
        case .proxyUID: "PROXY_UID"
        case .proxyGID: "PROXY_GID"
        case .interceptionMode: "ISTIO_INBOUND_INTERCEPTION_MODE"
        case .inboundPorts: "ISTIO_INBOUND_PORTS"
        case .localExcludePorts: "ISTIO_LOCAL_EXCLUDE_PORTS"
        case .excludeInterfaces: "ISTIO_EXCLUDE_INTERFACES"
        case .serviceCIDR: "ISTIO_SERVICE_CIDR"
        case .serviceExcludeCIDR: "ISTIO_SERVICE_EXCLUDE_CIDR"
        case .outboundPorts: "ISTIO_OUTBOUND_PORTS"
        case .localOutboundPortsExclude: "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE"
        case .kubeVirtInterfaces: "KUBE_VIRT_INTERFACES"
        case .tproxyMark: "ISTIO_INBOUND_TPROXY_MARK"
        case .tproxyRouteTable: "ISTIO_INBOUND_TPROXY_ROUTE_TABLE"
        case .dryRun: "DRY_RUN"
        case .iptablesProbePort: "IPTABLES_PROBE_PORT"
        case .probeTimeout: "PROBE_TIMEOUT"
        case .skipRuleApply: "SKIP_RULE_APPLY"
        case .runValidation: "RUN_VALIDATION"
        case .redirectDNS: "REDIRECT_DNS"
        case .dropInvalid: "DROP_INVALID"
        case .dualStack: "DUAL_STACK"
        case .captureAllDNS: "CAPTURE_ALL_DNS"
        case .networkNamespace: "NETWORK_NAMESPACE"
        case .cniMode: "CNI_MODE"
        case .reconcile: "RECONCILE"
        case .cleanupOnly: "CLEANUP_ONLY"
        case .forceApply: "FORCE_APPLY"
        case .nativeNftables: "NATIVE_NFTABLES"
        case .forceIptablesBinary: "FORCE_IPTABLES_BINARY"
        }
    }

    /// The alias variable that wins over `environment` (Istio's "additional" env names).
    public var aliasEnvironment: String? {
        switch self {
        case .redirectDNS: "ISTIO_META_DNS_CAPTURE"
        case .dropInvalid: "INVALID_DROP"
        case .dualStack: "ISTIO_DUAL_STACK"
        default: nil
        }
    }

    /// Whether the flag is a boolean switch (`--x`, `--x=true|false`).
    public var isBoolean: Bool {
        switch self {
        case .dryRun, .skipRuleApply, .runValidation, .redirectDNS, .dropInvalid, .dualStack,
            .captureAllDNS, .cniMode, .reconcile, .cleanupOnly, .forceApply, .nativeNftables, .logAsJSON:
            true
        default: false
        }
    }

    /// Istio's default, as text.
    public var defaultValue: String {
        switch self {
        case .envoyPort: "15001"
        case .inboundCapturePort: "15006"
        case .inboundTunnelPort: "15008"
        case .tproxyMark: "1337"
        case .tproxyRouteTable: "133"
        case .iptablesProbePort: "15002"
        case .probeTimeout: "5s"
        case .logOutputLevel: "default:info"
        case .ipv6: "auto"
        case .resolvConf: "/etc/resolv.conf"
        default: isBoolean ? "false" : ""
        }
    }

    /// How the flag is named in messages: `-p/--envoy-port`.
    public var displayName: String {
        if let short { return "-\(short)/--\(rawValue)" }
        return "--\(rawValue)"
    }

    /// Looks a flag up by its long name.
    public init?(long: Substring) {
        self.init(rawValue: String(long))
    }

    public init?(long: String) { self.init(rawValue: long) }

    /// Looks a flag up by its one-letter name.
    public init?(short: Character) {
        guard let flag = IstioFlag.allCases.first(where: { $0.short == short }) else { return nil }
        self = flag
    }
}

/// Environment-only knobs (no flag), as in Istio.
public enum EnvironmentKnob: String, Sendable, CaseIterable {
    case ownerGroups = "ISTIO_OUTBOUND_OWNER_GROUPS"
    case ownerGroupsExclude = "ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE"
    case ipv4LoopbackCIDR = "ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR"
    case envoyUser = "ENVOY_USER"

    public var defaultValue: String {
        switch self {
        case .ownerGroups: "*"
        case .ownerGroupsExclude: ""
        case .ipv4LoopbackCIDR: "127.0.0.1/32"
        case .envoyUser: "istio-proxy"
        }
    }
}
