import CMeshShims
import CRtnetlink
import MeshModel

#if canImport(Glibc)
    import Glibc
#endif

/// Policy routing for TPROXY and the `::6` passthrough address, through rtnetlink (no `ip`
/// process). Idempotent both ways; removal is derived from the live state. Every kernel
/// answer is checked: a failed dump or delete is an error with its errno, never "nothing
/// there".
///
/// Equivalent commands: `ip -6 addr add ::6/128 dev lo`, and per family
/// `ip rule add fwmark M lookup T` + `ip route replace local default dev lo table T`.
public struct PolicyRouting {
    public var log: (String) -> Void
    let open: () throws(Failure) -> any NetlinkIO
    let loopback: () -> UInt32

    /// The live system: a NETLINK_ROUTE socket in the current network namespace.
    public init(log: @escaping (String) -> Void) {
        self.init(log: log, open: Self.openSocket, loopbackIndex: { if_nametoindex("lo") })
    }

    public static func openSocket() throws(Failure) -> any NetlinkIO {
        do {
            return try NetlinkSocket(protocol: NETLINK_ROUTE, name: "NETLINK_ROUTE")
        } catch {
            throw Failure("open rtnetlink socket", errno: error.errno)
        }
    }

    /// With another netlink I/O (tests script the kernel's replies) and loopback index.
    public init(
        log: @escaping (String) -> Void, open: @escaping () throws(Failure) -> any NetlinkIO,
        loopbackIndex: @escaping () -> UInt32
    ) {
        self.log = log
        self.open = open
        self.loopback = loopbackIndex
    }

    /// Why routing could not be read or changed: what was being done, and the errno.
    public struct Failure: Error, Sendable, Hashable, CustomStringConvertible {
        public var operation: String
        /// The kernel's or the system call's errno (nil: not an errno, e.g. no `lo`).
        public var errno: Int32?
        public var detail: String?
        /// Whether CAP_NET_ADMIN is what is missing (EPERM, EACCES, unless `detail` says otherwise).
        public var permission: Bool

        public init(_ operation: String, errno: Int32?, detail: String? = nil, permission: Bool? = nil) {
            self.operation = operation
            self.errno = errno
            self.detail = detail
            self.permission = permission ?? (errno == EPERM || errno == EACCES)
        }

        public var message: String {
            var text = "\(operation) failed"
            if let detail { text += ": \(detail)" } else if let errno { text += ": \(errnoText(errno))" }
            if permission { text += " (CAP_NET_ADMIN is needed)" }
            return text
        }

        public var description: String { message }
    }

    /// One thing of ours that removal would delete.
    public struct Removal: Sendable, Hashable {
        enum Kind: Sendable, Hashable {
            case rule(Family, MarkRule)
            case route(Family, table: UInt32)
            case passthroughAddress
        }

        let kind: Kind

        /// What it is, for the log: `ipv4 ip rule fwmark 0x539 lookup 133`.
        public var summary: String {
            switch kind {
            case .rule(let family, let rule):
                "\(family.rawValue) ip rule fwmark 0x\(String(rule.mark, radix: 16)) lookup \(rule.table)"
            case .route(let family, let table): "\(family.rawValue) route local default dev lo table \(table)"
            case .passthroughAddress: "::6/128 on lo"
            }
        }

        /// The same as an `ip` command (what a dry run prints).
        public var command: String {
            switch kind {
            case .rule(let family, let rule):
                "ip \(family == .ipv4 ? "-4" : "-6") rule del priority \(rule.priority) fwmark 0x\(String(rule.mark, radix: 16)) lookup \(rule.table)"
            case .route(let family, let table):
                "ip \(family == .ipv4 ? "-4" : "-6") route del local default dev lo table \(table)"
            case .passthroughAddress: "ip -6 addr del ::6/128 dev lo"
            }
        }
    }

    static let passthroughV6: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 6]
    static let ruleHeaderSize = MemoryLayout<fib_rule_hdr>.size
    static let routeHeaderSize = MemoryLayout<rtmsg>.size
    static let addressHeaderSize = MemoryLayout<ifaddrmsg>.size

    public func install(route: TproxyRoute?, families: [Family]) throws(Failure) {
        let nl = RouteNetlink(io: try open())
        let lo = try loopbackIndex()
        if families.contains(.ipv6) {
            let rc = try call("add ::6/128 to lo") { () throws(NetlinkExchangeError) in
                try nl.transact(
                    RouteNetlink.newAddress, flags: RouteNetlink.create | RouteNetlink.exclusive,
                    body: addressBody(lo: lo))
            }
            if rc == 0 {
                log("added ::6/128 to lo")
            } else if rc == EACCES {
                // addrconf's answer where IPv6 is disabled on the interface.
                throw Failure(
                    "add ::6/128 to lo", errno: rc,
                    detail: "IPv6 is disabled on lo (disable_ipv6=1) but the plan has IPv6 rules: use --ipv6=off",
                    permission: false)
            } else if rc != EEXIST {
                throw Failure("add ::6/128 to lo", errno: rc)
            }
        }
        guard let route else { return }
        for family in families {
            let what = "ip rule fwmark \(route.mark) lookup \(route.table) (\(family.rawValue))"
            // The kernel's NLM_F_EXCL check compares priorities too, so look first; a dump that
            // fails is an error (assuming "absent" would add a duplicate rule).
            let present = try markRules(nl, family: family).contains {
                $0.mark == route.mark.value && $0.table == route.table
            }
            if !present {
                let rc = try call(what) { () throws(NetlinkExchangeError) in
                    try nl.transact(
                        RouteNetlink.newRule, flags: RouteNetlink.create,
                        body: ruleHeader(family, table: route.table)
                            + RouteNetlink.attribute(Int(FRA_FWMARK), RouteNetlink.le32(route.mark.value))
                            + RouteNetlink.attribute(Int(FRA_TABLE), RouteNetlink.le32(route.table)))
                }
                if rc != 0 { throw Failure(what, errno: rc) }
                log("added \(what)")
            }
            let routeWhat = "local default dev lo table \(route.table) (\(family.rawValue))"
            let routeRC = try call(routeWhat) { () throws(NetlinkExchangeError) in
                try nl.transact(
                    RouteNetlink.newRoute, flags: RouteNetlink.create | RouteNetlink.replace,
                    body: routeHeader(family, table: route.table, protocol: UInt8(RTPROT_BOOT))
                        + RouteNetlink.attribute(Int(RTA_TABLE.rawValue), RouteNetlink.le32(route.table))
                        + RouteNetlink.attribute(Int(RTA_OIF.rawValue), RouteNetlink.le32(lo)))
            }
            if routeRC != 0 { throw Failure(routeWhat, errno: routeRC) }
        }
    }

    /// What removal would delete, read from the live state: every `fwmark M lookup T` rule
    /// (nothing else in it) whose table T routes `local default dev lo`, that route, and
    /// `::6/128` on lo — for `families` only (IPv6 is left out where the kernel has none).
    ///
    /// With `ipv6Disabled` (the namespace's `disable_ipv6=1`, which flushed its IPv6 routes and
    /// addresses but not its rules), an IPv6 `fwmark M lookup T` rule is ours when the IPv4
    /// side holds ours with the same mark and table: its route is gone, the twin says whose it is.
    public func removals(families: [Family], ipv6Disabled: Bool = false) throws(Failure) -> [Removal] {
        let nl = RouteNetlink(io: try open())
        let lo = try loopbackIndex()
        var out: [Removal] = []
        var ownedV4: Set<[UInt32]> = []
        for family in families {
            let tables = try localDefaultTables(nl, family: family, lo: lo)
            var routed: Set<UInt32> = []
            for rule in try markRules(nl, family: family) {
                if tables.contains(rule.table) {
                    if family == .ipv4 { ownedV4.insert([rule.mark, rule.table]) }
                    out.append(Removal(kind: .rule(family, rule)))
                    if routed.insert(rule.table).inserted {
                        out.append(Removal(kind: .route(family, table: rule.table)))
                    }
                } else if family == .ipv6, ipv6Disabled, ownedV4.contains([rule.mark, rule.table]) {
                    out.append(Removal(kind: .rule(family, rule)))
                }
            }
        }
        if families.contains(.ipv6), !ipv6Disabled, try hasPassthroughAddress(nl, lo: lo) {
            out.append(Removal(kind: .passthroughAddress))
        }
        return out
    }

    /// Deletes `removals`; returns the summary of each one deleted. Something already gone
    /// (a concurrent cleanup) is skipped; any other refusal is an error.
    public func remove(_ removals: [Removal]) throws(Failure) -> [String] {
        guard !removals.isEmpty else { return [] }
        let nl = RouteNetlink(io: try open())
        let lo = try loopbackIndex()
        var removed: [String] = []
        for removal in removals {
            let (type, body): (UInt16, [UInt8])
            switch removal.kind {
            case .rule(let family, let rule):
                type = RouteNetlink.deleteRule
                body =
                    ruleHeader(family, table: rule.table)
                    + RouteNetlink.attribute(Int(FRA_PRIORITY), RouteNetlink.le32(rule.priority))
                    + RouteNetlink.attribute(Int(FRA_FWMARK), RouteNetlink.le32(rule.mark))
                    + RouteNetlink.attribute(Int(FRA_TABLE), RouteNetlink.le32(rule.table))
            case .route(let family, let table):
                type = RouteNetlink.deleteRoute
                body =
                    routeHeader(family, table: table, protocol: UInt8(RTPROT_UNSPEC))
                    + RouteNetlink.attribute(Int(RTA_TABLE.rawValue), RouteNetlink.le32(table))
                    + RouteNetlink.attribute(Int(RTA_OIF.rawValue), RouteNetlink.le32(lo))
            case .passthroughAddress:
                type = RouteNetlink.deleteAddress
                body = addressBody(lo: lo)
            }
            let rc = try call("delete \(removal.summary)") { () throws(NetlinkExchangeError) in
                try nl.transact(type, flags: 0, body: body)
            }
            switch rc {
            case 0: removed.append(removal.summary)
            case ENOENT, ESRCH, EADDRNOTAVAIL: log("\(removal.summary): already gone")
            default: throw Failure("delete \(removal.summary)", errno: rc)
            }
        }
        return removed
    }

    struct MarkRule: Sendable, Hashable {
        var priority: UInt32
        var mark: UInt32
        var table: UInt32
    }

    /// Rules that only say "fwmark M (full mask) → lookup T".
    func markRules(_ nl: RouteNetlink, family: Family) throws(Failure) -> [MarkRule] {
        let allowed: Set<UInt16> = Set(
            [
                FRA_PRIORITY, FRA_FWMARK, FRA_TABLE, FRA_FWMASK, FRA_SUPPRESS_IFGROUP, FRA_SUPPRESS_PREFIXLEN,
                FRA_PROTOCOL,
            ]
            .map { UInt16($0) })
        let what = "dump \(family.rawValue) ip rules"
        var out: [MarkRule] = []
        for payload in try dump(nl, what, RouteNetlink.getRule, body: familyHeader(family, size: Self.ruleHeaderSize)) {
            let attrs = try attributes(payload, Self.ruleHeaderSize, what)
            // fib_rule_hdr: family dst_len src_len tos table res1 res2 action flags:u32
            guard payload[1] == 0, payload[2] == 0, payload[7] == UInt8(FR_ACT_TO_TBL) else { continue }
            guard Set(attrs.keys).isSubset(of: allowed), let mark = attrs[UInt16(FRA_FWMARK)], mark.count == 4 else {
                continue
            }
            if let mask = attrs[UInt16(FRA_FWMASK)], mask.count != 4 || RouteNetlink.u32(mask, 0) != 0xffff_ffff {
                continue
            }
            let table = try u32(attrs[UInt16(FRA_TABLE)], what) ?? UInt32(payload[4])
            let priority = try u32(attrs[UInt16(FRA_PRIORITY)], what) ?? 0
            out.append(MarkRule(priority: priority, mark: RouteNetlink.u32(mark, 0), table: table))
        }
        return out
    }

    /// Tables holding `local default dev lo`.
    func localDefaultTables(_ nl: RouteNetlink, family: Family, lo: UInt32) throws(Failure) -> Set<UInt32> {
        let what = "dump \(family.rawValue) routes"
        var out: Set<UInt32> = []
        for payload in try dump(nl, what, RouteNetlink.getRoute, body: familyHeader(family, size: Self.routeHeaderSize))
        {
            let attrs = try attributes(payload, Self.routeHeaderSize, what)
            // rtmsg: family dst_len src_len tos table protocol scope type flags:u32
            guard payload[1] == 0, payload[7] == UInt8(RTN_LOCAL) else { continue }
            guard try u32(attrs[UInt16(RTA_OIF.rawValue)], what) == lo else { continue }
            out.insert(try u32(attrs[UInt16(RTA_TABLE.rawValue)], what) ?? UInt32(payload[4]))
        }
        return out
    }

    /// Whether lo holds `::6/128`.
    func hasPassthroughAddress(_ nl: RouteNetlink, lo: UInt32) throws(Failure) -> Bool {
        let what = "dump ipv6 addresses"
        for payload in try dump(
            nl, what, RouteNetlink.getAddress, body: familyHeader(.ipv6, size: Self.addressHeaderSize))
        {
            let attrs = try attributes(payload, Self.addressHeaderSize, what)
            // ifaddrmsg: family prefixlen flags scope index:u32
            guard payload[1] == 128, RouteNetlink.u32(payload, 4) == lo else { continue }
            if attrs[UInt16(IFA_ADDRESS)] == Self.passthroughV6 || attrs[UInt16(IFA_LOCAL)] == Self.passthroughV6 {
                return true
            }
        }
        return false
    }

    func dump(_ nl: RouteNetlink, _ what: String, _ type: UInt16, body: [UInt8]) throws(Failure) -> [[UInt8]] {
        do {
            return try nl.dump(type, body: body)
        } catch {
            throw failure(what, error)
        }
    }

    func attributes(_ payload: [UInt8], _ headerSize: Int, _ what: String) throws(Failure) -> [UInt16: [UInt8]] {
        do {
            return try RouteNetlink.attributes(payload, headerSize: headerSize)
        } catch {
            throw Failure(what, errno: EBADMSG, detail: error.description)
        }
    }

    func u32(_ attribute: [UInt8]?, _ what: String) throws(Failure) -> UInt32? {
        guard let attribute else { return nil }
        guard attribute.count == 4 else {
            throw Failure(
                what, errno: EBADMSG, detail: "malformed netlink reply: \(attribute.count)-byte u32 attribute")
        }
        return RouteNetlink.u32(attribute, 0)
    }

    func familyCode(_ family: Family) -> UInt8 { family == .ipv4 ? UInt8(AF_INET) : UInt8(AF_INET6) }

    /// A dump request's family header: the family, then zeros.
    func familyHeader(_ family: Family, size: Int) -> [UInt8] {
        [familyCode(family)] + [UInt8](repeating: 0, count: size - 1)
    }

    /// fib_rule_hdr: family dst_len src_len tos table res1 res2 action(FR_ACT_TO_TBL) flags:u32.
    func ruleHeader(_ family: Family, table: UInt32) -> [UInt8] {
        [
            familyCode(family), 0, 0, 0, table < 256 ? UInt8(table) : UInt8(RT_TABLE_UNSPEC.rawValue), 0, 0,
            UInt8(FR_ACT_TO_TBL),
        ]
            + RouteNetlink.le32(0)
    }

    /// rtmsg: family dst_len src_len tos table protocol scope(host) type(local) flags:u32.
    func routeHeader(_ family: Family, table: UInt32, protocol: UInt8) -> [UInt8] {
        [
            familyCode(family), 0, 0, 0, table < 256 ? UInt8(table) : UInt8(RT_TABLE_UNSPEC.rawValue), `protocol`,
            UInt8(RT_SCOPE_HOST.rawValue), UInt8(RTN_LOCAL),
        ] + RouteNetlink.le32(0)
    }

    /// ifaddrmsg for ::6/128 on lo, plus IFA_ADDRESS.
    func addressBody(lo: UInt32) -> [UInt8] {
        [UInt8(AF_INET6), 128, 0, 0] + RouteNetlink.le32(lo)
            + RouteNetlink.attribute(Int(IFA_ADDRESS), Self.passthroughV6)
    }

    func loopbackIndex() throws(Failure) -> UInt32 {
        let index = loopback()
        guard index != 0 else {
            throw Failure("find lo", errno: nil, detail: "no lo interface in this network namespace")
        }
        return index
    }

    func call(_ what: String, _ body: () throws(NetlinkExchangeError) -> Int32) throws(Failure) -> Int32 {
        do {
            return try body()
        } catch {
            throw failure(what, error)
        }
    }

    func failure(_ what: String, _ error: NetlinkExchangeError) -> Failure {
        switch error {
        case .kernel, .system: Failure(what, errno: error.errno)
        case .malformed, .interrupted: Failure(what, errno: error.errno, detail: error.description)
        }
    }
}
