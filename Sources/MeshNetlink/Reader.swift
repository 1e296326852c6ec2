import CNftnl
import MeshModel
import MeshRender
import MeshSystem

/// One chain as the kernel (or the plan) holds it, in a comparable form.
struct ChainSnapshot: Sendable, Hashable {
    var name: String
    /// Everything about the chain that changes what it does, besides its rules:
    /// `type nat hook output priority -100` (with ` policy drop`, ` devices { … }`, ` flags 0x…`
    /// when the kernel holds them) for a base chain; nil for a plain regular chain (`flags 0x…`
    /// for one with flags, e.g. a binding chain).
    var base: String?
    /// Each rule as debug text (`[ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000006 ] …`)
    /// without handles or counter values; anonymous sets are shown by their elements and
    /// properties.
    var rules: [String]
    /// Each rule's counter (its first `counter` expression), by position; nil for a rule
    /// without one. Not part of what is compared: only `meshinit stats` reads it.
    var counters: [RuleCounter?] = []
}

/// A rule's `counter` expression: what it has matched since it was added.
public struct RuleCounter: Sendable, Hashable {
    public var packets: UInt64
    public var bytes: UInt64

    public init(packets: UInt64, bytes: UInt64) {
        self.packets = packets
        self.bytes = bytes
    }
}

/// One of our tables: its flags, chains in the order listed, and its named sets (ours has
/// none: only anonymous sets, bound to rules and shown in them).
struct TableSnapshot: Sendable, Hashable {
    var name: String
    /// `NFTA_TABLE_FLAGS` (dormant, owner, persist): ours has none.
    var flags: UInt32 = 0
    var chains: [ChainSnapshot]
    var namedSets: [String] = []
}

/// The tables of a ruleset, as one consistent snapshot.
struct RulesetSnapshot: Sendable, Hashable {
    /// Ours (`inet`), in the order asked for, with everything in them.
    var tables: [TableSnapshot]
    /// Tables of another family with one of our names, e.g. `ip istio-proxy-nat` (not ours:
    /// meshinit only makes `inet` tables; said, not compared).
    var namesakes: [String]
}

/// The kernel's table list (one dump), with the ruleset generation it was read at.
struct TableInventory: Sendable, Hashable {
    /// `NFTA_GEN_ID`, read in the same `sendmsg` as the dump, just before it.
    var generation: UInt32
    /// Which of the names asked for exist as `inet` tables, in the order asked for.
    var ours: [String]
    /// `family name` of tables with one of those names in another family.
    var namesakes: [String]
    /// NFPROTO_* values of the families that hold any table.
    var families: Set<UInt32>
    /// `NFTA_TABLE_FLAGS` of ours.
    var flags: [String: UInt32] = [:]
}

/// Reads meshinit's tables back from the kernel with netlink dumps, as one consistent
/// snapshot: as nft does, the ruleset generation (`NFT_MSG_GETGEN`) is read with the first
/// dump and again with the last, and the whole read is repeated when it changed in between
/// (a concurrent writer) — so no mix of two states ever compares "equal". Each dump on its
/// own is consistent (the kernel flags a dump that spans a change `NLM_F_DUMP_INTR`, and the
/// transport repeats it). The generation reads share a `sendmsg` with a dump: no extra round
/// trip.
///
/// Dumps (family `inet`, all tables; ours are picked out): GETGEN + GETTABLE (all families),
/// GETSET, GETSETELEM per set of ours, GETCHAIN, GETRULE + GETGEN. Flowtables and stateful
/// objects are not read: they act only through a rule of the same table, and rules are compared.
struct RulesetReader {
    var transport: any NetlinkTransport
    /// How many times a read that raced a writer is repeated before giving up.
    var attempts = 10

    init(transport: any NetlinkTransport) {
        self.transport = transport
    }

    /// The owned tables that exist, with their chains and rules (see `snapshot`).
    mutating func read(tables names: [String]) throws(NetlinkError) -> [TableSnapshot] {
        try snapshot(tables: names).tables
    }

    /// A consistent snapshot of the `inet` tables among `names` (see the type's comment).
    /// `inventory`, when given, is the first table dump (read just before, e.g. to choose a
    /// backend): it is used as the first attempt's.
    ///
    /// - Throws: `NetlinkError` — `.concurrentChange` when the ruleset changed during every
    ///   attempt.
    mutating func snapshot(tables names: [String], inventory given: TableInventory? = nil)
        throws(NetlinkError) -> RulesetSnapshot
    {
        var pending = given
        for _ in 0..<attempts {
            let inventory: TableInventory
            if let known = pending {
                inventory = known
                pending = nil
            } else {
                inventory = try self.inventory(among: names)
            }
            if inventory.ours.isEmpty { return RulesetSnapshot(tables: [], namesakes: inventory.namesakes) }
            do {
                let (tables, generation) = try readTables(inventory)
                if generation == inventory.generation {
                    return RulesetSnapshot(tables: tables, namesakes: inventory.namesakes)
                }
            } catch  where error.errno == ENOENT {
                // A set or table went away between two dumps: a writer is at work; read again.
                continue
            }
        }
        throw NetlinkError(
            .concurrentChange,
            "reading the nftables ruleset: another writer changed it during each of \(attempts) reads",
            errno: EAGAIN)
    }

    /// The table list and the generation (one `sendmsg`: GETGEN, then the GETTABLE dump).
    mutating func inventory(among names: [String]) throws(NetlinkError) -> TableInventory {
        var generation: UInt32?
        var ours: [String] = []
        var namesakes: [String] = []
        var families: Set<UInt32> = []
        var flags: [String: UInt32] = [:]
        for reply in try exchange([
            Self.generationRequest(), dumpRequest(NFT_MSG_GETTABLE, family: UInt16(NFPROTO_UNSPEC)),
        ]) {
            if let id = Self.generationID(reply) {
                generation = generation ?? id
                continue
            }
            guard Self.messageKind(reply) == UInt8(NFT_MSG_NEWTABLE.rawValue) else { continue }
            let table = try NftnlTable()
            try parse("table", reply) { nftnl_table_nlmsg_parse($0, table.raw) }
            families.insert(table.family)
            guard names.contains(table.name) else { continue }
            if table.family == UInt32(NFPROTO_INET) {
                ours.append(table.name)
                flags[table.name] = table.flags
            } else {
                namesakes.append("\(FamilyName.of(table.family)) \(table.name)")
            }
        }
        guard let generation else { throw NetlinkError(.malformedReply, "no ruleset generation (NFT_MSG_NEWGEN)") }
        return TableInventory(
            generation: generation, ours: names.filter(ours.contains), namesakes: namesakes, families: families,
            flags: flags)
    }

    /// Sets, elements, chains and rules of the inventory's tables; returns the generation
    /// read right after the last dump.
    private mutating func readTables(_ inventory: TableInventory) throws(NetlinkError) -> ([TableSnapshot], UInt32) {
        let names = Set(inventory.ours)
        // Sets first: lookups name them, and the rule text shows their elements.
        var sets: [SetKey: SetInfo] = [:]
        var named: [String: [String]] = [:]
        for reply in try exchange([dumpRequest(NFT_MSG_GETSET)]) {
            let set = try NftnlSet()
            try parse("set", reply) { nftnl_set_nlmsg_parse($0, set.raw) }
            guard names.contains(set.table) else { continue }
            sets[SetKey(table: set.table, name: set.name)] = SetInfo(set)
            if set.flags & NftConstant.setAnonymous == 0 { named[set.table, default: []].append(set.name) }
        }
        for key in sets.keys.sorted(by: { ($0.table, $0.name) < ($1.table, $1.name) }) {
            let query = try NftnlSet()
            nftnl_set_set_str(query.raw, attr(NFTNL_SET_TABLE), key.table)
            nftnl_set_set_str(query.raw, attr(NFTNL_SET_NAME), key.name)
            nftnl_set_set_u32(query.raw, attr(NFTNL_SET_FAMILY), UInt32(NFPROTO_INET))
            let holder = try NftnlSet()
            for reply in try exchange([
                dumpRequest(NFT_MSG_GETSETELEM) { nftnl_set_elems_nlmsg_build_payload($0, query.raw) }
            ]) {
                try parse("set elements", reply) { nftnl_set_elems_nlmsg_parse($0, holder.raw) }
            }
            sets[key]?.elements = holder.elementTexts
        }

        var tables = inventory.ours.map {
            TableSnapshot(name: $0, flags: inventory.flags[$0] ?? 0, chains: [], namedSets: named[$0] ?? [])
        }
        for reply in try exchange([dumpRequest(NFT_MSG_GETCHAIN)]) {
            let chain = try NftnlChain()
            try parse("chain", reply) { nftnl_chain_nlmsg_parse($0, chain.raw) }
            guard chain.family == UInt32(NFPROTO_INET), let index = tables.firstIndex(where: { $0.name == chain.table })
            else { continue }
            tables[index].chains.append(ChainSnapshot(name: chain.name, base: chain.baseSpec, rules: []))
        }
        var generation: UInt32?
        for reply in try exchange([dumpRequest(NFT_MSG_GETRULE), Self.generationRequest()]) {
            if let id = Self.generationID(reply) {
                generation = id
                continue
            }
            let rule = try NftnlRule()
            try parse("rule", reply) { nftnl_rule_nlmsg_parse($0, rule.raw) }
            guard rule.family == UInt32(NFPROTO_INET), let t = tables.firstIndex(where: { $0.name == rule.table }),
                let c = tables[t].chains.firstIndex(where: { $0.name == rule.chain })
            else { continue }
            let table = rule.table
            tables[t].chains[c].counters.append(RuleText.counter(rule))
            tables[t].chains[c].rules.append(
                RuleText.render(rule) { setName, _ in
                    sets[SetKey(table: table, name: setName)]?.text ?? "{ ? }"
                })
        }
        guard let generation else { throw NetlinkError(.malformedReply, "no ruleset generation (NFT_MSG_NEWGEN)") }
        return (tables, generation)
    }

    /// Whether the kernel holds any table of `family` (an NFPROTO_* value).
    mutating func hasTables(family: UInt16) throws(NetlinkError) -> Bool {
        !(try exchange([dumpRequest(NFT_MSG_GETTABLE, family: family)])).isEmpty
    }

    /// Chains of the `ip`/`ip6` tables (where iptables-nft keeps its rules) whose name
    /// starts with `prefix`, as "ip nat ISTIO_OUTPUT".
    mutating func xtablesChains(prefix: String) throws(NetlinkError) -> [String] {
        var out: [String] = []
        for reply in try exchange([dumpRequest(NFT_MSG_GETCHAIN, family: UInt16(NFPROTO_UNSPEC))]) {
            let chain = try NftnlChain()
            try parse("chain", reply) { nftnl_chain_nlmsg_parse($0, chain.raw) }
            let family: String? =
                switch chain.family {
                case UInt32(NFPROTO_IPV4): "ip"
                case UInt32(NFPROTO_IPV6): "ip6"
                default: nil
                }
            if let family, chain.name.hasPrefix(prefix) { out.append("\(family) \(chain.table) \(chain.name)") }
        }
        return out
    }

    /// The sequence number written in requests; the transport replaces it with a fresh one.
    private static let placeholderSequence: UInt32 = 0

    /// A dump request (`NLM_F_DUMP`) of `type` for `family`, with `payload` filling in a filter.
    private func dumpRequest(
        _ type: nf_tables_msg_types, family: UInt16 = familyInet,
        _ payload: (UnsafeMutablePointer<nlmsghdr>) -> Void = { _ in }
    ) -> [UInt8] {
        var buffer = [CChar](repeating: 0, count: 4096)
        return buffer.withUnsafeMutableBufferPointer { chars in
            guard
                let base = chars.baseAddress,
                let header = nftnl_nlmsg_build_hdr(
                    base, messageType(type), family, UInt16(NLM_F_DUMP | NLM_F_REQUEST), Self.placeholderSequence)
            else { return [] }
            payload(header)
            return Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(header), count: Int(header.pointee.nlmsg_len)))
        }
    }

    /// `NFT_MSG_GETGEN`: the kernel answers with `NFT_MSG_NEWGEN` carrying `NFTA_GEN_ID`.
    static func generationRequest() -> [UInt8] {
        let type = UInt16(NFNL_SUBSYS_NFTABLES) << 8 | UInt16(NFT_MSG_GETGEN.rawValue)
        var out: [UInt8] = []
        for value in [UInt32(20)] { withUnsafeBytes(of: value.littleEndian) { out += $0 } }
        withUnsafeBytes(of: type.littleEndian) { out += $0 }
        withUnsafeBytes(of: UInt16(NLM_F_REQUEST).littleEndian) { out += $0 }
        out += [UInt8](repeating: 0, count: 8)  // seq (the transport's), pid
        out += [UInt8(NFPROTO_UNSPEC), UInt8(NFNETLINK_V0), 0, 0]  // nfgenmsg
        return out
    }

    /// The generation of an `NFT_MSG_NEWGEN` reply; nil for any other message.
    static func generationID(_ reply: [UInt8]) -> UInt32? {
        guard reply.count >= 20, messageKind(reply) == UInt8(NFT_MSG_NEWGEN.rawValue) else { return nil }
        var offset = 20
        while offset + 4 <= reply.count {
            let length = Int(reply[offset]) | Int(reply[offset + 1]) << 8
            let type = (UInt16(reply[offset + 2]) | UInt16(reply[offset + 3]) << 8) & 0x3fff
            guard length >= 4, offset + length <= reply.count else { return nil }
            if type == UInt16(NFTA_GEN_ID.rawValue), length >= 8 {
                return reply[(offset + 4)..<(offset + 8)].reduce(0) { $0 << 8 | UInt32($1) }  // big endian
            }
            offset += (length + 3) & ~3
        }
        return nil
    }

    /// The nf_tables message type of a reply (the low byte of `nlmsg_type`), 0 if not nf_tables.
    static func messageKind(_ reply: [UInt8]) -> UInt8 {
        guard reply.count >= 6, reply[5] == UInt8(NFNL_SUBSYS_NFTABLES) else { return 0 }
        return reply[4]
    }

    private mutating func exchange(_ requests: [[UInt8]]) throws(NetlinkError) -> [[UInt8]] {
        try transport.dump(requests.flatMap { $0 })
    }

    private func parse(_ what: String, _ reply: [UInt8], _ body: (UnsafePointer<nlmsghdr>) -> Int32)
        throws(NetlinkError)
    {
        let status = reply.withUnsafeBytes { raw -> Int32 in
            guard let base = raw.baseAddress else { return -1 }
            return body(base.assumingMemoryBound(to: nlmsghdr.self))
        }
        guard status >= 0 else { throw NetlinkError(.malformedReply, "dump of \(what)") }
    }
}

/// A set of one of our tables.
struct SetKey: Hashable {
    var table: String
    var name: String
}

/// A set's properties that change what a lookup in it matches, and its elements.
struct SetInfo {
    var flags: UInt32
    var keyLength: UInt32
    var dataLength: UInt32?
    var expressions: [String]
    var elements: [String] = []

    init(_ set: NftnlSet) {
        flags = set.flags
        keyLength = set.keyLength
        dataLength = set.dataLength
        expressions = set.expressionTexts
    }

    init(flags: UInt32, keyLength: UInt32, elements: [String]) {
        self.flags = flags
        self.keyLength = keyLength
        dataLength = nil
        expressions = []
        self.elements = elements
    }

    /// `{ 0x0035, 0x3aa0 } flags 0x3 keylen 2`: elements sorted (kernel order, hash or tree,
    /// does not matter), then the properties.
    var text: String {
        var out = "{ " + elements.sorted().joined(separator: ", ") + " } flags 0x" + String(flags, radix: 16)
        out += " keylen \(keyLength)"
        if let dataLength { out += " datalen \(dataLength)" }
        for expression in expressions { out += " [ \(expression) ]" }
        return out
    }
}

/// Family names as nft writes them.
enum FamilyName {
    static func of(_ family: UInt32) -> String {
        switch family {
        case UInt32(NFPROTO_IPV4): "ip"
        case UInt32(NFPROTO_IPV6): "ip6"
        case UInt32(NFPROTO_INET): "inet"
        case UInt32(NFPROTO_ARP): "arp"
        case UInt32(NFPROTO_BRIDGE): "bridge"
        case UInt32(NFPROTO_NETDEV): "netdev"
        default: "family\(family)"
        }
    }
}

/// The debug text of a rule: libnftnl's per-expression output (`nftnl_expr_snprintf`, the
/// same text as `nft --debug=netlink`), with counters reduced to `[ counter ]` and anonymous
/// set lookups showing the set's elements instead of its kernel-assigned name.
enum RuleText {
    static func render(_ rule: NftnlRule, elements: (String, UInt32) -> String) -> String {
        var parts: [String] = []
        rule.forEachExpression { expr in
            let name = string(nftnl_expr_get_str(expr, attr(NFTNL_EXPR_NAME)))
            switch name {
            case "counter":
                parts.append("[ counter ]")
            case "lookup":
                let register = nftnl_expr_get_u32(expr, attr(NFTNL_EXPR_LOOKUP_SREG))
                let set = string(nftnl_expr_get_str(expr, attr(NFTNL_EXPR_LOOKUP_SET)))
                let id = nftnl_expr_get_u32(expr, attr(NFTNL_EXPR_LOOKUP_SET_ID))
                var flags: UInt32 = 0
                if nftnl_expr_is_set(expr, attr(NFTNL_EXPR_LOOKUP_FLAGS)) {
                    flags = nftnl_expr_get_u32(expr, attr(NFTNL_EXPR_LOOKUP_FLAGS))
                }
                let inverted = flags & NftConstant.lookupInverted != 0 ? " inverted" : ""
                // A map lookup (a destination register) is another expression altogether.
                var map = ""
                if nftnl_expr_is_set(expr, attr(NFTNL_EXPR_LOOKUP_DREG)) {
                    map = " dreg \(nftnl_expr_get_u32(expr, attr(NFTNL_EXPR_LOOKUP_DREG)))"
                }
                parts.append("[ lookup reg \(register) set \(elements(set, id))\(map)\(inverted) ]")
            case "redir" where nftnl_expr_is_set(expr, attr(NFTNL_EXPR_REDIR_REG_PROTO_MIN)):
                // The kernel reports proto_max = proto_min when only the minimum was sent.
                let low = nftnl_expr_get_u32(expr, attr(NFTNL_EXPR_REDIR_REG_PROTO_MIN))
                var high = low
                if nftnl_expr_is_set(expr, attr(NFTNL_EXPR_REDIR_REG_PROTO_MAX)) {
                    high = nftnl_expr_get_u32(expr, attr(NFTNL_EXPR_REDIR_REG_PROTO_MAX))
                }
                let flags = nftnl_expr_get_u32(expr, attr(NFTNL_EXPR_REDIR_FLAGS))
                parts.append("[ redir proto_min reg \(low) proto_max reg \(high) flags 0x\(String(flags, radix: 16)) ]")
            default:
                parts.append("[ \(expressionText(expr)) ]")
            }
        }
        return parts.joined(separator: " ")
    }

    /// The values of the rule's first `counter` expression (nil: it has none).
    static func counter(_ rule: NftnlRule) -> RuleCounter? {
        var found: RuleCounter?
        rule.forEachExpression { expr in
            guard found == nil, string(nftnl_expr_get_str(expr, attr(NFTNL_EXPR_NAME))) == "counter" else { return }
            found = RuleCounter(
                packets: nftnl_expr_get_u64(expr, attr(NFTNL_EXPR_CTR_PACKETS)),
                bytes: nftnl_expr_get_u64(expr, attr(NFTNL_EXPR_CTR_BYTES)))
        }
        return found
    }

    /// One element: its key in hex, `end` for an interval end, and anything else it holds
    /// (data, a verdict, expressions), which a lookup would act on.
    static func element(key: [UInt8], flags: UInt32, extra: String = "") -> String {
        "0x" + hex(key) + (flags & NftConstant.elementIntervalEnd != 0 ? " end" : "")
            + (flags & ~NftConstant.elementIntervalEnd != 0 ? " flags 0x" + String(flags, radix: 16) : "") + extra
    }

    static func hex(_ bytes: [UInt8]) -> String {
        bytes.map { byte in
            let digits = String(byte, radix: 16)
            return digits.count == 1 ? "0" + digits : digits
        }.joined()
    }

    /// The text of an expression as libnftnl prints it (`nftnl_expr_snprintf`).
    static func expressionText(_ expr: OpaquePointer) -> String {
        let name = string(nftnl_expr_get_str(expr, attr(NFTNL_EXPR_NAME)))
        var buffer = [CChar](repeating: 0, count: 1024)
        let count = buffer.withUnsafeMutableBufferPointer {
            nftnl_expr_snprintf($0.baseAddress, $0.count, expr, UInt32(NFTNL_OUTPUT_DEFAULT.rawValue), 0)
        }
        let text =
            count > 0
            ? String(
                decoding: buffer.prefix(min(Int(count), buffer.count - 1)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            : ""
        return "\(name) \(trimSpaces(text))"
    }

    /// The text the plan's rule should have once installed.
    static func expected(_ compiled: CompiledRule) throws(NetlinkError) -> String {
        let ids = (0..<compiled.sets.count).map { UInt32($0 + 1) }
        let rule = try RuleEncoder.rule(table: "", chain: "", compiled: compiled, setIDs: ids)
        return render(rule) { _, id in
            let index = Int(id) - 1
            guard index >= 0, index < compiled.sets.count else { return "{ ? }" }
            let set = compiled.sets[index]
            var flags = NftConstant.setAnonymous | NftConstant.setConstant
            if set.interval { flags |= NftConstant.setInterval }
            return SetInfo(
                flags: flags, keyLength: set.keyLength,
                elements: set.elements.map { element(key: $0.key, flags: $0.flags) }
            ).text
        }
    }

    private static func trimSpaces(_ text: String) -> String {
        var s = Substring(text)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
