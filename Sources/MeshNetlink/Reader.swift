import CNftnl
import MeshModel
import MeshRender

/// One chain as the kernel (or the plan) holds it, in a comparable form.
struct ChainSnapshot: Sendable, Hashable {
    var name: String
    /// `type nat hook output priority -100`, nil for a regular chain.
    var base: String?
    /// Each rule as debug text (`[ meta load l4proto => reg 1 ] [ cmp eq reg 1 0x00000006 ] …`)
    /// without handles or counter values; anonymous sets are shown by their elements.
    var rules: [String]
}

/// One of our tables: chains in the order listed.
struct TableSnapshot: Sendable, Hashable {
    var name: String
    var chains: [ChainSnapshot]
}

/// Reads meshinit's tables back from the kernel with netlink dumps (GETTABLE, GETCHAIN,
/// GETRULE, GETSET, GETSETELEM; family inet), and renders the plan in the same form.
struct RulesetReader {
    var transport: any NetlinkTransport
    private var sequence: UInt32 = 0x4d53_0000

    init(transport: any NetlinkTransport) {
        self.transport = transport
    }

    /// The owned tables that exist, with their chains and rules.
    mutating func read(tables names: [String]) throws(NetlinkError) -> [TableSnapshot] {
        let present = try tableNames(among: names)
        var out: [TableSnapshot] = []
        for name in names where present.contains(name) {
            out.append(try readTable(name))
        }
        return out
    }

    /// Which of `names` exist as `inet` tables (one GETTABLE dump).
    mutating func tableNames(among names: [String]) throws(NetlinkError) -> [String] {
        var present: [String] = []
        for reply in try dump(NFT_MSG_GETTABLE, { _ in }) {
            let table = try NftnlTable()
            try parse("table", reply) { nftnl_table_nlmsg_parse($0, table.raw) }
            if table.family == UInt32(NFPROTO_INET) && names.contains(table.name) { present.append(table.name) }
        }
        return names.filter(present.contains)
    }

    mutating func readTable(_ name: String) throws(NetlinkError) -> TableSnapshot {
        // Sets first: lookups name them, and the text shows their elements.
        let setQuery = try NftnlSet()
        nftnl_set_set_str(setQuery.raw, attr(NFTNL_SET_TABLE), name)
        var setNames: [String] = []
        for reply in try dump(NFT_MSG_GETSET, { nftnl_set_nlmsg_build_payload($0, setQuery.raw) }) {
            let set = try NftnlSet()
            try parse("set", reply) { nftnl_set_nlmsg_parse($0, set.raw) }
            if set.table == name { setNames.append(set.name) }
        }
        var elements: [String: String] = [:]
        for setName in setNames {
            let query = try NftnlSet()
            nftnl_set_set_str(query.raw, attr(NFTNL_SET_TABLE), name)
            nftnl_set_set_str(query.raw, attr(NFTNL_SET_NAME), setName)
            nftnl_set_set_u32(query.raw, attr(NFTNL_SET_FAMILY), UInt32(NFPROTO_INET))
            let holder = try NftnlSet()
            for reply in try dump(NFT_MSG_GETSETELEM, { nftnl_set_elems_nlmsg_build_payload($0, query.raw) }) {
                try parse("set elements", reply) { nftnl_set_elems_nlmsg_parse($0, holder.raw) }
            }
            elements[setName] = RuleText.elements(holder.elements.map { ($0.key, $0.flags) })
        }

        var chains: [ChainSnapshot] = []
        for reply in try dump(NFT_MSG_GETCHAIN, { _ in }) {
            let chain = try NftnlChain()
            try parse("chain", reply) { nftnl_chain_nlmsg_parse($0, chain.raw) }
            guard chain.family == UInt32(NFPROTO_INET), chain.table == name else { continue }
            chains.append(ChainSnapshot(name: chain.name, base: chain.baseSpec, rules: []))
        }
        let ruleQuery = try NftnlRule()
        nftnl_rule_set_str(ruleQuery.raw, attr(NFTNL_RULE_TABLE), name)
        for reply in try dump(NFT_MSG_GETRULE, { nftnl_rule_nlmsg_build_payload($0, ruleQuery.raw) }) {
            let rule = try NftnlRule()
            try parse("rule", reply) { nftnl_rule_nlmsg_parse($0, rule.raw) }
            guard rule.family == UInt32(NFPROTO_INET), rule.table == name,
                let index = chains.firstIndex(where: { $0.name == rule.chain })
            else { continue }
            chains[index].rules.append(RuleText.render(rule) { setName, _ in elements[setName] ?? "{ ? }" })
        }
        return TableSnapshot(name: name, chains: chains)
    }

    /// Whether the kernel holds any table of `family` (an NFPROTO_* value).
    mutating func hasTables(family: UInt16) throws(NetlinkError) -> Bool {
        !(try dump(NFT_MSG_GETTABLE, family: family, { _ in })).isEmpty
    }

    /// Chains of the `ip`/`ip6` tables (where iptables-nft keeps its rules) whose name
    /// starts with `prefix`, as "ip nat ISTIO_OUTPUT".
    mutating func xtablesChains(prefix: String) throws(NetlinkError) -> [String] {
        var out: [String] = []
        for reply in try dump(NFT_MSG_GETCHAIN, family: UInt16(NFPROTO_UNSPEC), { _ in }) {
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

    private mutating func dump(
        _ type: nf_tables_msg_types, family: UInt16 = familyInet, _ payload: (UnsafeMutablePointer<nlmsghdr>) -> Void
    ) throws(NetlinkError) -> [[UInt8]] {
        sequence &+= 1
        var buffer = [CChar](repeating: 0, count: 4096)
        let request: [UInt8] = buffer.withUnsafeMutableBufferPointer { chars in
            guard
                let base = chars.baseAddress,
                let header = nftnl_nlmsg_build_hdr(
                    base, messageType(type), family, UInt16(NLM_F_DUMP | NLM_F_REQUEST), sequence)
            else { return [] }
            payload(header)
            return Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(header), count: Int(header.pointee.nlmsg_len)))
        }
        return try transport.dump(request)
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
                parts.append("[ lookup reg \(register) set \(elements(set, id))\(inverted) ]")
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
                var buffer = [CChar](repeating: 0, count: 1024)
                let count = buffer.withUnsafeMutableBufferPointer {
                    nftnl_expr_snprintf($0.baseAddress, $0.count, expr, UInt32(NFTNL_OUTPUT_DEFAULT.rawValue), 0)
                }
                let text =
                    count > 0
                    ? String(decoding: buffer.prefix(Int(count)).map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
                parts.append("[ \(name) \(trimSpaces(text)) ]")
            }
        }
        return parts.joined(separator: " ")
    }

    /// `{ 0x0035, 0x3aa0 }`; interval ends are marked `end`. Sorted, so kernel order
    /// (hash or tree) does not matter.
    static func elements(_ list: [(key: [UInt8], flags: UInt32)]) -> String {
        let items = list.map { element -> String in
            let hex = element.key.map { byte in
                let digits = String(byte, radix: 16)
                return digits.count == 1 ? "0" + digits : digits
            }.joined()
            return "0x" + hex + (element.flags & NftConstant.elementIntervalEnd != 0 ? " end" : "")
        }
        return "{ " + items.sorted().joined(separator: ", ") + " }"
    }

    /// The text the plan's rule should have once installed.
    static func expected(_ compiled: CompiledRule) throws(NetlinkError) -> String {
        let ids = (0..<compiled.sets.count).map { UInt32($0 + 1) }
        let rule = try RuleEncoder.rule(table: "", chain: "", compiled: compiled, setIDs: ids)
        return render(rule) { _, id in
            let index = Int(id) - 1
            guard index >= 0, index < compiled.sets.count else { return "{ ? }" }
            return elements(compiled.sets[index].elements.map { ($0.key, $0.flags) })
        }
    }

    private static func trimSpaces(_ text: String) -> String {
        var s = Substring(text)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
