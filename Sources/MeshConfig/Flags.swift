/// Every input meshinit accepts: Istio's `istio-iptables` flags (same long and short
/// spellings, same environment variables and aliases, same defaults) plus meshinit's own.
///
/// `IstioFlag` names a flag; `IstioFlag.table` is the one declaration of everything about
/// it — spellings, environment variables, default, help. The argv parser, the environment
/// reader, the resolver's messages and the CLI's help text are all derived from the table.
///
/// Resolution order, as in Istio's `pkg/flag`: built-in default < environment variable <
/// alias environment variable < command line. Unlike Istio, a bad environment value is an
/// error, never silently dropped.
public enum IstioFlag: Int, Sendable, Hashable, CaseIterable {
    case envoyPort, inboundCapturePort, inboundTunnelPort, proxyUID, proxyGID, interceptionMode
    case inboundPorts, localExcludePorts, excludeInterfaces, serviceCIDR, serviceExcludeCIDR
    case outboundPorts, localOutboundPortsExclude, kubeVirtInterfaces, tproxyMark, tproxyRouteTable
    case dryRun, iptablesProbePort, probeTimeout, skipRuleApply, runValidation, redirectDNS
    case dropInvalid, dualStack, captureAllDNS, networkNamespace, cniMode, reconcile, cleanupOnly
    case forceApply, nativeNftables, forceIptablesBinary, logOutputLevel, logAsJSON
    // meshinit's own
    case ipv6, resolvConf, childTimeout

    /// How many flags there are (`allCases` builds an array at every use).
    public static let caseCount = allCases.count
}

/// Everything about one flag.
public struct FlagSpec: Sendable, Hashable {
    /// What follows the flag.
    public enum Value: Sendable, Hashable {
        /// A switch: `--x`, `--x=true|false`, `--no-x`.
        case boolean
        /// A value, named in the help (`<port>`, `<cidrs>`).
        case text(String)
    }

    public let flag: IstioFlag
    /// The one-letter spelling, if Istio has one.
    public let short: Character?
    /// The long spelling, without `--`.
    public let long: String
    /// The environment variable Istio reads for it, if any.
    public let environment: String?
    /// Istio's "additional" variable, which wins over `environment`.
    public let aliasEnvironment: String?
    public let value: Value
    /// Istio's default, as text.
    public let defaultValue: String
    public let help: String
    /// meshinit's own flag (not Istio's).
    public let meshinitOwn: Bool

    init(
        _ flag: IstioFlag, _ short: Character?, _ long: String, env: String? = nil, alias: String? = nil,
        _ value: Value, default defaultValue: String? = nil, own: Bool = false, _ help: String
    ) {
        self.flag = flag
        self.short = short
        self.long = long
        self.environment = env
        self.aliasEnvironment = alias
        self.value = value
        self.defaultValue = defaultValue ?? (value == .boolean ? "false" : "")
        self.help = help
        self.meshinitOwn = own
    }
}

extension IstioFlag {
    /// The table: one entry per flag, in the order the help lists them.
    public static let table: [FlagSpec] = [
        // `-p` has no environment variable: Istio's `ENVOY_PORT` is only echoed in its log.
        FlagSpec(.envoyPort, "p", "envoy-port", .text("port"), default: "15001", "Outbound capture port."),
        FlagSpec(
            .inboundCapturePort, "z", "inbound-capture-port", env: "INBOUND_CAPTURE_PORT", .text("port"),
            default: "15006", "Inbound capture port."),
        FlagSpec(
            .inboundTunnelPort, "e", "inbound-tunnel-port", env: "INBOUND_TUNNEL_PORT", .text("port"),
            default: "15008", "HBONE tunnel port, never captured inbound."),
        FlagSpec(
            .proxyUID, "u", "proxy-uid", env: "PROXY_UID", .text("uids"),
            "Proxy uids or user names, comma separated (empty: the uid of $ENVOY_USER, else 1337)."),
        FlagSpec(
            .proxyGID, "g", "proxy-gid", env: "PROXY_GID", .text("gids"),
            "Proxy gids or group names, comma separated (empty: the uid list)."),
        FlagSpec(
            .interceptionMode, "m", "istio-inbound-interception-mode", env: "ISTIO_INBOUND_INTERCEPTION_MODE",
            .text("mode"), "Inbound interception: REDIRECT, TPROXY or NONE (NONE and empty behave as REDIRECT)."),
        FlagSpec(
            .inboundPorts, "b", "istio-inbound-ports", env: "ISTIO_INBOUND_PORTS", .text("ports"),
            "Inbound ports to capture: '*', a list (80,8000-8010) or empty (no inbound capture)."),
        FlagSpec(
            .localExcludePorts, "d", "istio-local-exclude-ports", env: "ISTIO_LOCAL_EXCLUDE_PORTS", .text("ports"),
            "Inbound ports not captured when -b is '*'."),
        FlagSpec(
            .excludeInterfaces, "c", "istio-exclude-interfaces", env: "ISTIO_EXCLUDE_INTERFACES", .text("interfaces"),
            "Interfaces never captured (a trailing + is a prefix: veth+)."),
        FlagSpec(
            .serviceCIDR, "i", "istio-service-cidr", env: "ISTIO_SERVICE_CIDR", .text("cidrs"),
            "Outbound destinations to capture: '*', CIDRs, or empty (none by address)."),
        FlagSpec(
            .serviceExcludeCIDR, "x", "istio-service-exclude-cidr", env: "ISTIO_SERVICE_EXCLUDE_CIDR", .text("cidrs"),
            "Outbound destinations never captured."),
        FlagSpec(
            .outboundPorts, "q", "istio-outbound-ports", env: "ISTIO_OUTBOUND_PORTS", .text("ports"),
            "Outbound ports always captured."),
        FlagSpec(
            .localOutboundPortsExclude, "o", "istio-local-outbound-ports-exclude",
            env: "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE", .text("ports"), "Outbound ports never captured (TCP and UDP)."),
        FlagSpec(
            .kubeVirtInterfaces, "k", "kube-virt-interfaces", env: "KUBE_VIRT_INTERFACES", .text("interfaces"),
            "KubeVirt interfaces: their traffic is not inbound, and is redirected outbound."),
        FlagSpec(
            .tproxyMark, "t", "istio-inbound-tproxy-mark", env: "ISTIO_INBOUND_TPROXY_MARK", .text("mark"),
            default: "1337", "TPROXY packet mark."),
        FlagSpec(
            .tproxyRouteTable, "r", "istio-inbound-tproxy-route-table", env: "ISTIO_INBOUND_TPROXY_ROUTE_TABLE",
            .text("table"), default: "133", "TPROXY policy-routing table."),
        FlagSpec(
            .dryRun, "n", "dry-run", env: "DRY_RUN", .boolean,
            "Print the rules (or, with --cleanup-only, what would be removed); change nothing."),
        FlagSpec(
            .iptablesProbePort, nil, "iptables-probe-port", env: "IPTABLES_PROBE_PORT", .text("port"),
            default: "15002", "Validation probe port."),
        FlagSpec(
            .probeTimeout, nil, "probe-timeout", env: "PROBE_TIMEOUT", .text("duration"), default: "5s",
            "Validation timeout (Go duration: 5s, 500ms)."),
        FlagSpec(
            .skipRuleApply, nil, "skip-rule-apply", env: "SKIP_RULE_APPLY", .boolean,
            "Install nothing (with --run-validation)."),
        FlagSpec(
            .runValidation, nil, "run-validation", env: "RUN_VALIDATION", .boolean,
            "Probe that connections are redirected; failure exits 126."),
        FlagSpec(
            .redirectDNS, nil, "redirect-dns", env: "REDIRECT_DNS", alias: "ISTIO_META_DNS_CAPTURE", .boolean,
            "Capture DNS to 15053."),
        FlagSpec(
            .dropInvalid, nil, "drop-invalid", env: "DROP_INVALID", alias: "INVALID_DROP", .boolean,
            "Drop conntrack-INVALID packets."),
        FlagSpec(
            .dualStack, nil, "dual-stack", env: "DUAL_STACK", alias: "ISTIO_DUAL_STACK", .boolean,
            "IPv6 on when any IPv6 address exists (with --ipv6=auto)."),
        FlagSpec(
            .captureAllDNS, nil, "capture-all-dns", env: "CAPTURE_ALL_DNS", .boolean,
            "Capture all port-53 traffic, not just to resolv.conf's servers."),
        FlagSpec(
            .networkNamespace, nil, "network-namespace", env: "NETWORK_NAMESPACE", .text("path"),
            "Network namespace to act in, e.g. /var/run/netns/pod."),
        FlagSpec(.cniMode, nil, "cni-mode", env: "CNI_MODE", .boolean, "Istio CNI mode (accepted)."),
        FlagSpec(
            .reconcile, nil, "reconcile", env: "RECONCILE", .boolean, "Accepted: re-runs always converge."),
        FlagSpec(
            .cleanupOnly, nil, "cleanup-only", env: "CLEANUP_ONLY", .boolean,
            "Remove every rule and route of ours instead of installing."),
        FlagSpec(
            .forceApply, nil, "force-apply", env: "FORCE_APPLY", .boolean, "Accepted: re-runs always converge."),
        FlagSpec(
            .nativeNftables, nil, "native-nftables", env: "NATIVE_NFTABLES", .boolean,
            "Use the nftables netlink backend (no binary needed)."),
        FlagSpec(
            .forceIptablesBinary, nil, "force-iptables-binary", env: "FORCE_IPTABLES_BINARY", .text("variant"),
            "legacy or nft: skip iptables variant detection."),
        FlagSpec(
            .logOutputLevel, nil, "log_output_level", .text("levels"), default: "default:info",
            "Log level, Istio syntax (scope:level,…)."),
        FlagSpec(.logAsJSON, nil, "log_as_json", .boolean, "Log JSON lines."),
        FlagSpec(
            .ipv6, nil, "ipv6", .text("auto|on|off"), default: "auto", own: true,
            "IPv6 rules: auto (Istio's guess from addresses), on or off."),
        FlagSpec(
            .resolvConf, nil, "resolv-conf", .text("path"), default: "/etc/resolv.conf", own: true,
            "resolv.conf to read DNS servers from (for --redirect-dns)."),
        FlagSpec(
            .childTimeout, nil, "child-timeout", env: "MESHINIT_CHILD_TIMEOUT", .text("duration"), default: "30s",
            own: true,
            "Deadline of each iptables-save/-restore run (Go duration); past it the child is killed, what it may have committed rolled back, exit 124."
        ),
    ]

    // Lookups are array indexing and linear scans of the ~40 entries, not Dictionaries: a
    // Dictionary or Set keyed by a type makes the Swift runtime look up that key type's
    // Hashable conformance the first time (a scan of every conformance record of the binary),
    // which cost more than the whole parse on the install path (issue 20).
    private static let byFlag: [FlagSpec] = {
        var specs = [FlagSpec?](repeating: nil, count: IstioFlag.caseCount)
        for spec in table where specs[spec.flag.rawValue] == nil { specs[spec.flag.rawValue] = spec }
        return specs.map { $0! }
    }()

    /// This flag's entry of the table.
    public var spec: FlagSpec { Self.byFlag[rawValue] }

    public var short: Character? { spec.short }
    public var long: String { spec.long }
    public var environment: String? { spec.environment }
    public var aliasEnvironment: String? { spec.aliasEnvironment }
    public var isBoolean: Bool { spec.value == .boolean }
    public var defaultValue: String { spec.defaultValue }

    /// How the flag is named in messages: `-p/--envoy-port`.
    public var displayName: String {
        if let short { return "-\(short)/--\(long)" }
        return "--\(long)"
    }

    /// Looks a flag up by its long name.
    public init?(long: Substring) {
        guard let spec = Self.table.first(where: { $0.long.utf8.elementsEqual(long.utf8) }) else { return nil }
        self = spec.flag
    }

    public init?(long: String) { self.init(long: Substring(long)) }

    /// Looks a flag up by its one-letter name.
    public init?(short: Character) {
        guard let spec = Self.table.first(where: { $0.short == short }) else { return nil }
        self = spec.flag
    }

    /// Every environment variable the flags read (primary and alias), in table order.
    public static var environmentNames: [String] {
        table.flatMap { [$0.environment, $0.aliasEnvironment].compactMap { $0 } }
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

    public var help: String {
        switch self {
        case .ownerGroups: "Groups whose outbound traffic is captured ('*' or a list of at most 64)."
        case .ownerGroupsExclude: "Groups whose outbound traffic is not captured (with the '*' default above)."
        case .ipv4LoopbackCIDR: "IPv4 loopback CIDR of the rules (prefix 8-32)."
        case .envoyUser: "User whose uid is the proxy uid when -u is empty."
        }
    }
}
