import MeshModel

#if canImport(Glibc)
    import Glibc
#endif

/// Policy routing for TPROXY and the `::6` passthrough address, through rtnetlink (no `ip`
/// process). Idempotent both ways; removal is derived from the live state.
///
/// Equivalent commands: `ip -6 addr add ::6/128 dev lo`, and per family
/// `ip rule add fwmark M lookup T` + `ip route replace local default dev lo table T`.
public struct PolicyRouting {
    public var log: (String) -> Void

    public init(log: @escaping (String) -> Void) {
        self.log = log
    }

    /// Why routing could not be set up.
    public struct Failure: Error, Sendable, Hashable, CustomStringConvertible {
        public var message: String
        public var permission: Bool
        public var description: String { message }
    }

    static let passthroughV6: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6]
    static let ruleHeaderSize = 12
    static let routeHeaderSize = 12
    // Attribute numbers (linux/fib_rules.h, linux/rtnetlink.h, linux/if_addr.h).
    static let fraPriority: UInt16 = 6
    static let fraFwmark: UInt16 = 10
    static let fraTable: UInt16 = 15
    static let fraFwmask: UInt16 = 16
    static let rtaOIF: UInt16 = 4
    static let rtaTable: UInt16 = 15
    static let ifaAddress: UInt16 = 1

    public func install(route: TproxyRoute?, families: [Family]) throws(Failure) {
        var nl = try open()
        let lo = try loopbackIndex()
        if families.contains(.ipv6) {
            let rc = try call(&nl, "add ::6/128 to lo") { (nl: inout RouteNetlink) throws(RouteNetlink.Failure) in
                try nl.transact(
                    RouteNetlink.newAddress, flags: RouteNetlink.create | RouteNetlink.exclusive,
                    body: addressBody(lo: lo))
            }
            if rc == 0 { log("added ::6/128 to lo") } else if rc != EEXIST { throw failure("add ::6/128 to lo", rc) }
        }
        guard let route else { return }
        for family in families {
            let what = "ip rule fwmark \(route.mark) lookup \(route.table) (\(family.rawValue))"
            // The kernel's NLM_F_EXCL check compares priorities too, so look first.
            let present = markRules(&nl, family: family).contains {
                $0.mark == route.mark.value && $0.table == route.table
            }
            if !present {
                let rc = try call(&nl, what) { (nl: inout RouteNetlink) throws(RouteNetlink.Failure) in
                    try nl.transact(
                        RouteNetlink.newRule, flags: RouteNetlink.create,
                        body: ruleHeader(family, table: route.table)
                            + RouteNetlink.attribute(Self.fraFwmark, RouteNetlink.le32(route.mark.value))
                            + RouteNetlink.attribute(Self.fraTable, RouteNetlink.le32(route.table)))
                }
                if rc != 0 { throw failure(what, rc) }
                log("added \(what)")
            }
            let routeWhat = "local default dev lo table \(route.table) (\(family.rawValue))"
            let routeRC = try call(&nl, routeWhat) { (nl: inout RouteNetlink) throws(RouteNetlink.Failure) in
                try nl.transact(
                    RouteNetlink.newRoute, flags: RouteNetlink.create | RouteNetlink.replace,
                    body: routeHeader(family, table: route.table, protocol: 3)
                        + RouteNetlink.attribute(Self.rtaTable, RouteNetlink.le32(route.table))
                        + RouteNetlink.attribute(Self.rtaOIF, RouteNetlink.le32(lo)))
            }
            if routeRC != 0 { throw failure(routeWhat, routeRC) }
        }
    }

    /// Removes every `fwmark M lookup T` rule (nothing else in it) whose table T routes
    /// `local default dev lo`, that route, and `::6/128` on lo. Returns what it removed.
    public func remove() -> [String] {
        guard var nl = try? RouteNetlink(), let lo = try? loopbackIndex() else { return [] }
        var removed: [String] = []
        for family in Family.allCases {
            let tables = localDefaultTables(&nl, family: family, lo: lo)
            for rule in markRules(&nl, family: family) where tables.contains(rule.table) {
                var body = ruleHeader(family, table: rule.table)
                body += RouteNetlink.attribute(Self.fraPriority, RouteNetlink.le32(rule.priority))
                body += RouteNetlink.attribute(Self.fraFwmark, RouteNetlink.le32(rule.mark))
                body += RouteNetlink.attribute(Self.fraTable, RouteNetlink.le32(rule.table))
                if (try? nl.transact(RouteNetlink.deleteRule, flags: 0, body: body)) == 0 {
                    removed.append(
                        "\(family.rawValue) ip rule fwmark 0x\(String(rule.mark, radix: 16)) lookup \(rule.table)")
                }
                let routeBody =
                    routeHeader(family, table: rule.table, protocol: 0)
                    + RouteNetlink.attribute(Self.rtaTable, RouteNetlink.le32(rule.table))
                    + RouteNetlink.attribute(Self.rtaOIF, RouteNetlink.le32(lo))
                if (try? nl.transact(RouteNetlink.deleteRoute, flags: 0, body: routeBody)) == 0 {
                    removed.append("\(family.rawValue) route local default dev lo table \(rule.table)")
                }
            }
        }
        if (try? nl.transact(RouteNetlink.deleteAddress, flags: 0, body: addressBody(lo: lo))) == 0 {
            removed.append("::6/128 on lo")
        }
        return removed
    }

    struct MarkRule {
        var priority: UInt32
        var mark: UInt32
        var table: UInt32
    }

    /// Rules that only say "fwmark M (full mask) → lookup T".
    func markRules(_ nl: inout RouteNetlink, family: Family) -> [MarkRule] {
        var out: [MarkRule] = []
        let allowed: Set<UInt16> = [Self.fraPriority, Self.fraFwmark, Self.fraTable, Self.fraFwmask, 13, 14, 21]
        try? nl.dump(RouteNetlink.getRule, body: [familyCode(family)] + [UInt8](repeating: 0, count: 11)) { payload in
            guard payload.count >= Self.ruleHeaderSize, payload[1] == 0, payload[2] == 0, payload[7] == 1 else {
                return
            }
            let attrs = RouteNetlink.attributes(payload, headerSize: Self.ruleHeaderSize)
            guard Set(attrs.keys).isSubset(of: allowed), let mark = attrs[Self.fraFwmark], mark.count == 4 else {
                return
            }
            if let mask = attrs[Self.fraFwmask], RouteNetlink.u32(mask, 0) != 0xffff_ffff { return }
            let table = attrs[Self.fraTable].map { RouteNetlink.u32($0, 0) } ?? UInt32(payload[4])
            let priority = attrs[Self.fraPriority].map { RouteNetlink.u32($0, 0) } ?? 0
            out.append(MarkRule(priority: priority, mark: RouteNetlink.u32(mark, 0), table: table))
        }
        return out
    }

    /// Tables holding `local default dev lo`.
    func localDefaultTables(_ nl: inout RouteNetlink, family: Family, lo: UInt32) -> Set<UInt32> {
        var out: Set<UInt32> = []
        try? nl.dump(RouteNetlink.getRoute, body: [familyCode(family)] + [UInt8](repeating: 0, count: 11)) { payload in
            guard payload.count >= Self.routeHeaderSize, payload[1] == 0, payload[7] == 2 else { return }
            let attrs = RouteNetlink.attributes(payload, headerSize: Self.routeHeaderSize)
            guard let oif = attrs[Self.rtaOIF], RouteNetlink.u32(oif, 0) == lo else { return }
            out.insert(attrs[Self.rtaTable].map { RouteNetlink.u32($0, 0) } ?? UInt32(payload[4]))
        }
        return out
    }

    func familyCode(_ family: Family) -> UInt8 { family == .ipv4 ? UInt8(AF_INET) : UInt8(AF_INET6) }

    /// fib_rule_hdr: family dst_len src_len tos table res1 res2 action(FR_ACT_TO_TBL) flags:u32.
    func ruleHeader(_ family: Family, table: UInt32) -> [UInt8] {
        [familyCode(family), 0, 0, 0, table < 256 ? UInt8(table) : 0, 0, 0, 1] + RouteNetlink.le32(0)
    }

    /// rtmsg: family dst_len src_len tos table protocol scope(host) type(local) flags:u32.
    func routeHeader(_ family: Family, table: UInt32, protocol: UInt8) -> [UInt8] {
        [familyCode(family), 0, 0, 0, table < 256 ? UInt8(table) : 0, `protocol`, 254, 2] + RouteNetlink.le32(0)
    }

    /// ifaddrmsg for ::6/128 on lo, plus IFA_ADDRESS.
    func addressBody(lo: UInt32) -> [UInt8] {
        [UInt8(AF_INET6), 128, 0, 0] + RouteNetlink.le32(lo)
            + RouteNetlink.attribute(Self.ifaAddress, Self.passthroughV6)
    }

    func open() throws(Failure) -> RouteNetlink {
        do {
            return try RouteNetlink()
        } catch {
            throw failure("open rtnetlink socket", error.errno)
        }
    }

    func loopbackIndex() throws(Failure) -> UInt32 {
        let index = if_nametoindex("lo")
        guard index != 0 else { throw Failure(message: "no lo interface in this network namespace", permission: false) }
        return index
    }

    func call(
        _ nl: inout RouteNetlink, _ what: String, _ body: (inout RouteNetlink) throws(RouteNetlink.Failure) -> Int32
    ) throws(Failure) -> Int32 {
        do {
            return try body(&nl)
        } catch {
            throw failure(what, error.errno)
        }
    }

    func failure(_ what: String, _ code: Int32) -> Failure {
        let permission = code == EPERM || code == EACCES
        return Failure(
            message: "\(what) failed: \(errnoText(code))\(permission ? " (CAP_NET_ADMIN is needed)" : "")",
            permission: permission)
    }
}
