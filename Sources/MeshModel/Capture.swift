/// The capture configuration: the planner's whole input, as typed values (no parsing here).

/// Inbound capture selection (`-b`, with `-d` for the wildcard).
public enum InboundPorts: Sendable, Hashable {
    /// `-b ''`: no inbound capture.
    case none
    /// `-b '*'`: every TCP port except these (`-d`).
    case all(except: [PortRange])
    /// `-b 80,8000-8010`: only these.
    case only([PortRange])
}

/// Outbound include selection (`-i`).
public enum OutboundInclude: Sendable, Hashable {
    /// `-i ''`: no CIDR-based redirect (ports from `-q` still work).
    case none
    /// `-i '*'`: everything not excluded before.
    case all
    /// `-i 10.0.0.0/8,...`: only these destinations.
    case only([CIDR])
}

/// Inbound interception mode (`-m`). Istio treats every value but `TPROXY` as REDIRECT;
/// meshinit accepts `REDIRECT`, `TPROXY`, `NONE` and empty (the last two behave as REDIRECT,
/// as in Istio) and refuses anything else.
public enum InterceptionMode: String, Sendable, Hashable {
    case redirect = "REDIRECT"
    case tproxy = "TPROXY"
}

/// DNS capture (`--redirect-dns`, `--capture-all-dns`, resolv.conf servers).
public enum DNSCapture: Sendable, Hashable {
    /// Capture port 53 to every destination.
    case all
    /// Capture port 53 to these servers (at least one in total).
    case servers(ipv4: [IPAddress], ipv6: [IPAddress])
}

/// Which outbound traffic is captured by the owner group of its socket
/// (`ISTIO_OUTBOUND_OWNER_GROUPS` / `_EXCLUDE`).
public enum OwnerGroupFilter: Sendable, Hashable {
    /// Capture every group except these (include `*`).
    case allExcept([NumericID])
    /// Capture only these groups.
    case only([NumericID])
}

/// Everything the planner needs, typed: what to capture. Built once, at the edge, by a
/// configuration source — Istio's flags and environment (`MeshConfig`), or a CNI plugin
/// configuration with pod annotations — and the same value for the planner whichever the
/// source.
public struct CaptureConfig: Sendable, Hashable {
    public var proxyPort: Port = Port(15001)!
    public var inboundCapturePort: Port = Port(15006)!
    public var inboundTunnelPort: Port = Port(15008)!
    public var proxyUIDs: [NumericID] = [NumericID(1337)!]
    public var proxyGIDs: [NumericID] = [NumericID(1337)!]
    public var interceptionMode: InterceptionMode = .redirect
    public var inboundPorts: InboundPorts = .none
    public var excludeInterfaces: [InterfaceName] = []
    public var outboundInclude: OutboundInclude = .none
    public var outboundExclude: [CIDR] = []
    public var outboundPorts: [PortRange] = []
    public var outboundExcludePorts: [PortRange] = []
    public var kubeVirtInterfaces: [InterfaceName] = []
    public var tproxyMark: Mark = Mark(1337)
    public var tproxyRouteTable: UInt32 = 133
    public var dns: DNSCapture?
    public var dropInvalid = false
    public var ipv6 = false
    public var ownerGroups: OwnerGroupFilter = .allExcept([])
    /// `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`: replaces every `127.0.0.1/32` of the v4 rules.
    public var ipv4LoopbackCIDR = CIDR(host: IPAddress(ipv4: 0x7f00_0001))

    public init() {}
}

/// A part of the capture configuration, as the planner uses it: each planned rule records
/// which of these it comes from (`Operation.origin`), and each configuration source records
/// where it took their values (a flag, an environment variable, an annotation), so that
/// `explain` can name what is behind a rule.
public enum CaptureSetting: String, Sendable, Hashable, CaseIterable {
    case proxyPort, inboundCapturePort, inboundTunnelPort, proxyUIDs, proxyGIDs, interceptionMode
    case inboundPorts, inboundExcludePorts, excludeInterfaces, outboundInclude, outboundExclude
    case outboundPorts, outboundExcludePorts, kubeVirtInterfaces, tproxyMark, dns, dropInvalid
    case ownerGroups, ipv4LoopbackCIDR, ipv6
}
