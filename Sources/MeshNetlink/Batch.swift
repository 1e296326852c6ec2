import CNftnl
import MeshModel
import MeshRender

#if canImport(Glibc)
    import Glibc
#endif

/// A finished nf_tables transaction: the bytes of one `sendmsg`, from `NFNL_MSG_BATCH_BEGIN`
/// to `NFNL_MSG_BATCH_END`, plus what each message is, so an error ack can name its object.
///
/// Only `BatchWriter.finish()` makes one, so a batch that reaches a transport is complete.
public struct Batch: Sendable, Hashable {
    /// One message of the batch.
    public struct Message: Sendable, Hashable {
        /// The netlink sequence number (the kernel echoes it in the ack).
        public var sequence: UInt32
        let label: Label

        /// The object as nft text, e.g. `add rule inet istio-proxy-nat output counter jump istio-output`
        /// (rendered on demand: it is only needed for a message, and costs more than the bytes).
        public var subject: String {
            switch label {
            case .text(let text): text
            case .rule(let prefix, let rule): prefix + NftScript.statement(rule)
            }
        }
    }

    /// A message's subject: text, or a rule whose nft text is rendered when asked for.
    enum Label: Sendable, Hashable {
        case text(String)
        case rule(prefix: String, Rule)

        func prefixed(_ words: String) -> Label {
            switch self {
            case .text(let text): .text(words + text)
            case .rule(let prefix, let rule): .rule(prefix: words + prefix, rule)
            }
        }
    }

    /// The wire bytes.
    public let bytes: [UInt8]
    /// The messages that carry `NLM_F_ACK` (everything but begin/end), in order.
    public let messages: [Message]
    /// Sequence number of the begin message (a failed commit is reported with it).
    public let beginSequence: UInt32

    /// The subject of the message with `sequence`, if it is part of this batch.
    public func subject(ofSequence sequence: UInt32) -> String? {
        if sequence == beginSequence { return "commit" }
        let index = Int(Int64(sequence) - Int64(beginSequence) - 1)
        guard index >= 0, index < messages.count, messages[index].sequence == sequence else {
            return messages.first { $0.sequence == sequence }?.subject
        }
        return messages[index].subject
    }
}

/// Appends nf_tables messages into one transaction. Sequence numbers start at the given
/// value and increase by one per message (begin, each object, end), so the bytes are
/// deterministic.
///
/// ```
/// nlmsghdr (16 bytes): len u32 | type u16 = subsys<<8|msg | flags u16 | seq u32 | pid u32 = 0
/// nfgenmsg (4 bytes):  family u8 | version u8 = 0 | res_id be16 (NFNL_SUBSYS_NFTABLES on begin/end)
/// attributes:          nla_len u16 | nla_type u16 | value, padded to 4
/// ```
final class BatchWriter {
    /// Largest single message: nested attribute lengths are u16.
    static let messageLimit = 65535
    /// Elements per NEWSETELEM message (1,024 CIDR/port elements stay well under 64 KiB).
    static let elementsPerMessage = 1024

    private var bytes: [UInt8] = []
    private var messages: [Batch.Message] = []
    private var sequence: UInt32
    private let beginSequence: UInt32
    private let scratch: UnsafeMutablePointer<CChar>
    private static let scratchSize = 2 * 65536
    private var nextSetID: UInt32 = 1

    init(firstSequence: UInt32) {
        sequence = firstSequence
        beginSequence = firstSequence
        scratch = UnsafeMutablePointer<CChar>.allocate(capacity: BatchWriter.scratchSize)
        scratch.initialize(repeating: 0, count: BatchWriter.scratchSize)
        let header = nftnl_batch_begin(scratch, sequence)
        append(header)
        sequence &+= 1
    }

    deinit { scratch.deallocate() }

    /// Copies the message out and zeroes the scratch bytes it used: libnftnl does not
    /// clear everything it skips over, and nft builds into zeroed pages, so each message
    /// starts from a zeroed buffer (deterministic bytes).
    private func append(_ header: UnsafeMutablePointer<nlmsghdr>?) {
        guard let header else { return }
        let length = Int(header.pointee.nlmsg_len)
        bytes += UnsafeRawBufferPointer(start: UnsafeRawPointer(header), count: length)
        memset(scratch, 0, min((length + 3) & ~3, BatchWriter.scratchSize))
    }

    /// Builds one message with `payload` filling in the attributes.
    private func message(
        _ type: nf_tables_msg_types, flags: Int32, subject: Batch.Label,
        _ payload: (UnsafeMutablePointer<nlmsghdr>) -> Void
    ) throws(NetlinkError) {
        guard
            let header = nftnl_nlmsg_build_hdr(
                scratch, messageType(type), familyInet, UInt16(flags | NLM_F_ACK), sequence)
        else { throw NetlinkError(.allocation, Batch.Message(sequence: sequence, label: subject).subject) }
        payload(header)
        guard Int(header.pointee.nlmsg_len) <= BatchWriter.messageLimit else {
            throw NetlinkError(.messageTooLarge, Batch.Message(sequence: sequence, label: subject).subject)
        }
        append(header)
        messages.append(Batch.Message(sequence: sequence, label: subject))
        sequence &+= 1
    }

    /// `add table inet NAME` (NEWTABLE, a no-op when it exists), or with `exclusive`
    /// `create table inet NAME` (fails with EEXIST when it exists).
    func addTable(_ name: String, exclusive: Bool = false) throws(NetlinkError) {
        let table = try NftnlTable(name: name)
        nftnl_table_set_u32(table.raw, attr(NFTNL_TABLE_FLAGS), 0)
        let flags = exclusive ? NLM_F_CREATE | NLM_F_EXCL : NLM_F_CREATE
        let verb = exclusive ? "create" : "add"
        try message(NFT_MSG_NEWTABLE, flags: flags, subject: .text("\(verb) table inet \(name)")) {
            nftnl_table_nlmsg_build_payload($0, table.raw)
        }
    }

    /// `delete table inet NAME` (DELTABLE: the table, its chains, rules and sets).
    func deleteTable(_ name: String) throws(NetlinkError) {
        let table = try NftnlTable(name: name)
        try message(NFT_MSG_DELTABLE, flags: 0, subject: .text("delete table inet \(name)")) {
            nftnl_table_nlmsg_build_payload($0, table.raw)
        }
    }

    /// `add chain inet TABLE NAME [{ type T hook H priority P ; }]`.
    func addChain(table: String, name: String, base: (type: String, hook: Hook, priority: Int32)?) throws(NetlinkError)
    {
        let chain = try NftnlChain(table: table, name: name)
        var subject = "add chain inet \(table) \(name)"
        if let base {
            nftnl_chain_set_str(chain.raw, attr(NFTNL_CHAIN_TYPE), base.type)
            subject += " { type \(base.type) hook \(base.hook.rawValue) priority \(base.priority) ; }"
        }
        try message(NFT_MSG_NEWCHAIN, flags: NLM_F_CREATE, subject: .text(subject)) { header in
            nftnl_chain_nlmsg_build_payload(header, chain.raw)
            guard let base else { return }
            // nft appends the hook nest itself, after the type (libnftnl would put it before):
            // NFTA_CHAIN_HOOK { NFTA_HOOK_HOOKNUM be32, NFTA_HOOK_PRIORITY be32 }.
            let nest = mnl_attr_nest_start(header, UInt16(NFTA_CHAIN_HOOK.rawValue))
            mnl_attr_put_u32(header, UInt16(NFTA_HOOK_HOOKNUM.rawValue), HookNumber.of(base.hook).bigEndian)
            mnl_attr_put_u32(header, UInt16(NFTA_HOOK_PRIORITY.rawValue), UInt32(bitPattern: base.priority).bigEndian)
            mnl_attr_nest_end(header, nest)
        }
    }

    /// `add rule inet TABLE CHAIN …`: first the rule's anonymous sets (NEWSET, then
    /// NEWSETELEM in chunks), then NEWRULE with `NLM_F_APPEND`.
    func addRule(table: String, chain: String, compiled: CompiledRule, text: String) throws(NetlinkError) {
        try addRule(
            table: table, chain: chain, compiled: compiled, label: .text("add rule inet \(table) \(chain) \(text)"))
    }

    /// `add rule inet TABLE CHAIN <rule>`; the nft text is rendered only if asked for.
    func addRule(table: String, chain: String, compiled: CompiledRule, rule: Rule) throws(NetlinkError) {
        try addRule(
            table: table, chain: chain, compiled: compiled,
            label: .rule(prefix: "add rule inet \(table) \(chain) ", rule))
    }

    private func addRule(table: String, chain: String, compiled: CompiledRule, label subject: Batch.Label)
        throws(NetlinkError)
    {
        var setIDs: [UInt32] = []
        for set in compiled.sets {
            let id = nextSetID
            nextSetID += 1
            setIDs.append(id)
            try addAnonymousSet(set, id: id, table: table, subject: subject)
        }
        let rule = try RuleEncoder.rule(table: table, chain: chain, compiled: compiled, setIDs: setIDs)
        try message(NFT_MSG_NEWRULE, flags: NLM_F_CREATE | NLM_F_APPEND, subject: subject) {
            nftnl_rule_nlmsg_build_payload($0, rule.raw)
        }
    }

    private func addAnonymousSet(_ set: AnonymousSet, id: UInt32, table: String, subject: Batch.Label)
        throws(NetlinkError)
    {
        let header = try NftnlSet()
        let s = header.raw
        nftnl_set_set_str(s, attr(NFTNL_SET_TABLE), table)
        nftnl_set_set_str(s, attr(NFTNL_SET_NAME), "__set%d")
        nftnl_set_set_u32(s, attr(NFTNL_SET_FAMILY), UInt32(NFPROTO_INET))
        nftnl_set_set_u32(s, attr(NFTNL_SET_ID), id)
        var flags = NftConstant.setAnonymous | NftConstant.setConstant
        if set.interval { flags |= NftConstant.setInterval }
        nftnl_set_set_u32(s, attr(NFTNL_SET_FLAGS), flags)
        nftnl_set_set_u32(s, attr(NFTNL_SET_KEY_TYPE), set.keyType)
        nftnl_set_set_u32(s, attr(NFTNL_SET_KEY_LEN), set.keyLength)
        nftnl_set_set_u32(s, attr(NFTNL_SET_DESC_SIZE), UInt32(set.elements.count))
        set.userData.withUnsafeBytes {
            _ = nftnl_set_set_data(s, attr(NFTNL_SET_USERDATA), $0.baseAddress, UInt32($0.count))
        }
        try message(NFT_MSG_NEWSET, flags: NLM_F_CREATE, subject: subject.prefixed("add anonymous set for: ")) {
            nftnl_set_nlmsg_build_payload($0, s)
        }
        var start = 0
        while start < set.elements.count {
            let chunk = set.elements[start..<min(start + BatchWriter.elementsPerMessage, set.elements.count)]
            // Only elements in the libnftnl set: nft writes table, set name and set id itself,
            // in that order (libnftnl would write name, id, table).
            let elements = try NftnlSet()
            for element in chunk { try elements.addElement(key: element.key, flags: element.flags) }
            try message(NFT_MSG_NEWSETELEM, flags: NLM_F_CREATE, subject: subject.prefixed("add set elements for: ")) {
                mnl_attr_put_strz($0, UInt16(NFTA_SET_ELEM_LIST_TABLE.rawValue), table)
                mnl_attr_put_strz($0, UInt16(NFTA_SET_ELEM_LIST_SET.rawValue), "__set%d")
                mnl_attr_put_u32($0, UInt16(NFTA_SET_ELEM_LIST_SET_ID.rawValue), id.bigEndian)
                nftnl_set_elems_nlmsg_build_payload($0, elements.raw)
            }
            start += BatchWriter.elementsPerMessage
        }
    }

    /// Closes the transaction.
    func finish() -> Batch {
        append(nftnl_batch_end(scratch, sequence))
        return Batch(bytes: bytes, messages: messages, beginSequence: beginSequence)
    }
}

/// Expressions → libnftnl objects (one place that knows every expression's attributes).
enum RuleEncoder {
    static func rule(table: String, chain: String, compiled: CompiledRule, setIDs: [UInt32]) throws(NetlinkError)
        -> NftnlRule
    {
        let rule = try NftnlRule(table: table, chain: chain)
        for expression in compiled.expressions {
            try add(expression, to: rule, setIDs: setIDs)
        }
        return rule
    }

    static func add(_ expression: Expression, to rule: NftnlRule, setIDs: [UInt32]) throws(NetlinkError) {
        let r1 = NftConstant.register1
        switch expression {
        case .metaLoad(let key):
            try rule.add("meta") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_META_KEY), key)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_META_DREG), r1)
            }
        case .metaSet(let key):
            try rule.add("meta") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_META_KEY), key)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_META_SREG), r1)
            }
        case .compare(let op, let data):
            try rule.add("cmp") { e in
                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_CMP_SREG), r1)
                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_CMP_OP), op)
                setData(e, attr(NFTNL_EXPR_CMP_DATA), data)
            }
        case .payload(let base, let offset, let length):
            try rule.add("payload") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_PAYLOAD_DREG), r1)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_PAYLOAD_BASE), base)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_PAYLOAD_OFFSET), offset)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_PAYLOAD_LEN), length)
            }
        case .bitwise(let mask):
            try rule.add("bitwise") { e in
                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_BITWISE_SREG), r1)
                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_BITWISE_DREG), r1)
                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_BITWISE_LEN), UInt32(mask.count))
                setData(e, attr(NFTNL_EXPR_BITWISE_MASK), mask)
                setData(e, attr(NFTNL_EXPR_BITWISE_XOR), [UInt8](repeating: 0, count: mask.count))
            }
        case .range(let op, let from, let to):
            try rule.add("range") { e in
                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_RANGE_SREG), r1)
                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_RANGE_OP), op)
                setData(e, attr(NFTNL_EXPR_RANGE_FROM_DATA), from)
                setData(e, attr(NFTNL_EXPR_RANGE_TO_DATA), to)
            }
        case .lookup(let index, let inverted):
            let id = index < setIDs.count ? setIDs[index] : 0
            try rule.add("lookup") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_LOOKUP_SREG), r1)
                nftnl_expr_set_str($0, attr(NFTNL_EXPR_LOOKUP_SET), "__set%d")
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_LOOKUP_SET_ID), id)
                if inverted { nftnl_expr_set_u32($0, attr(NFTNL_EXPR_LOOKUP_FLAGS), NftConstant.lookupInverted) }
            }
        case .counter:
            try rule.add("counter") { _ in }
        case .verdict(let verdict, let chain):
            try rule.add("immediate") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_IMM_DREG), NftConstant.registerVerdict)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_IMM_VERDICT), UInt32(bitPattern: verdict))
                if let chain { nftnl_expr_set_str($0, attr(NFTNL_EXPR_IMM_CHAIN), chain) }
            }
        case .immediate(let data):
            try rule.add("immediate") { e in
                nftnl_expr_set_u32(e, attr(NFTNL_EXPR_IMM_DREG), r1)
                setData(e, attr(NFTNL_EXPR_IMM_DATA), data)
            }
        case .redirect:
            try rule.add("redir") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_REDIR_REG_PROTO_MIN), r1)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_REDIR_FLAGS), NftConstant.natRangeProtoSpecified)
            }
        case .tproxy(let family):
            try rule.add("tproxy") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_TPROXY_FAMILY), family)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_TPROXY_REG_PORT), r1)
            }
        case .ctLoad(let key):
            try rule.add("ct") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_CT_KEY), key)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_CT_DREG), r1)
            }
        case .ctSet(let key):
            try rule.add("ct") {
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_CT_KEY), key)
                nftnl_expr_set_u32($0, attr(NFTNL_EXPR_CT_SREG), r1)
            }
        }
    }

    private static func setData(_ expr: OpaquePointer, _ attribute: UInt16, _ data: [UInt8]) {
        data.withUnsafeBytes { _ = nftnl_expr_set(expr, attribute, $0.baseAddress, UInt32($0.count)) }
    }
}
