import CNftnl
import MeshModel
import MeshRender

/// One nf_tables expression, as nft 1.0.6 emits it for meshinit's rules. Registers are the
/// 128-bit `NFT_REG_1` (loads) and `NFT_REG_VERDICT` (verdicts), as nft uses them.
///
/// Byte order of data: payload comparisons are network order (they compare packet bytes);
/// meta/ct values (`skuid`, `mark`, `ct zone`) are host order; ports in `immediate` for
/// `redir`/`tproxy` are network order.
enum Expression: Sendable, Hashable {
    /// `[ meta load KEY => reg 1 ]`
    case metaLoad(UInt32)
    /// `[ meta set KEY with reg 1 ]`
    case metaSet(UInt32)
    /// `[ cmp OP reg 1 DATA ]`
    case compare(UInt32, [UInt8])
    /// `[ payload load LEN b @ BASE header + OFFSET => reg 1 ]`
    case payload(base: UInt32, offset: UInt32, length: UInt32)
    /// `[ bitwise reg 1 = ( reg 1 & MASK ) ^ XOR ]` (xor is all zeros)
    case bitwise(mask: [UInt8])
    /// `[ range OP reg 1 FROM TO ]`
    case range(UInt32, from: [UInt8], to: [UInt8])
    /// `[ lookup reg 1 set __set%d ]`, the set being the rule's `index`-th anonymous set.
    case lookup(set: Int, inverted: Bool)
    /// `[ counter pkts 0 bytes 0 ]`
    case counter
    /// `[ immediate reg 0 VERDICT [-> CHAIN] ]`
    case verdict(Int32, chain: String?)
    /// `[ immediate reg 1 DATA ]`
    case immediate([UInt8])
    /// `[ redir proto_min reg 1 flags 0x2 ]`
    case redirect
    /// `[ tproxy ip|ip6 port reg 1 ]`
    case tproxy(family: UInt32)
    /// `[ ct load KEY => reg 1 ]`
    case ctLoad(UInt32)
    /// `[ ct set KEY with reg 1 ]`
    case ctSet(UInt32)
}

/// An anonymous constant set (`{ 53, 15008 }`) a rule looks up.
struct AnonymousSet: Sendable, Hashable {
    /// nft datatype id of the key (`inet_service` = 13).
    var keyType: UInt32
    var keyLength: UInt32
    /// `NFT_SET_INTERVAL`: elements are ranges (start, end+1 with `INTERVAL_END`).
    var interval: Bool
    /// Keys in network order with element flags, in the order nft sends them.
    var elements: [Element]
    /// nft's set userdata (key byte order, typeof expression, merge flag).
    var userData: [UInt8]

    struct Element: Sendable, Hashable {
        var key: [UInt8]
        var flags: UInt32
    }
}

/// A rule translated to expressions, with the anonymous sets it uses.
struct CompiledRule: Sendable, Hashable {
    var expressions: [Expression]
    var sets: [AnonymousSet]
}

/// Constants nft uses that no header exports, or that import awkwardly.
enum NftConstant {
    static let register1: UInt32 = 1  // NFT_REG_1
    static let registerVerdict: UInt32 = 0  // NFT_REG_VERDICT
    static let typeInetService: UInt32 = 13  // nft datatype id of `inet_service`
    static let byteorderBigEndian: UInt32 = 2  // nft's BYTEORDER_BIG_ENDIAN
    static let natRangeProtoSpecified: UInt32 = 2  // NF_NAT_RANGE_PROTO_SPECIFIED
    static let nfprotoIPv4: UInt8 = 2  // NFPROTO_IPV4
    static let nfprotoIPv6: UInt8 = 10  // NFPROTO_IPV6
    static let setAnonymous: UInt32 = 1  // NFT_SET_ANONYMOUS
    static let setConstant: UInt32 = 2  // NFT_SET_CONSTANT
    static let setInterval: UInt32 = 4  // NFT_SET_INTERVAL
    static let elementIntervalEnd: UInt32 = 1  // NFT_SET_ELEM_INTERVAL_END
    static let lookupInverted: UInt32 = 1  // NFT_LOOKUP_F_INV
    /// nft's `proto_desc_id` of the transport header, for set userdata.
    static func protoDescID(_ p: L4Protocol) -> UInt8 { p == .tcp ? 8 : 6 }
    static func ipProtocol(_ p: L4Protocol) -> UInt8 { p == .tcp ? 6 : 17 }

    // Keys, from the kernel's enums.
    static let metaL4proto = NFT_META_L4PROTO.rawValue
    static let metaNfproto = NFT_META_NFPROTO.rawValue
    static let metaIifname = NFT_META_IIFNAME.rawValue
    static let metaOifname = NFT_META_OIFNAME.rawValue
    static let metaSkuid = NFT_META_SKUID.rawValue
    static let metaSkgid = NFT_META_SKGID.rawValue
    static let metaMark = NFT_META_MARK.rawValue
    static let ctState = NFT_CT_STATE.rawValue
    static let ctMark = NFT_CT_MARK.rawValue
    static let ctZone = NFT_CT_ZONE.rawValue
    static let cmpEq = NFT_CMP_EQ.rawValue
    static let cmpNeq = NFT_CMP_NEQ.rawValue
    static let cmpGte = NFT_CMP_GTE.rawValue
    static let cmpLte = NFT_CMP_LTE.rawValue
    static let rangeNeq = NFT_RANGE_NEQ.rawValue
    static let payloadNetwork = NFT_PAYLOAD_NETWORK_HEADER.rawValue
    static let payloadTransport = NFT_PAYLOAD_TRANSPORT_HEADER.rawValue
    static let verdictAccept = Int32(NF_ACCEPT)
    static let verdictDrop = Int32(NF_DROP)
    static let verdictJump = NFT_JUMP.rawValue
    static let verdictReturn = NFT_RETURN.rawValue
}

/// Rule → expressions, reproducing nft 1.0.6's code generation for the same text
/// (`NftScript.statement(rule)`), including its implicit dependencies: `ip daddr` in an
/// inet table is preceded by `meta nfproto ipv4` (1 byte), `tcp dport` by
/// `meta l4proto tcp`, each only once per rule and not when the rule already matched it.
enum RuleCompiler {
    static func compile(_ rule: Rule) -> CompiledRule {
        var out: [Expression] = []
        var sets: [AnonymousSet] = []
        var knownFamily: Family?
        var knownL4: L4Protocol?

        func needFamily(_ family: Family) {
            guard knownFamily != family else { return }
            out.append(.metaLoad(NftConstant.metaNfproto))
            out.append(
                .compare(NftConstant.cmpEq, [family == .ipv4 ? NftConstant.nfprotoIPv4 : NftConstant.nfprotoIPv6]))
            knownFamily = family
        }
        func needL4(_ p: L4Protocol) {
            guard knownL4 != p else { return }
            out.append(.metaLoad(NftConstant.metaL4proto))
            out.append(.compare(NftConstant.cmpEq, [NftConstant.ipProtocol(p)]))
            knownL4 = p
        }
        func address(_ cidr: CIDR, source: Bool, negated: Bool) {
            needFamily(cidr.family)
            let width = UInt32(cidr.address.bitWidth / 8)
            let offset: UInt32 = cidr.family == .ipv4 ? (source ? 12 : 16) : (source ? 8 : 24)
            let op = negated ? NftConstant.cmpNeq : NftConstant.cmpEq
            let network = cidr.network.bytes
            let prefix = cidr.prefixLength
            if prefix == cidr.address.bitWidth {
                out.append(.payload(base: NftConstant.payloadNetwork, offset: offset, length: width))
                out.append(.compare(op, network))
            } else if prefix > 0 && prefix % 8 == 0 {
                // nft shortens a byte-aligned prefix to a shorter load (`ip daddr 9.9.0.0/16`).
                out.append(.payload(base: NftConstant.payloadNetwork, offset: offset, length: UInt32(prefix / 8)))
                out.append(.compare(op, Array(network[0..<(prefix / 8)])))
            } else {
                out.append(.payload(base: NftConstant.payloadNetwork, offset: offset, length: width))
                out.append(.bitwise(mask: cidr.maskBytes))
                out.append(.compare(op, network))
            }
        }
        func ports(_ p: L4Protocol, _ ranges: [PortRange], offset: UInt32, negated: Bool) {
            needL4(p)
            out.append(.payload(base: NftConstant.payloadTransport, offset: offset, length: 2))
            if ranges.count == 1 {
                let range = ranges[0]
                if range.isSingle {
                    out.append(.compare(negated ? NftConstant.cmpNeq : NftConstant.cmpEq, be16(range.first.value)))
                } else if negated {
                    out.append(.range(NftConstant.rangeNeq, from: be16(range.first.value), to: be16(range.last.value)))
                } else {
                    out.append(.compare(NftConstant.cmpGte, be16(range.first.value)))
                    out.append(.compare(NftConstant.cmpLte, be16(range.last.value)))
                }
                return
            }
            sets.append(portSet(p, ranges, field: offset == 0 ? 1 : 2))
            out.append(.lookup(set: sets.count - 1, inverted: negated))
        }

        for match in rule.matches {
            switch match {
            case .inInterface(let name):
                out.append(.metaLoad(NftConstant.metaIifname))
                out.append(.compare(NftConstant.cmpEq, interfaceBytes(name)))
            case .outInterface(let name):
                out.append(.metaLoad(NftConstant.metaOifname))
                out.append(.compare(NftConstant.cmpEq, interfaceBytes(name)))
            case .source(let cidr, let negated): address(cidr, source: true, negated: negated)
            case .destination(let cidr, let negated): address(cidr, source: false, negated: negated)
            case .destinations(let list):
                guard let family = list.first?.family else { continue }
                needFamily(family)
                out.append(
                    .payload(
                        base: NftConstant.payloadNetwork, offset: family == .ipv4 ? 16 : 24,
                        length: family == .ipv4 ? 4 : 16))
                sets.append(addressSet(list, family: family))
                out.append(.lookup(set: sets.count - 1, inverted: false))
            case .l4proto(let p, _):
                out.append(.metaLoad(NftConstant.metaL4proto))
                out.append(.compare(NftConstant.cmpEq, [NftConstant.ipProtocol(p)]))
                knownL4 = p
            case .destinationPorts(let p, let ranges, let negated): ports(p, ranges, offset: 2, negated: negated)
            case .sourcePort(let p, let range): ports(p, [range], offset: 0, negated: false)
            case .owner(let owner, let negated):
                let (key, id) =
                    switch owner {
                    case .uid(let id): (NftConstant.metaSkuid, id.value)
                    case .gid(let id): (NftConstant.metaSkgid, id.value)
                    }
                out.append(.metaLoad(key))
                out.append(.compare(negated ? NftConstant.cmpNeq : NftConstant.cmpEq, host32(id)))
            case .mark(let mark, let negated):
                out.append(.metaLoad(NftConstant.metaMark))
                out.append(.compare(negated ? NftConstant.cmpNeq : NftConstant.cmpEq, host32(mark.value)))
            case .connmark(let mark):
                out.append(.ctLoad(NftConstant.ctMark))
                out.append(.compare(NftConstant.cmpEq, host32(mark.value)))
            case .conntrackState(let states):
                out.append(.ctLoad(NftConstant.ctState))
                out.append(.bitwise(mask: host32(states.reduce(0) { $0 | stateBit($1) })))
                out.append(.compare(NftConstant.cmpNeq, host32(0)))
            }
        }

        switch rule.target {
        case .jump(let chain): out += [.counter, .verdict(NftConstant.verdictJump, chain: chain.nftName)]
        case .return: out += [.counter, .verdict(NftConstant.verdictReturn, chain: nil)]
        case .accept: out += [.counter, .verdict(NftConstant.verdictAccept, chain: nil)]
        case .drop: out += [.counter, .verdict(NftConstant.verdictDrop, chain: nil)]
        case .redirect(let port): out += [.counter, .immediate(be16(port.value)), .redirect]
        case .tproxy(let port, let mark):
            let family = rule.family ?? .ipv4
            out += [
                .immediate(be16(port.value)),
                .tproxy(family: UInt32(family == .ipv4 ? NftConstant.nfprotoIPv4 : NftConstant.nfprotoIPv6)),
                .immediate(host32(mark.value)), .metaSet(NftConstant.metaMark),
                .counter, .verdict(NftConstant.verdictAccept, chain: nil),
            ]
        case .setMark(let mark): out += [.counter, .immediate(host32(mark.value)), .metaSet(NftConstant.metaMark)]
        case .saveMarkToConnmark: out += [.counter, .metaLoad(NftConstant.metaMark), .ctSet(NftConstant.ctMark)]
        case .restoreMarkFromConnmark: out += [.counter, .ctLoad(NftConstant.ctMark), .metaSet(NftConstant.metaMark)]
        case .conntrackZone(let zone): out += [.counter, .immediate(host16(zone)), .ctSet(NftConstant.ctZone)]
        }
        return CompiledRule(expressions: out, sets: sets)
    }

    /// `{ 53, 15008 }` as nft builds it: a constant anonymous `inet_service` set; with any
    /// range it is an interval set whose elements nft sorts, starting with a `0` end marker.
    static func portSet(_ p: L4Protocol, _ ranges: [PortRange], field: UInt8) -> AnonymousSet {
        let interval = ranges.contains { !$0.isSingle }
        var elements: [AnonymousSet.Element] = []
        if interval {
            // Sort and merge overlapping and adjacent ranges, as nft's automerge does for an
            // anonymous interval set (the kernel rejects overlapping intervals).
            var merged: [(UInt32, UInt32)] = []
            for r in ranges.sorted(by: { $0.first < $1.first }) {
                let (a, b) = (UInt32(r.first.value), UInt32(r.last.value))
                if let last = merged.last, a <= last.1 + 1 {
                    merged[merged.count - 1].1 = max(last.1, b)
                } else {
                    merged.append((a, b))
                }
            }
            if merged.first?.0 != 0 { elements.append(.init(key: be16(0), flags: NftConstant.elementIntervalEnd)) }
            for (a, b) in merged {
                elements.append(.init(key: be16(UInt16(a)), flags: 0))
                if b < 65535 { elements.append(.init(key: be16(UInt16(b + 1)), flags: NftConstant.elementIntervalEnd)) }
            }
        } else {
            elements = ranges.map { .init(key: be16($0.first.value), flags: 0) }
        }
        // nftnl udata TLVs (type, length, value): KEYBYTEORDER = big endian; for interval
        // sets MERGE_ELEMENTS = 1; KEY_TYPEOF = { expr type 7 (payload), { desc, field } }.
        var userData: [UInt8] = [0, 4] + host32(NftConstant.byteorderBigEndian)
        if interval { userData += [2, 4] + host32(1) }
        userData += [3, 20, 0, 4] + host32(7) + [1, 12, 0, 4] + host32(UInt32(NftConstant.protoDescID(p)))
        userData += [1, 4] + host32(UInt32(field))
        return AnonymousSet(
            keyType: NftConstant.typeInetService, keyLength: 2, interval: interval, elements: elements,
            userData: userData)
    }

    /// `ip daddr { 10.0.0.0/8, 192.0.2.1 }` as nft builds it: an `ipv4_addr`/`ipv6_addr`
    /// anonymous set, always an interval set (even of hosts) of
    /// sorted [network, last+1) ranges (overlapping and adjacent ones merged, as nft does), starting with a zero end marker.
    static func addressSet(_ cidrs: [CIDR], family: Family) -> AnonymousSet {
        let width = family == .ipv4 ? 4 : 16
        // nft makes every address set an interval set, even of single hosts (which it merges).
        var elements: [AnonymousSet.Element] = []
        if family == .ipv4 {
            // 32-bit arithmetic: sets of 10,000 prefixes are built at start-up.
            var ranges: [(UInt64, UInt64)] = cidrs.map { cidr in
                let first = UInt64(UInt32(truncatingIfNeeded: cidr.network.low))
                return (first, first + (UInt64(1) << UInt64(32 - cidr.prefixLength)) - 1)
            }
            ranges.sort { $0.0 < $1.0 }
            var merged: [(UInt64, UInt64)] = []
            merged.reserveCapacity(ranges.count)
            for r in ranges {
                if let last = merged.last, r.0 <= last.1 + 1 {
                    merged[merged.count - 1].1 = max(last.1, r.1)
                } else {
                    merged.append(r)
                }
            }
            func key(_ v: UInt64) -> [UInt8] {
                let x = UInt32(truncatingIfNeeded: v)
                return [UInt8(x >> 24), UInt8(x >> 16 & 0xff), UInt8(x >> 8 & 0xff), UInt8(x & 0xff)]
            }
            elements.reserveCapacity(merged.count * 2 + 1)
            if merged.first?.0 != 0 { elements.append(.init(key: key(0), flags: NftConstant.elementIntervalEnd)) }
            for (first, last) in merged {
                elements.append(.init(key: key(first), flags: 0))
                if last < 0xffff_ffff {
                    elements.append(.init(key: key(last + 1), flags: NftConstant.elementIntervalEnd))
                }
            }
        } else {
            // [first, last] as big-endian byte arrays (comparable lexicographically).
            var ranges: [([UInt8], [UInt8])] = cidrs.map { cidr in
                let first = cidr.network.bytes
                let last = zip(first, cidr.maskBytes).map { $0 | ~$1 }
                return (first, last)
            }
            ranges.sort { $0.0.lexicographicallyPrecedes($1.0) }
            var merged: [([UInt8], [UInt8])] = []
            for r in ranges {
                if let last = merged.last, !last.1.lexicographicallyPrecedes(r.0) || increment(last.1) == r.0 {
                    if last.1.lexicographicallyPrecedes(r.1) { merged[merged.count - 1].1 = r.1 }
                } else {
                    merged.append(r)
                }
            }
            let zero = [UInt8](repeating: 0, count: width)
            if merged.first?.0 != zero { elements.append(.init(key: zero, flags: NftConstant.elementIntervalEnd)) }
            for (first, last) in merged {
                elements.append(.init(key: first, flags: 0))
                if let next = increment(last) {
                    elements.append(.init(key: next, flags: NftConstant.elementIntervalEnd))
                }
            }
        }
        // udata: KEYBYTEORDER big endian; MERGE_ELEMENTS for intervals; KEY_TYPEOF
        // { payload, { desc ip (12) / ip6 (13), field daddr (12 / 9) } }.
        var userData: [UInt8] = [0, 4] + host32(NftConstant.byteorderBigEndian) + [2, 4] + host32(1)
        userData += [3, 20, 0, 4] + host32(7) + [1, 12, 0, 4] + host32(family == .ipv4 ? 12 : 13)
        userData += [1, 4] + host32(family == .ipv4 ? 12 : 9)
        return AnonymousSet(
            keyType: family == .ipv4 ? 7 : 8, keyLength: UInt32(width), interval: true, elements: elements,
            userData: userData)
    }

    /// `bytes + 1` (big endian), nil on overflow.
    static func increment(_ bytes: [UInt8]) -> [UInt8]? {
        var out = bytes
        for i in stride(from: out.count - 1, through: 0, by: -1) {
            if out[i] == 0xff {
                out[i] = 0
            } else {
                out[i] += 1
                return out
            }
        }
        return nil
    }

    /// `"lo"` → 16 bytes, NUL padded; iptables' `eth+` (nft `"eth*"`) → the 3 prefix bytes.
    static func interfaceBytes(_ name: InterfaceName) -> [UInt8] {
        if name.name.hasSuffix("+") { return Array(name.name.utf8.dropLast()) }
        let bytes = Array(name.name.utf8)
        return bytes + [UInt8](repeating: 0, count: 16 - bytes.count)
    }

    static func stateBit(_ state: ConntrackState) -> UInt32 {
        switch state {
        case .invalid: 1  // NF_CT_STATE_INVALID_BIT
        case .established: 2  // NF_CT_STATE_BIT(IP_CT_ESTABLISHED)
        case .related: 4  // NF_CT_STATE_BIT(IP_CT_RELATED)
        }
    }
}

func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }
func host16(_ v: UInt16) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }
func host32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }
