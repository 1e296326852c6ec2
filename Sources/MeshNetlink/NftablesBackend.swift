import CNftnl
import MeshModel
import MeshRender

#if canImport(Glibc)
    import Glibc
#endif

/// The native nftables backend: installs, removes and verifies meshinit's `inet` tables
/// (`istio-proxy-nat`, `-mangle`, `-raw`) through netlink, without the `nft` binary.
///
/// ```swift
/// let backend = NftablesBackend(transport: try NetfilterSocket())
/// try backend.apply(plan)                 // one atomic transaction
/// let drift = try backend.verify(plan)    // [] when the kernel holds exactly the plan
/// try backend.clean()
/// ```
public final class NftablesBackend {
    private let transport: any NetlinkTransport
    private let maxAttempts: Int

    /// - Parameters:
    ///   - transport: where batches go (`NetfilterSocket` for the kernel).
    ///   - maxAttempts: how many times a batch is sent when the kernel reports a transient
    ///     error (EBUSY, EAGAIN, EINTR, ERESTART, ENOBUFS). Resending is safe: every batch
    ///     replaces our tables as a whole.
    public init(transport: any NetlinkTransport, maxAttempts: Int = 3) {
        self.transport = transport
        self.maxAttempts = max(1, maxAttempts)
    }

    /// Installs `plan` in one transaction (see `NftBatchBuilder.applyBatch`): our tables
    /// are replaced atomically, tables the plan does not use are deleted. On failure the
    /// kernel applies nothing.
    ///
    /// - Throws: `NetlinkError`; for a refused message, `.kernel` with the object as nft
    ///   text and the errno, e.g. `add rule inet istio-proxy-nat output counter jump x:
    ///   No such file or directory (ENOENT)`.
    ///
    /// The kernel's state is read first (one table dump; the rules too when our tables
    /// exist): when it already holds exactly the plan nothing is sent, and otherwise the batch
    /// deletes only what exists (see `NftBatchBuilder.applyBatch(_:existing:)`).
    ///
    /// - Returns: whether anything was changed.
    @discardableResult
    public func apply(_ plan: Plan) throws(NetlinkError) -> Bool {
        try apply(plan, after: nil)
    }

    /// `apply`, starting from `inventory` (a table list read just before, under the same
    /// namespace lock, e.g. to choose the backend): it serves as the first read, so choosing
    /// costs no extra round trip.
    ///
    /// The comparison is complete (see `RulesetDiff`): a table of ours that is dormant, a base
    /// chain with another policy or priority, a foreign chain or set in our table, make the
    /// kernel's state differ, and the table is replaced (re-armed).
    @discardableResult
    public func apply(_ plan: Plan, after inventory: NftTables?) throws(NetlinkError) -> Bool {
        var reader = RulesetReader(transport: transport)
        let owned = NftBatchBuilder.ownedTables.map(\.nftTableName)
        let snapshot = try reader.snapshot(tables: owned, inventory: inventory?.inventory)
        let present = snapshot.tables.map(\.name)
        if !present.isEmpty {
            let expected = try NftablesBackend.expectedSnapshot(plan)
            if RulesetDiff.differences(expected: expected, actual: snapshot.tables).isEmpty { return false }
        }
        do {
            try send(try NftBatchBuilder.applyBatch(plan, existing: Set(present)))
        } catch  where NftablesBackend.isTableRace(error) {
            // Another writer created or deleted one of our tables since the dump: replace
            // without assumptions.
            try send(try NftBatchBuilder.applyBatch(plan))
        }
        return true
    }

    /// The kernel's table list (one dump, with the ruleset generation): which of our tables
    /// exist, namesakes in other families, and whether iptables-nft has tables.
    public func inventory() throws(NetlinkError) -> NftTables {
        var reader = RulesetReader(transport: transport)
        return NftTables(inventory: try reader.inventory(among: NftBatchBuilder.ownedTables.map(\.nftTableName)))
    }

    /// Deletes all of meshinit's tables in one transaction. Idempotent; other tables are
    /// not touched.
    ///
    /// - Throws: `NetlinkError` as for `apply`.
    public func clean() throws(NetlinkError) {
        var reader = RulesetReader(transport: transport)
        let present = try reader.inventory(among: NftBatchBuilder.ownedTables.map(\.nftTableName)).ours
        guard !present.isEmpty else { return }
        do {
            try send(try NftBatchBuilder.cleanBatch(existing: Set(present)))
        } catch  where NftablesBackend.isTableRace(error) {
            try send(try NftBatchBuilder.cleanBatch())
        }
    }

    /// A table message refused because the table appeared or vanished after our dump.
    static func isTableRace(_ error: NetlinkError) -> Bool {
        (error.errno == EEXIST && error.subject.hasPrefix("create table"))
            || (error.errno == ENOENT && error.subject.hasPrefix("delete table"))
    }

    /// Whether any `ip` (or, with `ipv6`, `ip6`) table exists: where iptables-nft keeps its
    /// rules. None means there is nothing to read back before a first install.
    public func hasIptablesNftTables(ipv6: Bool) throws(NetlinkError) -> Bool {
        var reader = RulesetReader(transport: transport)
        return try reader.hasTables(family: UInt16(ipv6 ? NFPROTO_IPV6 : NFPROTO_IPV4))
    }

    /// Chains named `ISTIO_*` in the kernel's `ip`/`ip6` tables (iptables-nft's rules), as
    /// "ip nat ISTIO_OUTPUT": what the iptables backend installed, seen without its binaries.
    public func iptablesNftChains() throws(NetlinkError) -> [String] {
        var reader = RulesetReader(transport: transport)
        return try reader.xtablesChains(prefix: "ISTIO_")
    }

    /// The names of meshinit's tables present in the kernel (for reports).
    ///
    /// - Throws: `NetlinkError` when the state cannot be read.
    public func installedTables() throws(NetlinkError) -> [String] {
        var reader = RulesetReader(transport: transport)
        return try reader.inventory(among: NftBatchBuilder.ownedTables.map(\.nftTableName)).ours
    }

    /// Compares the kernel's state of our tables with `plan`.
    ///
    /// - Returns: one readable line per difference (a missing or unexpected table, chain or
    ///   named set; a table with flags such as `dormant`; a base chain with another type, hook,
    ///   priority, policy, devices or flags; a missing rule shown as `add rule …` nft text, an
    ///   unexpected rule shown as bytecode); empty when the kernel matches the plan.
    /// - Throws: `NetlinkError` when the state cannot be read.
    public func verify(_ plan: Plan) throws(NetlinkError) -> [String] {
        try compare(plan).differences
    }

    /// `verify`, with notes on what was seen but is not ours to compare (a table with one of
    /// our names in another family, e.g. `ip istio-proxy-nat`).
    public func compare(_ plan: Plan) throws(NetlinkError) -> NftComparison {
        var reader = RulesetReader(transport: transport)
        let snapshot = try reader.snapshot(tables: NftBatchBuilder.ownedTables.map(\.nftTableName))
        let expected = try NftablesBackend.expectedSnapshot(plan)
        return NftComparison(
            differences: RulesetDiff.differences(expected: expected, actual: snapshot.tables),
            notes: snapshot.namesakes.map {
                "table \($0) has the name of one of ours but another family: not ours (meshinit makes inet tables), not compared"
            })
    }

    /// The rules of our tables as the kernel holds them, chain by chain (tables and chains
    /// in the plan's layout order first, then any others), each paired with the planned rule
    /// of that chain it equals (the same bytecode), if any; a chain of a dormant table does
    /// not run, and a chain whose header (or table) differs from the plan's says how.
    ///
    /// - Throws: `NetlinkError` when the state cannot be read.
    public func liveRules(comparedWith plan: Plan) throws(NetlinkError) -> [LiveChain] {
        var reader = RulesetReader(transport: transport)
        let live = try reader.read(tables: NftBatchBuilder.ownedTables.map(\.nftTableName))
        let expected = try NftablesBackend.expectedSnapshot(plan)
        var out: [LiveChain] = []
        for table in live {
            let planned = expected.first { $0.name == table.name }
            var tableNotes: [String] = []
            if table.flags != 0 {
                tableNotes.append(RulesetDiff.tableFlags(table))
            }
            for chain in table.chains {
                let plannedChain = planned?.chains.first { $0.name == chain.name }
                let texts = plannedChain?.rules.map(\.text) ?? []
                let rules = chain.rules.enumerated().map { i, text in
                    LiveChain.Rule(
                        text: text, planned: texts.firstIndex(of: text),
                        counter: i < chain.counters.count ? chain.counters[i] : nil)
                }
                var notes = tableNotes
                if let plannedChain, plannedChain.base != chain.base {
                    notes.append(RulesetDiff.header("inet \(table.name)", plannedChain, chain))
                }
                out.append(
                    LiveChain(
                        table: table.name, chain: chain.name, rules: rules,
                        runs: table.flags & RulesetDiff.dormant == 0, notes: notes))
            }
        }
        return out
    }

    private func send(_ batch: Batch) throws(NetlinkError) {
        var attempt = 1
        while true {
            do {
                try transport.commit(batch)
                return
            } catch {
                guard error.isTransient, attempt < maxAttempts else { throw error }
                attempt += 1
            }
        }
    }

    /// The plan in snapshot form, with the nft text of every rule for messages.
    static func expectedSnapshot(_ plan: Plan) throws(NetlinkError) -> [ExpectedTable] {
        var out: [ExpectedTable] = []
        for layout in NftLayout.tables(of: plan) {
            var chains: [ExpectedChain] = []
            for chain in layout.chains {
                var rules: [(text: String, statement: String)] = []
                for rule in chain.rules {
                    rules.append((try RuleText.expected(RuleCompiler.compile(rule)), NftScript.statement(rule)))
                }
                let base = NftScript.baseChainSpec(layout.table, chain.chain)
                chains.append(ExpectedChain(name: chain.chain.nftName, base: base, rules: rules))
            }
            out.append(ExpectedTable(name: layout.table.nftTableName, chains: chains))
        }
        return out
    }
}

/// One chain of ours as the kernel holds it (`liveRules`).
public struct LiveChain: Sendable, Hashable {
    public struct Rule: Sendable, Hashable {
        /// The rule as read back (bytecode text).
        public var text: String
        /// Index of the planned rule of this chain with the same bytecode, if any.
        public var planned: Int?
        /// What its counter has matched (nil: it has no counter).
        public var counter: RuleCounter? = nil
    }

    /// `istio-proxy-nat`, …
    public var table: String
    /// `output`, `istio-output`, …
    public var chain: String
    public var rules: [Rule]
    /// False when its table is dormant: the kernel does not run its chains.
    public var runs: Bool = true
    /// How the chain's header or its table differ from the plan's (empty: they do not).
    public var notes: [String] = []
}

/// The kernel's table list, read once (`NftablesBackend.inventory()`).
public struct NftTables: Sendable, Hashable {
    let inventory: TableInventory

    /// Our tables (`inet istio-proxy-*`) present, in layout order.
    public var ours: [String] { inventory.ours }

    /// Whether any `ip` (or, with `ipv6`, `ip6`) table exists: where iptables-nft keeps its rules.
    public func hasIptablesNftTables(ipv6: Bool) -> Bool {
        inventory.families.contains(UInt32(ipv6 ? NFPROTO_IPV6 : NFPROTO_IPV4))
    }
}

/// `NftablesBackend.compare`: the differences from the plan, and notes.
public struct NftComparison: Sendable, Hashable {
    /// One line per difference; empty when the kernel holds exactly the plan.
    public var differences: [String]
    /// What was seen but is not ours to compare.
    public var notes: [String]
}

struct ExpectedChain {
    var name: String
    var base: String?
    var rules: [(text: String, statement: String)]
}

struct ExpectedTable {
    var name: String
    var chains: [ExpectedChain]
}

/// Expected vs. live tables → readable differences. Everything the kernel holds that
/// changes what our tables do is compared: table flags (a dormant table runs nothing), every
/// chain's header (type, hook, priority, policy, devices, flags), named sets (ours has none),
/// every rule in order, with its sets' elements and properties. Counters and handles are not.
enum RulesetDiff {
    static let dormant: UInt32 = 0x1  // NFT_TABLE_F_DORMANT

    static func differences(expected: [ExpectedTable], actual: [TableSnapshot]) -> [String] {
        var out: [String] = []
        for table in actual where !expected.contains(where: { $0.name == table.name }) {
            out.append("unexpected table inet \(table.name)")
        }
        for table in expected {
            guard let live = actual.first(where: { $0.name == table.name }) else {
                out.append("missing table inet \(table.name)")
                continue
            }
            let t = "inet \(table.name)"
            if live.flags != 0 { out.append(tableFlags(live)) }
            for set in live.namedSets { out.append("unexpected set \(t) \(set)") }
            for chain in live.chains where !table.chains.contains(where: { $0.name == chain.name }) {
                out.append("unexpected chain \(t) \(chain.name)")
            }
            for chain in table.chains {
                guard let liveChain = live.chains.first(where: { $0.name == chain.name }) else {
                    out.append("missing chain \(t) \(chain.name)")
                    continue
                }
                if liveChain.base != chain.base { out.append(header(t, chain, liveChain)) }
                for change in diff(chain.rules.map(\.text), liveChain.rules) {
                    switch change {
                    case .missing(let index):
                        out.append("missing rule: add rule \(t) \(chain.name) \(chain.rules[index].statement)")
                    case .extra(let index):
                        out.append(
                            "unexpected rule in \(t) \(chain.name) (position \(index + 1)): \(liveChain.rules[index])")
                    }
                }
            }
        }
        return out
    }

    /// `table inet istio-proxy-nat has flags dormant (expected none): …`.
    static func tableFlags(_ table: TableSnapshot) -> String {
        let what =
            table.flags & dormant != 0
            ? ": a dormant table runs none of its chains (capture is off)" : ""
        return "table inet \(table.name) has flags \(NftnlTable.flagNames(table.flags)) (expected none)\(what)"
    }

    static func header(_ table: String, _ chain: ExpectedChain, _ live: ChainSnapshot) -> String {
        "chain \(table) \(chain.name): expected \(chain.base ?? "a regular chain"), found \(live.base ?? "a regular chain")"
    }

    enum Change: Equatable {
        case missing(Int)  // index into expected
        case extra(Int)  // index into actual
    }

    /// Longest-common-subsequence diff of two rule lists (order matters in a chain).
    static func diff(_ a: [String], _ b: [String]) -> [Change] {
        let n = a.count
        let m = b.count
        var table = [[Int]](repeating: [Int](repeating: 0, count: m + 1), count: n + 1)
        for i in stride(from: n - 1, through: 0, by: -1) {
            for j in stride(from: m - 1, through: 0, by: -1) {
                table[i][j] = a[i] == b[j] ? table[i + 1][j + 1] + 1 : max(table[i + 1][j], table[i][j + 1])
            }
        }
        var changes: [Change] = []
        var i = 0
        var j = 0
        while i < n || j < m {
            if i < n, j < m, a[i] == b[j] {
                i += 1
                j += 1
            } else if j < m, i == n || table[i][j + 1] >= table[i + 1][j] {
                changes.append(.extra(j))
                j += 1
            } else {
                changes.append(.missing(i))
                i += 1
            }
        }
        return changes
    }
}
