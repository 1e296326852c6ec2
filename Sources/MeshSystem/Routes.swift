import MeshModel

/// Policy routing for TPROXY and the `::6` passthrough address, through `ip` (iproute2).
/// Idempotent both ways; removal is derived from the live state.
public struct PolicyRouting {
    public var runner: any CommandRunner
    public var log: (String) -> Void

    public init(runner: any CommandRunner, log: @escaping (String) -> Void) {
        self.runner = runner
        self.log = log
    }

    /// Why routing could not be set up.
    public struct Failure: Error, Sendable, Hashable, CustomStringConvertible {
        public var message: String
        public var permission: Bool
        public var description: String { message }
    }

    /// `ip -6 addr add ::6/128 dev lo` (IPv6 on), and per family, for TPROXY,
    /// `ip rule add fwmark M lookup T` (only if missing) and
    /// `ip route replace local default dev lo table T`.
    public func install(route: TproxyRoute?, families: [Family]) throws(Failure) {
        if families.contains(.ipv6) {
            let shown = try ip(["-6", "addr", "show", "dev", "lo"])
            if !shown.stdout.contains("inet6 ::6/128") {
                try check(ip(["-6", "addr", "add", "::6/128", "dev", "lo"]), "add ::6/128 to lo")
                log("added ::6/128 to lo")
            }
        }
        guard let route else { return }
        for family in families {
            let flag = family == .ipv4 ? "-4" : "-6"
            let rules = try ip([flag, "rule", "show"])
            if ourRules(rules.stdout).first(where: { $0.mark == route.mark.value && $0.table == route.table }) == nil {
                try check(
                    ip([flag, "rule", "add", "fwmark", "\(route.mark)", "lookup", "\(route.table)"]),
                    "ip \(flag) rule add fwmark \(route.mark) lookup \(route.table)")
                log("\(family.rawValue): added ip rule fwmark \(route.mark) lookup \(route.table)")
            }
            try check(
                ip([flag, "route", "replace", "local", "default", "dev", "lo", "table", "\(route.table)"]),
                "ip \(flag) route replace local default dev lo table \(route.table)")
        }
    }

    /// Removes every `fwmark M lookup T` rule whose table T routes `local default dev lo`
    /// (what TPROXY set up), that route, and `::6/128` on lo. Returns what it removed.
    public func remove() -> [String] {
        var removed: [String] = []
        for flag in ["-4", "-6"] {
            guard let rules = try? ip([flag, "rule", "show"]), rules.status == 0 else { continue }
            for rule in ourRules(rules.stdout) {
                guard let routes = try? ip([flag, "route", "show", "table", "\(rule.table)"]),
                    routes.stdout.contains("local default dev lo")
                else { continue }
                if (try? ip([flag, "rule", "del", "pref", "\(rule.preference)"]))?.status == 0 {
                    removed.append("ip \(flag) rule fwmark \(hexMark(rule.mark)) lookup \(rule.table)")
                }
                if (try? ip([flag, "route", "del", "local", "default", "dev", "lo", "table", "\(rule.table)"]))?.status
                    == 0
                {
                    removed.append("ip \(flag) route local default dev lo table \(rule.table)")
                }
            }
        }
        if let shown = try? ip(["-6", "addr", "show", "dev", "lo"]), shown.stdout.contains("inet6 ::6/128"),
            (try? ip(["-6", "addr", "del", "::6/128", "dev", "lo"]))?.status == 0
        {
            removed.append("::6/128 on lo")
        }
        return removed
    }

    struct MarkRule {
        var preference: UInt32
        var mark: UInt32
        var table: UInt32
    }

    /// `N:\tfrom all fwmark 0x539 lookup 133` lines, and nothing else.
    func ourRules(_ text: String) -> [MarkRule] {
        var out: [MarkRule] = []
        for line in text.split(separator: "\n") {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard words.count == 7, words[0].hasSuffix(":"), words[1] == "from", words[2] == "all",
                words[3] == "fwmark", words[5] == "lookup",
                let preference = UInt32(words[0].dropLast()),
                let mark = words[4].hasPrefix("0x") ? UInt32(words[4].dropFirst(2), radix: 16) : UInt32(words[4]),
                let table = UInt32(words[6])
            else { continue }
            out.append(MarkRule(preference: preference, mark: mark, table: table))
        }
        return out
    }

    func hexMark(_ mark: UInt32) -> String { "0x" + String(mark, radix: 16) }

    func ip(_ args: [String]) throws(Failure) -> CommandResult {
        guard let path = runner.which("ip") else {
            throw Failure(
                message: "ip (iproute2) not found in PATH; it is needed for TPROXY and IPv6 routing", permission: false)
        }
        do {
            return try runner.run(path, args, stdin: "")
        } catch {
            throw Failure(message: error.description, permission: false)
        }
    }

    func check(_ result: CommandResult, _ what: String) throws(Failure) {
        guard result.status != 0 else { return }
        let detail = result.stderr.split(separator: "\n").first.map(String.init) ?? "exit status \(result.status)"
        let permission = detail.contains("Operation not permitted") || detail.contains("Permission denied")
        throw Failure(
            message: "\(what) failed: \(detail)\(permission ? " (CAP_NET_ADMIN is needed)" : "")",
            permission: permission)
    }
}
