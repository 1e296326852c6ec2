import CNftnl
import MeshModel

// libnftnl's setters take `uint16_t attr`; Swift imports the attribute enums as
// `RawRepresentable` structs (UInt32 raw values) or, for the anonymous `NFTNL_EXPR_*`
// enums, as `Int`. These two helpers are the only place that converts them.

/// Attribute id of a named libnftnl enum (`NFTNL_TABLE_NAME`, `NFTNL_RULE_CHAIN`, …).
@inline(__always) func attr<T: RawRepresentable>(_ value: T) -> UInt16 where T.RawValue == UInt32 {
    UInt16(value.rawValue)
}

/// Attribute id of an anonymous libnftnl enum (`NFTNL_EXPR_META_KEY`, …).
@inline(__always) func attr(_ value: Int) -> UInt16 { UInt16(value) }

/// Netlink message type of an nf_tables message (`NFT_MSG_NEWRULE`, …).
@inline(__always) func messageType(_ type: nf_tables_msg_types) -> UInt16 { UInt16(type.rawValue) }

/// `NFPROTO_INET`, the family of every message meshinit sends.
let familyInet = UInt16(NFPROTO_INET)

/// An owned `struct nftnl_table`, freed when the wrapper goes away.
final class NftnlTable {
    let raw: OpaquePointer

    init(name: String) throws(NetlinkError) {
        guard let raw = nftnl_table_alloc() else { throw NetlinkError(.allocation, "nftnl_table_alloc") }
        self.raw = raw
        nftnl_table_set_u32(raw, attr(NFTNL_TABLE_FAMILY), UInt32(NFPROTO_INET))
        nftnl_table_set_str(raw, attr(NFTNL_TABLE_NAME), name)
    }

    init() throws(NetlinkError) {
        guard let raw = nftnl_table_alloc() else { throw NetlinkError(.allocation, "nftnl_table_alloc") }
        self.raw = raw
    }

    deinit { nftnl_table_free(raw) }

    var name: String { string(nftnl_table_get_str(raw, attr(NFTNL_TABLE_NAME))) }
    var family: UInt32 { nftnl_table_get_u32(raw, attr(NFTNL_TABLE_FAMILY)) }
    /// `NFTA_TABLE_FLAGS` (0 when absent).
    var flags: UInt32 {
        nftnl_table_is_set(raw, attr(NFTNL_TABLE_FLAGS)) ? nftnl_table_get_u32(raw, attr(NFTNL_TABLE_FLAGS)) : 0
    }

    /// `dormant`, `owner`, `persist` (as nft lists them), `none` for 0.
    static func flagNames(_ flags: UInt32) -> String {
        let known: [(UInt32, String)] = [(0x1, "dormant"), (0x2, "owner"), (0x4, "persist")]
        var names = known.filter { flags & $0.0 != 0 }.map(\.1)
        let rest = flags & ~known.reduce(0) { $0 | $1.0 }
        if rest != 0 { names.append("0x" + String(rest, radix: 16)) }
        return names.isEmpty ? "none" : names.joined(separator: ",")
    }
}

/// An owned `struct nftnl_chain`.
final class NftnlChain {
    let raw: OpaquePointer

    init() throws(NetlinkError) {
        guard let raw = nftnl_chain_alloc() else { throw NetlinkError(.allocation, "nftnl_chain_alloc") }
        self.raw = raw
    }

    convenience init(table: String, name: String) throws(NetlinkError) {
        try self.init()
        nftnl_chain_set_u32(raw, attr(NFTNL_CHAIN_FAMILY), UInt32(NFPROTO_INET))
        nftnl_chain_set_str(raw, attr(NFTNL_CHAIN_TABLE), table)
        nftnl_chain_set_str(raw, attr(NFTNL_CHAIN_NAME), name)
    }

    deinit { nftnl_chain_free(raw) }

    var table: String { string(nftnl_chain_get_str(raw, attr(NFTNL_CHAIN_TABLE))) }
    var name: String { string(nftnl_chain_get_str(raw, attr(NFTNL_CHAIN_NAME))) }
    var family: UInt32 { nftnl_chain_get_u32(raw, attr(NFTNL_CHAIN_FAMILY)) }
    /// `type nat hook output priority -100`, with ` policy drop`, ` devices { … }` and
    /// ` flags 0x…` (other than "base") when the kernel holds them; for a regular chain nil,
    /// or `flags 0x…` when it has some (a binding chain).
    var baseSpec: String? {
        var flags: UInt32 = 0
        if nftnl_chain_is_set(raw, attr(NFTNL_CHAIN_FLAGS)) {
            flags = nftnl_chain_get_u32(raw, attr(NFTNL_CHAIN_FLAGS)) & ~UInt32(NFT_CHAIN_BASE.rawValue)
        }
        let flagText = flags == 0 ? "" : " flags 0x" + String(flags, radix: 16)
        guard nftnl_chain_is_set(raw, attr(NFTNL_CHAIN_HOOKNUM)) else {
            return flags == 0 ? nil : String(flagText.dropFirst())
        }
        let type = string(nftnl_chain_get_str(raw, attr(NFTNL_CHAIN_TYPE)))
        let hook = nftnl_chain_get_u32(raw, attr(NFTNL_CHAIN_HOOKNUM))
        let priority = nftnl_chain_get_s32(raw, attr(NFTNL_CHAIN_PRIO))
        var spec = "type \(type) hook \(HookNumber.name(hook)) priority \(priority)"
        // Istio's chains keep the default policy; report anything else.
        if nftnl_chain_is_set(raw, attr(NFTNL_CHAIN_POLICY)) {
            let policy = nftnl_chain_get_u32(raw, attr(NFTNL_CHAIN_POLICY))
            if policy != UInt32(NF_ACCEPT) { spec += policy == UInt32(NF_DROP) ? " policy drop" : " policy \(policy)" }
        }
        var devices: [String] = []
        if nftnl_chain_is_set(raw, attr(NFTNL_CHAIN_DEV)) {
            devices.append(string(nftnl_chain_get_str(raw, attr(NFTNL_CHAIN_DEV))))
        }
        if nftnl_chain_is_set(raw, attr(NFTNL_CHAIN_DEVICES)),
            var list = nftnl_chain_get_array(raw, attr(NFTNL_CHAIN_DEVICES))
        {
            while let name = list.pointee {
                devices.append(String(cString: name))
                list += 1
            }
        }
        if !devices.isEmpty { spec += " devices { \(devices.joined(separator: ", ")) }" }
        return spec + flagText
    }
}

/// An owned `struct nftnl_rule`. Expressions added to it are owned by the rule.
final class NftnlRule {
    let raw: OpaquePointer

    init() throws(NetlinkError) {
        guard let raw = nftnl_rule_alloc() else { throw NetlinkError(.allocation, "nftnl_rule_alloc") }
        self.raw = raw
    }

    convenience init(table: String, chain: String) throws(NetlinkError) {
        try self.init()
        nftnl_rule_set_u32(raw, attr(NFTNL_RULE_FAMILY), UInt32(NFPROTO_INET))
        nftnl_rule_set_str(raw, attr(NFTNL_RULE_TABLE), table)
        nftnl_rule_set_str(raw, attr(NFTNL_RULE_CHAIN), chain)
    }

    deinit { nftnl_rule_free(raw) }

    /// Allocates expression `name`, lets `configure` set its attributes, and hands it to
    /// the rule (`nftnl_rule_add_expr` takes ownership).
    func add(_ name: String, _ configure: (OpaquePointer) -> Void) throws(NetlinkError) {
        guard let expr = nftnl_expr_alloc(name) else { throw NetlinkError(.allocation, "nftnl_expr_alloc \(name)") }
        configure(expr)
        nftnl_rule_add_expr(raw, expr)
    }

    var table: String { string(nftnl_rule_get_str(raw, attr(NFTNL_RULE_TABLE))) }
    var chain: String { string(nftnl_rule_get_str(raw, attr(NFTNL_RULE_CHAIN))) }
    var family: UInt32 { nftnl_rule_get_u32(raw, attr(NFTNL_RULE_FAMILY)) }
    var handle: UInt64 { nftnl_rule_get_u64(raw, attr(NFTNL_RULE_HANDLE)) }

    /// Calls `body` with each expression, in order.
    func forEachExpression(_ body: (OpaquePointer) -> Void) {
        guard let iterator = nftnl_expr_iter_create(raw) else { return }
        defer { nftnl_expr_iter_destroy(iterator) }
        while let expr = nftnl_expr_iter_next(iterator) { body(expr) }
    }
}

/// An owned `struct nftnl_set`. Elements added to it are owned by the set.
final class NftnlSet {
    let raw: OpaquePointer

    init() throws(NetlinkError) {
        guard let raw = nftnl_set_alloc() else { throw NetlinkError(.allocation, "nftnl_set_alloc") }
        self.raw = raw
    }

    deinit { nftnl_set_free(raw) }

    /// Adds one element with `key` (network bytes) and element flags.
    func addElement(key: [UInt8], flags: UInt32) throws(NetlinkError) {
        guard let element = nftnl_set_elem_alloc() else { throw NetlinkError(.allocation, "nftnl_set_elem_alloc") }
        key.withUnsafeBytes {
            _ = nftnl_set_elem_set(element, attr(NFTNL_SET_ELEM_KEY), $0.baseAddress, UInt32($0.count))
        }
        if flags != 0 { nftnl_set_elem_set_u32(element, attr(NFTNL_SET_ELEM_FLAGS), flags) }
        nftnl_set_elem_add(raw, element)
    }

    var table: String { string(nftnl_set_get_str(raw, attr(NFTNL_SET_TABLE))) }
    var name: String { string(nftnl_set_get_str(raw, attr(NFTNL_SET_NAME))) }
    var flags: UInt32 { u32(NFTNL_SET_FLAGS) ?? 0 }
    var keyLength: UInt32 { u32(NFTNL_SET_KEY_LEN) ?? 0 }
    /// A map's data length (nil for a plain set).
    var dataLength: UInt32? { u32(NFTNL_SET_DATA_LEN) }

    private func u32(_ attribute: nftnl_set_attr) -> UInt32? {
        nftnl_set_is_set(raw, attr(attribute)) ? nftnl_set_get_u32(raw, attr(attribute)) : nil
    }

    /// The set's own expressions (stateful ones run for every element matched), as text.
    var expressionTexts: [String] {
        var texts: [String] = []
        withUnsafeMutablePointer(to: &texts) { pointer in
            _ = nftnl_set_expr_foreach(
                raw,
                { expr, data in
                    guard let expr, let data else { return 0 }
                    data.assumingMemoryBound(to: [String].self).pointee.append(RuleText.expressionText(expr))
                    return 0
                }, pointer)
        }
        return texts
    }

    /// Elements as (key bytes, flags), in the order the set holds them.
    var elements: [(key: [UInt8], flags: UInt32)] {
        var out: [(key: [UInt8], flags: UInt32)] = []
        forEachElement { element in out.append((Self.bytes(element, NFTNL_SET_ELEM_KEY) ?? [], Self.flags(element))) }
        return out
    }

    /// Each element as `RuleText.element` text, with whatever else it holds (a range end
    /// key, data, a verdict, expressions) appended: all that a lookup would act on.
    var elementTexts: [String] {
        var out: [String] = []
        forEachElement { element in
            var extra = ""
            if let end = Self.bytes(element, NFTNL_SET_ELEM_KEY_END) { extra += " keyend 0x" + RuleText.hex(end) }
            if let data = Self.bytes(element, NFTNL_SET_ELEM_DATA) { extra += " data 0x" + RuleText.hex(data) }
            if nftnl_set_elem_is_set(element, attr(NFTNL_SET_ELEM_VERDICT)) {
                extra += " verdict \(Int32(bitPattern: nftnl_set_elem_get_u32(element, attr(NFTNL_SET_ELEM_VERDICT))))"
            }
            if nftnl_set_elem_is_set(element, attr(NFTNL_SET_ELEM_CHAIN)) {
                extra += " chain " + string(nftnl_set_elem_get_str(element, attr(NFTNL_SET_ELEM_CHAIN)))
            }
            if nftnl_set_elem_is_set(element, attr(NFTNL_SET_ELEM_OBJREF)) {
                extra += " objref " + string(nftnl_set_elem_get_str(element, attr(NFTNL_SET_ELEM_OBJREF)))
            }
            var expressions: [String] = []
            withUnsafeMutablePointer(to: &expressions) { pointer in
                _ = nftnl_set_elem_expr_foreach(
                    element,
                    { expr, data in
                        guard let expr, let data else { return 0 }
                        data.assumingMemoryBound(to: [String].self).pointee.append(RuleText.expressionText(expr))
                        return 0
                    }, pointer)
            }
            for expression in expressions { extra += " [ \(expression) ]" }
            out.append(
                RuleText.element(
                    key: Self.bytes(element, NFTNL_SET_ELEM_KEY) ?? [], flags: Self.flags(element), extra: extra))
        }
        return out
    }

    private func forEachElement(_ body: (OpaquePointer) -> Void) {
        guard let iterator = nftnl_set_elems_iter_create(raw) else { return }
        defer { nftnl_set_elems_iter_destroy(iterator) }
        // `nftnl_set_elems_iter_next` returns the current element and advances.
        var element = nftnl_set_elems_iter_next(iterator)
        while let current = element {
            body(current)
            element = nftnl_set_elems_iter_next(iterator)
        }
    }

    private static func bytes(_ element: OpaquePointer, _ attribute: Int) -> [UInt8]? {
        guard nftnl_set_elem_is_set(element, attr(attribute)) else { return nil }
        var length: UInt32 = 0
        guard let data = nftnl_set_elem_get(element, attr(attribute), &length) else { return nil }
        return Array(UnsafeRawBufferPointer(start: data, count: Int(length)))
    }

    private static func flags(_ element: OpaquePointer) -> UInt32 {
        nftnl_set_elem_is_set(element, attr(NFTNL_SET_ELEM_FLAGS))
            ? nftnl_set_elem_get_u32(element, attr(NFTNL_SET_ELEM_FLAGS)) : 0
    }
}

/// Netfilter hook numbers (`enum nf_inet_hooks`).
enum HookNumber {
    static func of(_ hook: Hook) -> UInt32 {
        switch hook {
        case .prerouting: NF_INET_PRE_ROUTING.rawValue
        case .input: NF_INET_LOCAL_IN.rawValue
        case .forward: NF_INET_FORWARD.rawValue
        case .output: NF_INET_LOCAL_OUT.rawValue
        case .postrouting: NF_INET_POST_ROUTING.rawValue
        }
    }

    static func name(_ number: UInt32) -> String {
        Hook.allCases.first { of($0) == number }?.rawValue ?? "hook\(number)"
    }
}

/// A C string from libnftnl, or "" for NULL.
func string(_ pointer: UnsafePointer<CChar>?) -> String {
    guard let pointer else { return "" }
    return String(cString: pointer)
}
