import MeshModel

/// Config → Plan. Pure: the same config always gives the same plan, and nothing is read or
/// written. The order of operations is Istio's generation order (istio-iptables `Run()`), so
/// that rendering per family reproduces Istio's rule sets exactly, quirks included.
public enum Planner {
    /// Envoy's outbound mark for traffic to the pod's own IP in TPROXY mode (Istio constant).
    public static let outboundMark = Mark(1338)
    /// istio-agent's DNS listener.
    public static let dnsListenerPort = Port(15053)!
    static let dnsPort = PortRange(Port(53)!)
    static let passthroughV4 = CIDR(host: IPAddress(ipv4: 0x7f00_0006))
    static let passthroughV6 = CIDR(host: IPAddress(ipv6: 0, 6))
    static let loopbackV6 = CIDR(host: IPAddress(ipv6: 0, 1))
    /// Lists longer than this (CIDRs of one family, ports) become one rule with a list: nft
    /// matches it with a single set lookup, so per-packet cost stays flat; iptables expands
    /// it back into Istio's one-rule-per-item. Shorter lists stay one rule per item, exactly
    /// as Istio's nft backend writes them.
    public static let listThreshold = 16

    public static func plan(_ config: CaptureConfig) -> Plan {
        var b = Builder(config: config)
        b.build()
        let route: TproxyRoute? =
            if config.interceptionMode == .tproxy, config.inboundPorts != .none {
                TproxyRoute(mark: config.tproxyMark, table: config.tproxyRouteTable)
            } else {
                nil
            }
        return Plan(operations: b.operations, ipv6: config.ipv6, tproxyRoute: route)
    }
}

private struct Builder {
    let c: CaptureConfig
    var operations: [Operation] = []
    /// Families that receive family-neutral rules.
    let all: FamilySet
    let families: [Family]

    init(config: CaptureConfig) {
        c = config
        all = config.ipv6 ? .both : .ipv4
        families = config.ipv6 ? [.ipv4, .ipv6] : [.ipv4]
    }

    // MARK: helpers

    /// The settings the rules being added come from: set before each group of `add`s.
    var origin: [CaptureSetting] = []

    mutating func add(
        _ table: Table, _ chain: Chain, _ matches: [Match], _ target: Target,
        at position: Int? = nil, families: FamilySet? = nil
    ) {
        let rule = Rule(matches, target)
        let fams = families ?? rule.family.map(FamilySet.init) ?? all
        guard !fams.isEmpty else { return }
        operations.append(
            Operation(
                table: table, chain: chain, placement: position.map { .insert(position: $0) } ?? .append,
                rule: rule, families: fams, origin: origin))
    }

    /// The family-specific addresses of Istio's versioned rules.
    struct Versioned {
        /// `127.0.0.1/32` (or `ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR`) / `::1/128`.
        var loopback: CIDR
        /// The inbound passthrough source, `127.0.0.6/32` / `::6/128`.
        var passthrough: CIDR
    }

    /// Istio's `AppendVersionedRule`/`InsertVersionedRule`: one rule per enabled family.
    mutating func addVersioned(
        _ table: Table, _ chain: Chain, at position: Int? = nil, _ build: (Versioned) -> ([Match], Target)
    ) {
        for family in families {
            let versioned =
                family == .ipv4
                ? Versioned(loopback: c.ipv4LoopbackCIDR, passthrough: Planner.passthroughV4)
                : Versioned(loopback: Planner.loopbackV6, passthrough: Planner.passthroughV6)
            let (matches, target) = build(versioned)
            add(table, chain, matches, target, at: position, families: FamilySet(family))
        }
    }

    var dnsOn: Bool { c.dns != nil }
    var tproxy: Bool { c.interceptionMode == .tproxy }

    // MARK: generation, in Istio's order

    mutating func build() {
        excludeInterfaces()
        kubeVirtReturns()
        dropInvalid()
        skeleton()
        inbound()
        origin = []
        add(.nat, .builtin(.output), [], .jump(.output))
        outboundExcludePorts()
        origin = []
        addVersioned(.nat, .own(.output)) { v in
            ([.outInterface(.loopback), .source(v.passthrough, negated: false)], .return)
        }
        proxyOwners()
        ownerGroups()
        dns()
        origin = [.ipv4LoopbackCIDR]
        addVersioned(.nat, .own(.output)) { v in ([.destination(v.loopback, negated: false)], .return) }
        outboundExcludeCIDRs()
        origin = [.outboundPorts]
        for ports in portGroups(c.outboundPorts) {
            add(.nat, .own(.output), [.destinationPorts(.tcp, ports, negated: false)], .jump(.redirect))
        }
        outboundIncludes()
        tproxyTail()
    }

    /// `-c`: never touch traffic on these NICs (first rules of all).
    mutating func excludeInterfaces() {
        origin = [.excludeInterfaces]
        let tables: [Table] = tproxy ? [.nat, .mangle] : [.nat]
        for table in tables {
            for nic in c.excludeInterfaces {
                add(table, .builtin(.prerouting), [.inInterface(nic)], .return)
                add(table, .builtin(.output), [.outInterface(nic)], .return)
            }
        }
    }

    /// `-k`: VM/virt NICs are not inbound. Each is "insert at 1", so later ones end on top.
    mutating func kubeVirtReturns() {
        origin = [.kubeVirtInterfaces]
        for nic in c.kubeVirtInterfaces {
            add(.nat, .builtin(.prerouting), [.inInterface(nic)], .return, at: 1)
        }
    }

    /// `--drop-invalid`: drop conntrack-INVALID packets instead of letting them RST.
    mutating func dropInvalid() {
        guard c.dropInvalid else { return }
        origin = [.dropInvalid]
        add(
            .mangle, .builtin(.prerouting), [.l4proto(.tcp, scope: .nftOnly), .conntrackState([.invalid])],
            .jump(.drop))
        add(.mangle, .own(.drop), [], .drop)
    }

    /// The HBONE tunnel port bypass and the two redirect targets.
    mutating func skeleton() {
        origin = [.inboundTunnelPort]
        add(
            .nat, .own(.inbound),
            [.l4proto(.tcp, scope: .all), .destinationPorts(.tcp, [PortRange(c.inboundTunnelPort)], negated: false)],
            .return)
        origin = [.proxyPort]
        add(.nat, .own(.redirect), [.l4proto(.tcp, scope: .all)], .redirect(toPort: c.proxyPort))
        origin = [.inboundCapturePort]
        add(.nat, .own(.inRedirect), [.l4proto(.tcp, scope: .all)], .redirect(toPort: c.inboundCapturePort))
    }

    /// `-b`/`-d` (and the TPROXY divert/tproxy chains when `-m TPROXY`).
    mutating func inbound() {
        if c.inboundPorts == .none { return }
        let table: Table
        let tcp = Match.l4proto(.tcp, scope: .all)
        if tproxy {
            origin = [.interceptionMode, .tproxyMark]
            add(.mangle, .own(.divert), [], .setMark(c.tproxyMark))
            add(.mangle, .own(.divert), [], .accept)
            origin = [.interceptionMode, .inboundCapturePort, .tproxyMark]
            let tproxyTarget = Target.tproxy(toPort: c.inboundCapturePort, mark: c.tproxyMark)
            addVersioned(.mangle, .own(.tproxy)) { v in ([tcp, .destination(v.loopback, negated: true)], tproxyTarget) }
            table = .mangle
        } else {
            table = .nat
        }
        origin = tproxy ? [.inboundPorts, .interceptionMode] : [.inboundPorts]
        add(table, .builtin(.prerouting), [tcp], .jump(.inbound))
        let established = Match.conntrackState([.related, .established])
        switch c.inboundPorts {
        case .none:
            return
        case .all(let except):
            origin = [.inboundExcludePorts]
            for ports in portGroups(except) {
                add(table, .own(.inbound), [tcp, .destinationPorts(.tcp, ports, negated: false)], .return)
            }
            origin = [.inboundPorts]
            if tproxy {
                add(.mangle, .own(.inbound), [tcp, established], .jump(.divert))
                add(.mangle, .own(.inbound), [tcp], .jump(.tproxy))
            } else {
                add(.nat, .own(.inbound), [tcp], .jump(.inRedirect))
            }
        case .only(let ports):
            for group in portGroups(ports) {
                let dport = Match.destinationPorts(.tcp, group, negated: false)
                if tproxy {
                    add(.mangle, .own(.inbound), [tcp, established, dport], .jump(.divert))
                    add(.mangle, .own(.inbound), [tcp, dport], .jump(.tproxy))
                } else {
                    add(.nat, .own(.inbound), [tcp, dport], .jump(.inRedirect))
                }
            }
        }
    }

    /// `-o`: TCP and UDP to these ports is never captured (first rules of ISTIO_OUTPUT).
    mutating func outboundExcludePorts() {
        origin = [.outboundExcludePorts]
        for ports in portGroups(c.outboundExcludePorts) {
            add(.nat, .own(.output), [.destinationPorts(.tcp, ports, negated: false)], .return)
            add(.nat, .own(.output), [.destinationPorts(.udp, ports, negated: false)], .return)
        }
    }

    /// Per proxy uid, then per gid: loopback-to-self via the inbound listener, app-to-app on
    /// lo bypass, and "never capture the proxy itself".
    mutating func proxyOwners() {
        let tunnel = PortRange(c.inboundTunnelPort)
        let loopbackIncluded: Bool =
            if case .only(let cidrs) = c.outboundInclude { cidrs.contains { $0.address.isLoopback } } else { false }
        let owners = c.proxyUIDs.map(Owner.uid) + c.proxyGIDs.map(Owner.gid)
        for owner in owners {
            let isUID: Bool = if case .uid = owner { true } else { false }
            origin = isUID ? [.proxyUIDs] : [.proxyGIDs]
            // Istio's asymmetry: only the uid rule also spares port 53 when DNS capture is on.
            let spared = dnsOn && isUID ? [Planner.dnsPort, tunnel] : [tunnel]
            addVersioned(.nat, .own(.output)) { v in
                (
                    [
                        .outInterface(.loopback), .l4proto(.tcp, scope: .all), .destination(v.loopback, negated: true),
                        .destinationPorts(.tcp, spared, negated: true), .owner(owner, negated: false),
                    ], .jump(.inRedirect)
                )
            }
            if !loopbackIncluded {
                if dnsOn {
                    add(
                        .nat, .own(.output),
                        [
                            .outInterface(.loopback), .l4proto(.tcp, scope: .all),
                            .destinationPorts(.tcp, [Planner.dnsPort], negated: true), .owner(owner, negated: true),
                        ], .return)
                } else {
                    add(.nat, .own(.output), [.outInterface(.loopback), .owner(owner, negated: true)], .return)
                }
            }
            add(.nat, .own(.output), [.owner(owner, negated: false)], .return)
        }
    }

    /// `ISTIO_OUTBOUND_OWNER_GROUPS[_EXCLUDE]`.
    mutating func ownerGroups() {
        origin = [.ownerGroups]
        switch c.ownerGroups {
        case .allExcept(let groups):
            for group in groups {
                add(.nat, .own(.output), [.owner(.gid(group), negated: false)], .return)
            }
        case .only(let groups):
            add(.nat, .own(.output), groups.map { .owner(.gid($0), negated: true) }, .return)
        }
    }

    /// DNS capture: raw-table conntrack zones and the nat redirect to istio-agent.
    mutating func dns() {
        guard let dns = c.dns else { return }
        origin = [.dns]
        let withServers: FamilySet
        switch dns {
        case .all:
            withServers = all
        case .servers(let v4, let v6):
            var set: FamilySet = []
            if !v4.isEmpty { set.insert(.ipv4) }
            if !v6.isEmpty && c.ipv6 { set.insert(.ipv6) }
            withServers = set
        }
        let udp53 = Match.destinationPorts(.udp, [Planner.dnsPort], negated: false)
        add(.raw, .builtin(.output), [], .jump(.outputDNS))
        for owner in c.proxyUIDs.map(Owner.uid) + c.proxyGIDs.map(Owner.gid) {
            if case .uid = owner { origin = [.dns, .proxyUIDs] } else { origin = [.dns, .proxyGIDs] }
            add(.raw, .own(.outputDNS), [udp53, .owner(owner, negated: false)], .conntrackZone(1))
            add(
                .raw, .own(.outputDNS),
                [.sourcePort(.udp, PortRange(Planner.dnsListenerPort)), .owner(owner, negated: false)],
                .conntrackZone(2))
        }
        origin = [.dns]
        add(.nat, .own(.output), [], .jump(.outputDNS), families: withServers)
        let toAgent = Target.redirect(toPort: Planner.dnsListenerPort)
        switch dns {
        case .all:
            for proto in [L4Protocol.tcp, .udp] {
                add(.nat, .own(.outputDNS), [.destinationPorts(proto, [Planner.dnsPort], negated: false)], toAgent)
            }
            add(.raw, .builtin(.prerouting), [], .jump(.inbound), families: withServers)
            add(.raw, .own(.outputDNS), [udp53], .conntrackZone(2))
            add(.raw, .own(.inbound), [.sourcePort(.udp, Planner.dnsPort)], .conntrackZone(1))
        case .servers(let v4, let v6):
            let servers = (v4 + (c.ipv6 ? v6 : [])).map(CIDR.init(host:))
            for proto in [L4Protocol.tcp, .udp] {
                for server in servers {
                    add(
                        .nat, .own(.outputDNS),
                        [
                            .destination(server, negated: false),
                            .destinationPorts(proto, [Planner.dnsPort], negated: false),
                        ],
                        toAgent)
                }
            }
            add(.raw, .builtin(.prerouting), [], .jump(.inbound), families: withServers)
            for server in servers {
                add(.raw, .own(.outputDNS), [udp53, .destination(server, negated: false)], .conntrackZone(2))
                add(
                    .raw, .own(.inbound), [.sourcePort(.udp, Planner.dnsPort), .source(server, negated: false)],
                    .conntrackZone(1))
            }
        }
    }

    /// `-x`: v4 CIDRs, then v6 CIDRs (v6 only when IPv6 is on).
    mutating func outboundExcludeCIDRs() {
        origin = [.outboundExclude]
        for family in families {
            let cidrs = c.outboundExclude.filter { $0.family == family }
            if cidrs.count > Planner.listThreshold {
                add(.nat, .own(.output), [.destinations(cidrs)], .return)
                continue
            }
            for cidr in cidrs {
                add(.nat, .own(.output), [.destination(cidr, negated: false)], .return)
            }
        }
    }

    /// Ports one rule each, or one rule with the list when it is long.
    func portGroups(_ ports: [PortRange]) -> [[PortRange]] {
        ports.count > Planner.listThreshold ? [ports] : ports.map { [$0] }
    }

    /// `-i` per family, with the kube-virt REDIRECT inserts (which shadow the RETURN inserts).
    mutating func outboundIncludes() {
        origin = [.outboundInclude]
        for family in families {
            let fam = FamilySet(family)
            switch c.outboundInclude {
            case .none:
                break
            case .all:
                origin = [.outboundInclude]
                add(.nat, .own(.output), [], .jump(.redirect), families: fam)
                origin = [.kubeVirtInterfaces, .outboundInclude]
                for nic in c.kubeVirtInterfaces {
                    add(.nat, .builtin(.prerouting), [.inInterface(nic)], .jump(.redirect), at: 1, families: fam)
                }
            case .only(let all):
                let cidrs = all.filter { $0.family == family }
                origin = [.outboundInclude]
                if cidrs.count > Planner.listThreshold && c.kubeVirtInterfaces.isEmpty {
                    add(.nat, .own(.output), [.destinations(cidrs)], .jump(.redirect))
                    continue
                }
                for cidr in cidrs {
                    origin = [.kubeVirtInterfaces, .outboundInclude]
                    for nic in c.kubeVirtInterfaces {
                        add(
                            .nat, .builtin(.prerouting), [.inInterface(nic), .destination(cidr, negated: false)],
                            .jump(.redirect), at: 1)
                    }
                    origin = [.outboundInclude]
                    add(.nat, .own(.output), [.destination(cidr, negated: false)], .jump(.redirect))
                }
            }
        }
    }

    /// TPROXY's marks (always in TPROXY mode, even with empty `-b`).
    mutating func tproxyTail() {
        guard tproxy else { return }
        origin = [.interceptionMode, .tproxyMark]
        let tcp = Match.l4proto(.tcp, scope: .all)
        let mark = c.tproxyMark
        add(.mangle, .builtin(.prerouting), [tcp, .mark(mark, negated: false)], .saveMarkToConnmark)
        add(.mangle, .builtin(.output), [.outInterface(.loopback), tcp, .mark(mark, negated: false)], .return)
        for owner in c.proxyUIDs.map(Owner.uid) + c.proxyGIDs.map(Owner.gid) {
            if case .uid = owner {
                origin = [.interceptionMode, .proxyUIDs]
            } else {
                origin = [.interceptionMode, .proxyGIDs]
            }
            addVersioned(.mangle, .builtin(.output)) { v in
                (
                    [
                        .outInterface(.loopback), tcp, .destination(v.loopback, negated: true),
                        .owner(owner, negated: false),
                    ],
                    .setMark(Planner.outboundMark)
                )
            }
        }
        origin = [.interceptionMode, .tproxyMark]
        add(.mangle, .builtin(.output), [tcp, .connmark(mark)], .restoreMarkFromConnmark)
        add(.mangle, .own(.inbound), [tcp, .mark(mark, negated: false)], .return, at: 1)
        origin = [.interceptionMode]
        addVersioned(.mangle, .own(.inbound), at: 2) { v in
            ([.inInterface(.loopback), tcp, .source(v.passthrough, negated: false)], .return)
        }
        add(
            .mangle, .own(.inbound), [.inInterface(.loopback), tcp, .mark(Planner.outboundMark, negated: true)],
            .return,
            at: 3)
    }
}
