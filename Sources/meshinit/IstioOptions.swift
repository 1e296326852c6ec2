import ArgumentParser
import MeshConfig

/// Istio's `istio-iptables` flags, spelled as Istio spells them, plus meshinit's own. Values
/// are collected as text and turned into typed settings by `ConfigResolver` (which also
/// applies the environment and Istio's defaults), so parsing happens once, in one place.
struct IstioOptions: ParsableArguments {
    @Option(name: [.customShort("p"), .customLong("envoy-port")], help: "Outbound capture port (default 15001).")
    var envoyPort: String?
    @Option(
        name: [.customShort("z"), .customLong("inbound-capture-port")],
        help: "Inbound capture port (env INBOUND_CAPTURE_PORT, default 15006).")
    var inboundCapturePort: String?
    @Option(
        name: [.customShort("e"), .customLong("inbound-tunnel-port")],
        help: "HBONE tunnel port, never captured inbound (env INBOUND_TUNNEL_PORT, default 15008).")
    var inboundTunnelPort: String?
    @Option(
        name: [.customShort("u"), .customLong("proxy-uid")],
        help: "Proxy uids or user names, comma separated (env PROXY_UID; default: uid of $ENVOY_USER, else 1337).")
    var proxyUID: String?
    @Option(
        name: [.customShort("g"), .customLong("proxy-gid")],
        help: "Proxy gids or group names (env PROXY_GID; default: the uid list).")
    var proxyGID: String?
    @Option(
        name: [.customShort("m"), .customLong("istio-inbound-interception-mode")],
        help: "REDIRECT, TPROXY or NONE (env ISTIO_INBOUND_INTERCEPTION_MODE).")
    var interceptionMode: String?
    @Option(
        name: [.customShort("b"), .customLong("istio-inbound-ports")],
        help: "Inbound ports to capture: '*', a list (80,8000-8010) or empty (env ISTIO_INBOUND_PORTS).")
    var inboundPorts: String?
    @Option(
        name: [.customShort("d"), .customLong("istio-local-exclude-ports")],
        help: "Inbound ports not captured with -b '*' (env ISTIO_LOCAL_EXCLUDE_PORTS).")
    var localExcludePorts: String?
    @Option(
        name: [.customShort("c"), .customLong("istio-exclude-interfaces")],
        help: "Interfaces never captured (env ISTIO_EXCLUDE_INTERFACES).")
    var excludeInterfaces: String?
    @Option(
        name: [.customShort("i"), .customLong("istio-service-cidr")],
        help: "Outbound destinations to capture: '*', CIDRs or empty (env ISTIO_SERVICE_CIDR).")
    var serviceCIDR: String?
    @Option(
        name: [.customShort("x"), .customLong("istio-service-exclude-cidr")],
        help: "Outbound destinations never captured (env ISTIO_SERVICE_EXCLUDE_CIDR).")
    var serviceExcludeCIDR: String?
    @Option(
        name: [.customShort("q"), .customLong("istio-outbound-ports")],
        help: "Outbound ports always captured (env ISTIO_OUTBOUND_PORTS).")
    var outboundPorts: String?
    @Option(
        name: [.customShort("o"), .customLong("istio-local-outbound-ports-exclude")],
        help: "Outbound ports never captured (env ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE).")
    var localOutboundPortsExclude: String?
    @Option(
        name: [.customShort("k"), .customLong("kube-virt-interfaces")],
        help: "KubeVirt interfaces, not treated as inbound (env KUBE_VIRT_INTERFACES).")
    var kubeVirtInterfaces: String?
    @Option(
        name: [.customShort("t"), .customLong("istio-inbound-tproxy-mark")],
        help: "TPROXY mark (env ISTIO_INBOUND_TPROXY_MARK, default 1337).")
    var tproxyMark: String?
    @Option(
        name: [.customShort("r"), .customLong("istio-inbound-tproxy-route-table")],
        help: "TPROXY routing table (env ISTIO_INBOUND_TPROXY_ROUTE_TABLE, default 133).")
    var tproxyRouteTable: String?
    @Flag(
        name: [.customShort("n"), .customLong("dry-run")], inversion: .prefixedNo,
        help: "Print the plan instead of applying it (env DRY_RUN).")
    var dryRun: Bool?
    @Option(
        name: .customLong("iptables-probe-port"),
        help: "Validation probe port (env IPTABLES_PROBE_PORT, default 15002).")
    var iptablesProbePort: String?
    @Option(name: .customLong("probe-timeout"), help: "Validation timeout (env PROBE_TIMEOUT, default 5s).")
    var probeTimeout: String?
    @Flag(name: .customLong("skip-rule-apply"), inversion: .prefixedNo, help: "Apply nothing (env SKIP_RULE_APPLY).")
    var skipRuleApply: Bool?
    @Flag(name: .customLong("run-validation"), inversion: .prefixedNo, help: "Probe the redirect (env RUN_VALIDATION).")
    var runValidation: Bool?
    @Flag(
        name: .customLong("redirect-dns"), inversion: .prefixedNo,
        help: "Capture DNS to 15053 (env REDIRECT_DNS, ISTIO_META_DNS_CAPTURE).")
    var redirectDNS: Bool?
    @Flag(
        name: .customLong("drop-invalid"), inversion: .prefixedNo,
        help: "Drop conntrack-INVALID packets (env DROP_INVALID, INVALID_DROP).")
    var dropInvalid: Bool?
    @Flag(
        name: .customLong("dual-stack"), inversion: .prefixedNo,
        help: "IPv6 on when any IPv6 address exists (env DUAL_STACK, ISTIO_DUAL_STACK).")
    var dualStack: Bool?
    @Flag(
        name: .customLong("capture-all-dns"), inversion: .prefixedNo,
        help: "Capture all port-53 traffic, not just resolv.conf servers (env CAPTURE_ALL_DNS).")
    var captureAllDNS: Bool?
    @Option(
        name: .customLong("network-namespace"),
        help: "Network namespace file to act in, e.g. /var/run/netns/pod (env NETWORK_NAMESPACE).")
    var networkNamespace: String?
    @Flag(name: .customLong("cni-mode"), inversion: .prefixedNo, help: "Istio CNI mode (env CNI_MODE).")
    var cniMode: Bool?
    @Flag(name: .customLong("reconcile"), inversion: .prefixedNo, help: "Accepted for compatibility (env RECONCILE).")
    var reconcile: Bool?
    @Flag(name: .customLong("cleanup-only"), inversion: .prefixedNo, help: "Remove our rules (env CLEANUP_ONLY).")
    var cleanupOnly: Bool?
    @Flag(
        name: .customLong("force-apply"), inversion: .prefixedNo, help: "Accepted for compatibility (env FORCE_APPLY).")
    var forceApply: Bool?
    @Flag(
        name: .customLong("native-nftables"), inversion: .prefixedNo,
        help: "Use the nftables netlink backend (env NATIVE_NFTABLES).")
    var nativeNftables: Bool?
    @Option(
        name: .customLong("force-iptables-binary"),
        help: "legacy or nft: skip iptables detection (env FORCE_IPTABLES_BINARY).")
    var forceIptablesBinary: String?
    @Option(name: .customLong("log_output_level"), help: "Log level, Istio syntax (default:info).")
    var logOutputLevel: String?
    @Flag(name: .customLong("log_as_json"), inversion: .prefixedNo, help: "Log as JSON lines.")
    var logAsJSON: Bool?
    @Option(name: .customLong("ipv6"), help: "IPv6 rules: auto (Istio's guess from addresses), on or off.")
    var ipv6: String?
    @Option(name: .customLong("resolv-conf"), help: "resolv.conf to read DNS servers from (default /etc/resolv.conf).")
    var resolvConf: String?

    /// The values given on the command line, by flag.
    var given: [IstioFlag: String] {
        let text: [(IstioFlag, String?)] = [
            (.envoyPort, envoyPort), (.inboundCapturePort, inboundCapturePort),
            (.inboundTunnelPort, inboundTunnelPort), (.proxyUID, proxyUID), (.proxyGID, proxyGID),
            (.interceptionMode, interceptionMode), (.inboundPorts, inboundPorts),
            (.localExcludePorts, localExcludePorts), (.excludeInterfaces, excludeInterfaces),
            (.serviceCIDR, serviceCIDR), (.serviceExcludeCIDR, serviceExcludeCIDR), (.outboundPorts, outboundPorts),
            (.localOutboundPortsExclude, localOutboundPortsExclude), (.kubeVirtInterfaces, kubeVirtInterfaces),
            (.tproxyMark, tproxyMark), (.tproxyRouteTable, tproxyRouteTable),
            (.iptablesProbePort, iptablesProbePort), (.probeTimeout, probeTimeout),
            (.networkNamespace, networkNamespace), (.forceIptablesBinary, forceIptablesBinary),
            (.logOutputLevel, logOutputLevel), (.ipv6, ipv6), (.resolvConf, resolvConf),
        ]
        let bools: [(IstioFlag, Bool?)] = [
            (.dryRun, dryRun), (.skipRuleApply, skipRuleApply), (.runValidation, runValidation),
            (.redirectDNS, redirectDNS), (.dropInvalid, dropInvalid), (.dualStack, dualStack),
            (.captureAllDNS, captureAllDNS), (.cniMode, cniMode), (.reconcile, reconcile),
            (.cleanupOnly, cleanupOnly), (.forceApply, forceApply), (.nativeNftables, nativeNftables),
            (.logAsJSON, logAsJSON),
        ]
        var out: [IstioFlag: String] = [:]
        for (flag, value) in text { if let value { out[flag] = value } }
        for (flag, value) in bools { if let value { out[flag] = value ? "true" : "false" } }
        return out
    }
}
