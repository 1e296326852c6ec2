import MeshModel
import MeshRender

/// What meshinit owns in an iptables dump, derived from the live state alone:
/// - every chain named `ISTIO_*`;
/// - every rule in a built-in chain that jumps to one;
/// - rules in built-in chains with the exact shape of Istio's non-jump rules: the TPROXY mark
///   rules of mangle (CONNMARK save/restore of a mark, lo RETURN of a mark, MARK 0x53a for the
///   proxy owner), and, in a table that also holds `ISTIO_*` state, the interface-exclusion
///   `-i IF -j RETURN` / `-o IF -j RETURN` of nat/mangle PREROUTING/OUTPUT.
public enum Ownership {
    public static func isOurChain(_ name: String) -> Bool { name.hasPrefix("ISTIO_") }

    static let builtinChains: Set<String> = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"]

    /// Whether `rule` (in a built-in chain of `table`) is ours.
    public static func isOurs(_ rule: SavedRule, table: String, tableHasOurState: Bool) -> Bool {
        let t = rule.tokens
        if let j = t.firstIndex(where: { $0 == "-j" || $0 == "-g" }), j + 1 < t.count, isOurChain(t[j + 1]) {
            return true
        }
        let full = "0xffffffff"
        if table == "mangle" {
            if rule.chain == "PREROUTING",
                t.count == 13, t[0...4] == ["-p", "tcp", "-m", "mark", "--mark"],
                t[6...] == ["-j", "CONNMARK", "--save-mark", "--nfmask", full, "--ctmask", full]
            {
                return true
            }
            if rule.chain == "OUTPUT" {
                if t.count == 10, t[0...6] == ["-o", "lo", "-p", "tcp", "-m", "mark", "--mark"],
                    t[8...] == ["-j", "RETURN"]
                {
                    return true
                }
                if t.count == 15, t[0...1] == ["!", "-d"], t[3...8] == ["-o", "lo", "-p", "tcp", "-m", "owner"],
                    t[9] == "--uid-owner" || t[9] == "--gid-owner",
                    t[11...] == ["-j", "MARK", "--set-xmark", "0x53a/\(full)"]
                {
                    return true
                }
                if t.count == 13, t[0...4] == ["-p", "tcp", "-m", "connmark", "--mark"],
                    t[6...] == ["-j", "CONNMARK", "--restore-mark", "--nfmask", full, "--ctmask", full]
                {
                    return true
                }
            }
        }
        if tableHasOurState, table == "nat" || table == "mangle", t.count == 4, t[2...] == ["-j", "RETURN"] {
            return (rule.chain == "PREROUTING" && t[0] == "-i") || (rule.chain == "OUTPUT" && t[0] == "-o")
        }
        return false
    }

    /// Whether the table holds any chain or jump of ours.
    public static func hasOurState(_ table: SavedTable) -> Bool {
        table.chains.contains(where: isOurChain)
            || table.rules.contains { rule in
                builtinChains.contains(rule.chain) && isOurs(rule, table: table.name, tableHasOurState: false)
            }
    }
}

/// The change one table needs to go from its live state to the plan (or to nothing, for
/// cleanup): a `--noflush` restore block, and a summary for the log.
public struct TableChange: Sendable, Hashable {
    public var table: String
    /// `*table` … `COMMIT`.
    public var block: String
    public var summary: String
}

/// One table's live state next to the plan's operations for it (one family).
struct TableComparison {
    var table: Table
    var ops: [Operation]
    var live: SavedTable?
    var hasOurState: Bool
    /// Our chains the plan uses (written to or jumped to), in first-use order.
    var desiredChains: [String]
    /// Our chains the kernel holds.
    var liveOurChains: [String]
    /// Built-in chains that hold, or should hold, rules of ours.
    var builtinChains: [String]
    private var desired: [String: [String]] = [:]

    /// Tables where the plan or the live state has something of ours.
    static func all(live: [SavedTable], desired: [Operation]) -> [TableComparison] {
        let liveByName = Dictionary(live.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        return Table.allCases.compactMap { table in
            let ops = desired.filter { $0.table == table }
            let liveTable = liveByName[table.rawValue]
            let hasOurState = liveTable.map(Ownership.hasOurState) ?? false
            if ops.isEmpty && !hasOurState { return nil }
            return TableComparison(table: table, ops: ops, live: liveTable, hasOurState: hasOurState)
        }
    }

    init(table: Table, ops: [Operation], live: SavedTable?, hasOurState: Bool) {
        self.table = table
        self.ops = ops
        self.live = live
        self.hasOurState = hasOurState
        desiredChains = IptablesRestore.ownChains(ops).map(\.iptablesName)
        liveOurChains = live?.chains.filter(Ownership.isOurChain) ?? []
        for entry in ChainLayout.materialize(ops) {
            desired[entry.chain.iptablesName] = entry.rules.flatMap(SaveCanonical.specs)
        }
        var builtins: [String] = []
        for op in ops where !builtins.contains(op.chain.iptablesName) {
            if case .builtin = op.chain { builtins.append(op.chain.iptablesName) }
        }
        for rule in live?.rules ?? [] where Ownership.builtinChains.contains(rule.chain) {
            if !builtins.contains(rule.chain),
                Ownership.isOurs(rule, table: table.rawValue, tableHasOurState: hasOurState)
            {
                builtins.append(rule.chain)
            }
        }
        builtinChains = builtins
    }

    /// The specs the plan puts in `chain`, as `iptables-save` prints them.
    func desiredSpecs(_ chain: String) -> [String] { desired[chain] ?? [] }

    /// The live rules of ours in `chain` (every rule of one of our chains).
    func liveOurs(_ chain: String) -> [SavedRule] {
        let rules = live?.rules(in: chain) ?? []
        guard Ownership.builtinChains.contains(chain) else { return rules }
        return rules.filter { Ownership.isOurs($0, table: table.rawValue, tableHasOurState: hasOurState) }
    }
}

/// Live state + desired operations (one family) → the per-table changes (none when the
/// live state already matches). Pure.
///
/// Each changed table becomes one atomic restore block: our chains are declared `:C - [0:0]`
/// (created or emptied) and refilled; in a built-in chain whose rules of ours differ from the
/// plan, ours are deleted and re-added in plan order (so foreign rules keep their place and a
/// re-run never duplicates a jump); chains of ours the plan no longer has are emptied and
/// deleted. Nothing else is touched.
public func reconcile(live: [SavedTable], desired: [Operation]) -> [TableChange] {
    var changes: [TableChange] = []
    for t in TableComparison.all(live: live, desired: desired) {
        let stale = t.liveOurChains.filter { !t.desiredChains.contains($0) }
        let rebuilt = t.desiredChains.filter {
            !t.liveOurChains.contains($0) || t.liveOurs($0).map(\.spec) != t.desiredSpecs($0)
        }
        var differingBuiltins: [String: [SavedRule]] = [:]
        for chain in t.builtinChains where t.liveOurs(chain).map(\.spec) != t.desiredSpecs(chain) {
            differingBuiltins[chain] = t.liveOurs(chain)
        }
        if rebuilt.isEmpty && stale.isEmpty && differingBuiltins.isEmpty { continue }

        var lines = ["*\(t.table.rawValue)"]
        for chain in t.desiredChains + stale { lines.append(":\(chain) - [0:0]") }
        for chain in t.builtinChains {
            for rule in differingBuiltins[chain] ?? [] { lines.append("-D \(chain) \(rule.spec)") }
        }
        for op in t.ops {
            if case .builtin = op.chain, differingBuiltins[op.chain.iptablesName] == nil { continue }
            lines += IptablesRestore.lines(op)
        }
        for chain in stale { lines.append("-X \(chain)") }
        lines.append("COMMIT")

        var parts: [String] = []
        if !rebuilt.isEmpty { parts.append("wrote \(rebuilt.joined(separator: ", "))") }
        for chain in t.builtinChains {
            guard let removed = differingBuiltins[chain] else { continue }
            parts.append("\(chain): -\(removed.count) +\(t.desiredSpecs(chain).count) rules")
        }
        if !stale.isEmpty { parts.append("removed \(stale.joined(separator: ", "))") }
        changes.append(
            TableChange(
                table: t.table.rawValue, block: lines.joined(separator: "\n") + "\n",
                summary: "\(t.table.rawValue): " + parts.joined(separator: "; ")))
    }
    return changes
}

/// Differences between the live state and the plan (one family), one readable line each;
/// empty when they match. Order matters within a chain.
public func drift(live: [SavedTable], desired: [Operation], family: Family) -> [String] {
    var lines: [String] = []
    for t in TableComparison.all(live: live, desired: desired) {
        let location = "\(family.rawValue) \(t.table.rawValue)"
        for chain in t.liveOurChains where !t.desiredChains.contains(chain) {
            lines.append("extra chain in \(location): \(chain)")
        }
        for chain in t.builtinChains + t.desiredChains {
            let want = t.desiredSpecs(chain)
            if !Ownership.builtinChains.contains(chain) && !t.liveOurChains.contains(chain) {
                lines.append("missing chain in \(location): \(chain)")
            }
            let have = t.liveOurs(chain).map(\.spec)
            if have == want { continue }
            for spec in want where !have.contains(spec) {
                lines.append("missing rule in \(location): -A \(chain) \(spec)")
            }
            for spec in have where !want.contains(spec) {
                lines.append("extra rule in \(location): -A \(chain) \(spec)")
            }
            if Set(have) == Set(want) { lines.append("rule order or count differs in \(location) \(chain)") }
        }
    }
    return lines
}
