import MeshModel

/// Representative rules covering every `Match` and `Target` case and every expression the
/// builder emits (meta, cmp, payload, bitwise, range, lookup/set, immediate/verdict, redir,
/// tproxy, ct, mark). Used by the byte goldens, the nft oracle and the kernel tests.
enum RuleCatalog {
    struct Entry: Sendable, CustomStringConvertible {
        var name: String
        var table: Table
        var chain: Chain
        var rule: Rule
        var description: String { name }
    }

    static func cidr(_ text: String) -> CIDR { CIDR(text)! }
    static func port(_ value: Int) -> PortRange { PortRange(Port(value)!) }
    static func ports(_ a: Int, _ b: Int) -> PortRange { PortRange(first: Port(a)!, last: Port(b)!)! }
    static func id(_ value: UInt64) -> NumericID { NumericID(value)! }
    static let lo = InterfaceName.loopback
    static let out = Chain.own(.output)

    static let entries: [Entry] = [
        Entry(
            name: "meta-owner-interface", table: .nat, chain: out,
            rule: Rule(
                [.outInterface(lo), .l4proto(.tcp, scope: .all), .owner(.uid(id(1337)), negated: false)],
                .jump(.inRedirect))),
        Entry(
            name: "meta-negated-gid-wildcard-interface", table: .nat, chain: .builtin(.prerouting),
            rule: Rule([.inInterface(InterfaceName("veth+")!), .owner(.gid(id(1337)), negated: true)], .return)),
        Entry(
            name: "payload-cmp-host-addresses", table: .nat, chain: out,
            rule: Rule(
                [.source(cidr("127.0.0.6/32"), negated: false), .destination(cidr("127.0.0.1/32"), negated: true)],
                .return)),
        Entry(
            name: "payload-ipv6-host", table: .nat, chain: out,
            rule: Rule([.outInterface(lo), .destination(cidr("::1/128"), negated: true)], .return)),
        Entry(
            name: "payload-byte-aligned-prefix", table: .nat, chain: out,
            rule: Rule([.destination(cidr("9.9.0.0/16"), negated: false)], .jump(.redirect))),
        Entry(
            name: "payload-bitwise-prefix", table: .nat, chain: out,
            rule: Rule([.destination(cidr("10.96.0.0/12"), negated: true)], .accept)),
        Entry(
            name: "payload-bitwise-ipv6-prefix", table: .nat, chain: out,
            rule: Rule([.source(cidr("fd00::/60"), negated: false)], .drop)),
        Entry(
            name: "lookup-inverted-port-set", table: .nat, chain: out,
            rule: Rule(
                [
                    .outInterface(lo), .l4proto(.tcp, scope: .all), .destination(cidr("127.0.0.1/32"), negated: true),
                    .destinationPorts(.tcp, [port(53), port(15008)], negated: true),
                    .owner(.uid(id(1337)), negated: false),
                ], .jump(.inRedirect))),
        Entry(
            name: "lookup-interval-set", table: .nat, chain: out,
            rule: Rule([.destinationPorts(.udp, [ports(8000, 8010), port(53)], negated: false)], .return)),
        Entry(
            name: "cmp-port-range", table: .nat, chain: out,
            rule: Rule([.destinationPorts(.tcp, [ports(7000, 7005)], negated: false)], .jump(.redirect))),
        Entry(
            name: "range-negated-port-range", table: .nat, chain: out,
            rule: Rule([.destinationPorts(.tcp, [ports(6000, 6010)], negated: true)], .return)),
        Entry(
            name: "source-port", table: .raw, chain: .own(.outputDNS),
            rule: Rule([.sourcePort(.udp, port(15053)), .owner(.uid(id(1337)), negated: false)], .conntrackZone(2))),
        Entry(
            name: "immediate-redir", table: .nat, chain: .own(.redirect),
            rule: Rule([.l4proto(.tcp, scope: .all)], .redirect(toPort: Port(15001)!))),
        Entry(
            name: "tproxy-ip", table: .mangle, chain: .own(.tproxy),
            rule: Rule(
                [.l4proto(.tcp, scope: .all), .destination(cidr("127.0.0.1/32"), negated: true)],
                .tproxy(toPort: Port(15006)!, mark: Mark(1337)))),
        Entry(
            name: "tproxy-ip6", table: .mangle, chain: .own(.tproxy),
            rule: Rule(
                [.l4proto(.tcp, scope: .nftOnly), .destination(cidr("::1/128"), negated: true)],
                .tproxy(toPort: Port(15006)!, mark: Mark(1337)))),
        Entry(
            name: "ct-state", table: .mangle, chain: .own(.inbound),
            rule: Rule([.l4proto(.tcp, scope: .all), .conntrackState([.related, .established])], .jump(.divert))),
        Entry(
            name: "ct-state-invalid-drop", table: .mangle, chain: .builtin(.prerouting),
            rule: Rule([.conntrackState([.invalid])], .drop)),
        Entry(
            name: "mark-save-to-connmark", table: .mangle, chain: .builtin(.prerouting),
            rule: Rule([.l4proto(.tcp, scope: .all), .mark(Mark(1337), negated: false)], .saveMarkToConnmark)),
        Entry(
            name: "connmark-restore", table: .mangle, chain: .builtin(.output),
            rule: Rule([.l4proto(.tcp, scope: .all), .connmark(Mark(1337))], .restoreMarkFromConnmark)),
        Entry(
            name: "mark-set", table: .mangle, chain: .builtin(.output),
            rule: Rule([.mark(Mark(1338), negated: true)], .setMark(Mark(1338)))),
        Entry(
            name: "ct-zone", table: .raw, chain: .own(.outputDNS),
            rule: Rule([.destinationPorts(.udp, [port(53)], negated: false)], .conntrackZone(1))),
        Entry(
            name: "cidr-set-ipv4", table: .nat, chain: out,
            rule: Rule(
                [
                    .destinations([
                        cidr("10.0.0.0/8"), cidr("192.0.2.1/32"), cidr("192.0.2.2/32"), cidr("172.16.0.0/12"),
                    ])
                ],
                .return)),
        Entry(
            name: "cidr-set-ipv6", table: .nat, chain: out,
            rule: Rule([.destinations([cidr("2001:db8::/32"), cidr("fd00::1/128")])], .jump(.redirect))),
        Entry(
            name: "port-set-any-of", table: .nat, chain: out,
            rule: Rule([.destinationPorts(.udp, [port(53), ports(8000, 8010), port(9000)], negated: false)], .return)),
    ]

    /// All entries as one plan (appended in order).
    static var plan: Plan {
        Plan(
            operations: entries.map { Operation(table: $0.table, chain: $0.chain, rule: $0.rule, families: .both) },
            ipv6: true, tproxyRoute: nil)
    }
}
