import MeshModel
import MeshRender
import MeshSystem

/// A failure of the iptables backend, classified for the exit code.
public struct IptablesError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// A binary or a kernel feature is missing (exit 69).
        case unavailable
        /// Not permitted: CAP_NET_ADMIN is needed (exit 77).
        case permission
        /// The xtables lock stayed busy for the whole wait (exit 75).
        case lockBusy
        /// A child (named) did not finish within its deadline and was killed (exit 124).
        case timedOut
        /// Anything else (exit 1).
        case failed
    }

    public var kind: Kind
    public var message: String
    /// The payload line the restore reported as failed (`line N failed`), if it said.
    /// Tables whose `COMMIT` comes before it were committed; the others were not.
    public var failedLine: Int?

    public init(kind: Kind, message: String, failedLine: Int? = nil) {
        self.kind = kind
        self.message = message
        self.failedLine = failedLine
    }

    public var description: String { message }
}

/// Which iptables variant a family uses, and its binaries.
public struct IptablesTools: Sendable, Hashable {
    public enum Variant: String, Sendable { case legacy, nft, plain }
    public var variant: Variant
    public var save: String
    public var restore: String
    /// legacy takes the xtables lock: wait for it instead of failing at once.
    public var waits: Bool { variant == .legacy }
}

/// Installs, removes and verifies the plan through `iptables-restore`/`ip6tables-restore`:
/// one `*-save` and at most one `*-restore` per family, payload on stdin.
public struct IptablesBackend {
    public var runner: any CommandRunner
    public var forced: IptablesVariant?
    /// Seconds to wait for the xtables lock (legacy only); kept 5 s under the child deadline
    /// (see `init`), so that a busy lock is reported as such, not as a hung child.
    public var lockWait: Int
    public var log: (String) -> Void
    /// Reads /proc/net/ip{,6}_tables_names; injectable for tests.
    public var legacyTablesLoaded: (Family) -> Bool
    /// Whether the kernel holds any table of this variant and family (nil: unknown). When it
    /// holds none, there is nothing to save: a fresh namespace costs one restore per family.
    public var hasTables: (IptablesTools.Variant, Family) -> Bool?

    /// `lockWait` is lowered to `childTimeoutMilliseconds` minus 5 s (at least 1 s) when
    /// that is shorter: the default 30 s child deadline gives a 25 s xtables lock wait.
    public init(
        runner: any CommandRunner, forced: IptablesVariant?, lockWait: Int = 30, childTimeoutMilliseconds: Int64? = nil,
        legacyTablesLoaded: @escaping (Family) -> Bool,
        hasTables: @escaping (IptablesTools.Variant, Family) -> Bool? = { _, _ in nil },
        log: @escaping (String) -> Void
    ) {
        self.hasTables = hasTables
        self.runner = runner
        self.forced = forced
        self.lockWait = childTimeoutMilliseconds.map { min(lockWait, max(1, Int(($0 - 5000) / 1000))) } ?? lockWait
        self.legacyTablesLoaded = legacyTablesLoaded
        self.log = log
    }

    /// Istio's choice, without probe processes: legacy when forced, or when its binary exists
    /// and this namespace already has legacy tables (`/proc/net/ip_tables_names`); else nft;
    /// else plain `iptables-restore`.
    public func tools(for family: Family) throws(IptablesError) -> IptablesTools {
        let prefix = family == .ipv4 ? "iptables" : "ip6tables"
        func find(_ variant: IptablesTools.Variant) -> IptablesTools? {
            let infix = variant == .plain ? "" : "-\(variant.rawValue)"
            guard let save = runner.which("\(prefix)\(infix)-save"),
                let restore = runner.which("\(prefix)\(infix)-restore")
            else { return nil }
            return IptablesTools(variant: variant, save: save, restore: restore)
        }
        if let forced {
            let variant: IptablesTools.Variant = forced == .legacy ? .legacy : .nft
            guard let tools = find(variant) else {
                throw IptablesError(
                    kind: .unavailable,
                    message:
                        "\(prefix)-\(variant.rawValue)-restore not found in PATH (--force-iptables-binary \(variant.rawValue))"
                )
            }
            return tools
        }
        if let legacy = find(.legacy), legacyTablesLoaded(family) { return legacy }
        if let nft = find(.nft) { return nft }
        if let plain = find(.plain) { return plain }
        throw IptablesError(
            kind: .unavailable,
            message:
                "\(prefix)-restore not found in PATH (install iptables, or use --native-nftables, which needs no binary)"
        )
    }

    /// Makes the live state equal to the plan. Returns what changed (empty: nothing to do).
    ///
    /// iptables-restore commits table by table, so a restore that fails may have committed
    /// the tables before the failing one. On any failure every table a restore may have
    /// committed is put back as it was before (from the first dump), in this family and in
    /// the families already changed. A restore is retried once, from a fresh dump, only if
    /// that dump shows the rules it was built from changed meanwhile (a concurrent writer);
    /// any other failure is reported as it is.
    public func apply(_ plan: Plan) throws(IptablesError) -> [String] {
        var done: [(tools: IptablesTools, before: [SavedTable], changed: Set<String>)] = []
        var summary: [String] = []
        for family in plan.families {
            var current: (tools: IptablesTools, before: [SavedTable])?
            var committed: Set<String> = []
            do {
                let tools = try tools(for: family)
                log("\(family.rawValue): using \(tools.restore) (\(tools.variant.rawValue))")
                // Nothing of this variant in the kernel yet: the live state is known to be empty.
                let before = hasTables(tools.variant, family) == false ? [] : try save(tools)
                current = (tools, before)
                let desired = plan.operations(for: family)
                let changes = try restoreRetryingOnce(
                    tools, family, from: before, changes: { reconcile(live: $0, desired: desired) },
                    committed: &committed)
                if changes.isEmpty {
                    log("\(family.rawValue): rules already installed, nothing to do")
                    continue
                }
                done.append((tools, before, committed))
                for change in changes { summary.append("\(family.rawValue) \(change.summary)") }
            } catch {
                if let current, !committed.isEmpty { rollback(current.tools, current.before, tables: committed) }
                for previous in done.reversed() { rollback(previous.tools, previous.before, tables: previous.changed) }
                throw error
            }
        }
        return summary
    }

    /// Restores `changes(dump)` from `dump`; if that fails and a fresh dump shows that the
    /// tables the restore did not commit changed since `dump` (someone else wrote), once more
    /// from the fresh dump. Returns the changes of the restore that succeeded (empty: there
    /// was nothing to do). `committed` gets every table a restore may have committed, also
    /// when it throws.
    func restoreRetryingOnce(
        _ tools: IptablesTools, _ family: Family, from dump: [SavedTable],
        changes: ([SavedTable]) -> [TableChange], committed: inout Set<String>
    ) throws(IptablesError) -> [TableChange] {
        var live = dump
        var retried = false
        while true {
            let changes = changes(live)
            if changes.isEmpty { return [] }
            do {
                try restore(tools, payload: changes.map(\.block).joined(), noflush: true)
                committed.formUnion(changes.map(\.table))
                return changes
            } catch {
                let (done, pending) = Self.commitState(changes, failedLine: error.failedLine)
                committed.formUnion(done)
                guard !retried, error.kind == .failed || error.kind == .unavailable else { throw error }
                let fresh = try save(tools)
                guard Self.changedSince(live, fresh, tables: pending) else { throw error }
                log(
                    "\(family.rawValue): \(error.message); the rules changed since our dump, retrying once from a fresh dump"
                )
                live = fresh
                retried = true
            }
        }
    }

    /// Which tables of a failed restore were committed, and which were not (the failing one
    /// and those after it). Without a failing line (killed, crashed, or a message without
    /// one) any of them may have been committed: all count as both.
    static func commitState(_ changes: [TableChange], failedLine: Int?) -> (committed: [String], pending: [String]) {
        guard let failedLine else { return (changes.map(\.table), changes.map(\.table)) }
        var committed: [String] = []
        var pending: [String] = []
        var lastLine = 0
        for change in changes {
            lastLine += change.block.utf8.reduce(0) { $1 == UInt8(ascii: "\n") ? $0 + 1 : $0 }
            if lastLine < failedLine { committed.append(change.table) } else { pending.append(change.table) }
        }
        return (committed, pending)
    }

    /// Whether any of `tables` holds other chains or rules in `after` than in `before`
    /// (counters and policies aside; an absent table and one with only empty built-in
    /// chains are the same: iptables-nft creates and keeps tables on its own).
    static func changedSince(_ before: [SavedTable], _ after: [SavedTable], tables: [String]) -> Bool {
        func content(_ dump: [SavedTable], _ name: String) -> [String] {
            guard let table = dump.first(where: { $0.name == name }) else { return [] }
            return table.chains.filter { !Ownership.builtinChains.contains($0) }.map { ":" + $0 }
                + table.rules.map { "-A \($0.chain) \($0.spec)" }
        }
        return tables.contains { content(before, $0) != content(after, $0) }
    }

    /// One family and variant's part of a cleanup: the restore that removes ours.
    public struct CleanupStep: Sendable, Hashable {
        public var family: Family
        public var tools: IptablesTools
        public var changes: [TableChange]
        /// The dump `changes` were computed from.
        public var live: [SavedTable]

        /// The `--noflush` restore payload.
        public var payload: String { changes.map(\.block).joined() }
    }

    /// What removing every chain and rule of ours (see `Ownership`) would restore, from the
    /// live state of `families` in every installed variant. Reads only.
    public func cleanupPlan(families: [Family] = Family.allCases) throws(IptablesError) -> [CleanupStep] {
        var steps: [CleanupStep] = []
        for family in families {
            // A variant with no table here holds nothing of ours: no dump needed.
            for tools in cleanupTools(for: family) where hasTables(tools.variant, family) != false {
                let live = try save(tools)
                let changes = reconcile(live: live, desired: [])
                if !changes.isEmpty {
                    steps.append(CleanupStep(family: family, tools: tools, changes: changes, live: live))
                }
            }
        }
        return steps
    }

    /// Carries out a cleanup plan (retrying a step once, from a fresh dump, when the rules
    /// changed since it was made). Returns what was removed. Idempotent.
    public func clean(_ steps: [CleanupStep]) throws(IptablesError) -> [String] {
        var summary: [String] = []
        for step in steps {
            var committed: Set<String> = []
            var first = true
            let changes = try restoreRetryingOnce(
                step.tools, step.family, from: step.live,
                changes: { live in
                    defer { first = false }
                    return first ? step.changes : reconcile(live: live, desired: [])
                }, committed: &committed)
            for change in changes {
                summary.append("\(step.family.rawValue) \(step.tools.variant.rawValue) \(change.summary)")
            }
        }
        return summary
    }

    /// Removes every chain and rule of ours from the live state of `families`. Idempotent.
    public func clean(families: [Family] = Family.allCases) throws(IptablesError) -> [String] {
        try clean(try cleanupPlan(families: families))
    }

    /// Differences between the live state and the plan (empty: they match), in `families`.
    public func verify(_ plan: Plan, families: [Family] = Family.allCases) throws(IptablesError) -> [String] {
        var lines: [String] = []
        for family in families {
            let tools = try tools(for: family)
            let live = try save(tools)
            lines += drift(live: live, desired: plan.operations(for: family), family: family)
        }
        return lines
    }

    /// What the kernel holds for `family` (one `*-save`), for reading rules back.
    public func live(family: Family) throws(IptablesError) -> [SavedTable] {
        try save(try tools(for: family))
    }

    /// The same with each rule's counters (`*-save -c`), for `meshinit stats`.
    public func liveCounters(family: Family) throws(IptablesError) -> [SavedTable] {
        try save(try tools(for: family), arguments: ["-c"])
    }

    /// Every variant that can hold rules here: the legacy one only if its tables exist.
    func cleanupTools(for family: Family) -> [IptablesTools] {
        var out: [IptablesTools] = []
        if let t = try? tools(for: family) { out.append(t) }
        let prefix = family == .ipv4 ? "iptables" : "ip6tables"
        if forced == nil, legacyTablesLoaded(family), !out.contains(where: { $0.variant == .legacy }),
            let save = runner.which("\(prefix)-legacy-save"), let restore = runner.which("\(prefix)-legacy-restore")
        {
            out.append(IptablesTools(variant: .legacy, save: save, restore: restore))
        }
        return out
    }

    func save(_ tools: IptablesTools, arguments: [String] = []) throws(IptablesError) -> [SavedTable] {
        let result = try run(tools.save, arguments, stdin: "")
        guard result.status == 0 else { throw classify(tools.save, result, payload: "") }
        guard result.stdoutDropped == 0 else {
            let name = tools.save.split(separator: "/").last.map(String.init) ?? tools.save
            throw IptablesError(
                kind: .failed,
                message:
                    "\(name) printed more than \(result.stdout.utf8.count >> 20) MiB of rules: refusing to act on a partial dump"
            )
        }
        return parseSave(result.stdout)
    }

    func restore(_ tools: IptablesTools, payload: String, noflush: Bool) throws(IptablesError) {
        var args: [String] = []
        if noflush { args.append("--noflush") }
        if tools.waits { args.append("--wait=\(lockWait)") }
        let result = try run(tools.restore, args, stdin: payload)
        guard result.status == 0 else { throw classify(tools.restore, result, payload: payload) }
    }

    /// Puts the tables we changed back exactly as they were: tables that existed are restored
    /// whole from the earlier dump; tables that did not are emptied of ours.
    func rollback(_ tools: IptablesTools, _ before: [SavedTable], tables: Set<String>) {
        let existed = before.filter { tables.contains($0.name) }
        let created = tables.sorted().filter { name in !before.contains { $0.name == name } }
        do {
            if !existed.isEmpty {
                try restore(tools, payload: existed.map(\.block).joined(), noflush: false)
            }
            if !created.isEmpty {
                let now = try save(tools).filter { created.contains($0.name) }
                let payload = reconcile(live: now, desired: []).map(\.block).joined()
                if !payload.isEmpty { try restore(tools, payload: payload, noflush: true) }
            }
            log("rolled back \(tables.sorted().joined(separator: ", ")) with \(tools.restore)")
        } catch {
            log("rollback with \(tools.restore) failed: \(error)")
        }
    }

    func run(_ path: String, _ args: [String], stdin: String) throws(IptablesError) -> CommandResult {
        do {
            return try runner.run(path, args, stdin: stdin)
        } catch {
            if case .timedOut = error {
                throw IptablesError(
                    kind: .timedOut,
                    message: "\(error.description) (--child-timeout / MESHINIT_CHILD_TIMEOUT, if it is only slow)")
            }
            throw IptablesError(kind: .unavailable, message: error.description)
        }
    }

    /// Turns a failed restore/save into a one-line, classified error.
    func classify(_ path: String, _ result: CommandResult, payload: String) -> IptablesError {
        let name = path.split(separator: "/").last.map(String.init) ?? path
        let stderr = result.stderr
        let firstLine =
            stderr.split(separator: "\n").first { !$0.isEmpty }.map(String.init) ?? "exit status \(result.status)"
        let lineNumber = failedLine(stderr)
        if stderr.contains("xtables lock") || stderr.contains("holding the xtables lock") {
            return IptablesError(
                kind: .lockBusy, message: "\(name): xtables lock still busy after \(lockWait)s", failedLine: lineNumber)
        }
        if stderr.contains("Permission denied") || stderr.contains("must be root")
            || stderr.contains("Operation not permitted")
        {
            return IptablesError(
                kind: .permission, message: "\(name): not permitted (CAP_NET_ADMIN is needed): \(firstLine)",
                failedLine: lineNumber)
        }
        if let module = missingModule(stderr) {
            return IptablesError(
                kind: .unavailable, message: "\(name): kernel support missing (\(module)): \(firstLine)",
                failedLine: lineNumber)
        }
        var message = "\(name) failed: \(firstLine)"
        if let lineNumber {
            let lines = payload.split(separator: "\n", omittingEmptySubsequences: false)
            if lineNumber >= 1 && lineNumber <= lines.count {
                message += " — line \(lineNumber): \(lines[lineNumber - 1])"
            }
        }
        return IptablesError(kind: .failed, message: message, failedLine: lineNumber)
    }

    func failedLine(_ stderr: String) -> Int? {
        // "iptables-restore: line 12 failed" / "Error occurred at line: 12"
        let words = stderr.split(whereSeparator: { $0 == " " || $0 == "\n" })
        for (i, word) in words.enumerated() where word == "line" || word == "line:" {
            if i + 1 < words.count, let n = Int(words[i + 1].prefix { $0.isNumber }) { return n }
        }
        return nil
    }

    func missingModule(_ stderr: String) -> String? {
        let targets = [
            "REDIRECT": "xt_REDIRECT, nf_nat", "TPROXY": "xt_TPROXY", "CT": "xt_CT", "MARK": "xt_mark",
            "CONNMARK": "xt_connmark",
        ]
        let matches = [
            "owner": "xt_owner", "conntrack": "xt_conntrack", "multiport": "xt_multiport", "mark": "xt_mark",
            "connmark": "xt_connmark", "tcp": "xt_tcpudp", "udp": "xt_tcpudp",
        ]
        for (name, module) in targets where stderr.contains("Couldn't load target `\(name)'") { return module }
        for (name, module) in matches where stderr.contains("Couldn't load match `\(name)'") { return module }
        if stderr.contains("can't initialize") || stderr.contains("Table does not exist") {
            for table in ["nat", "mangle", "raw", "filter"] where stderr.contains("`\(table)'") {
                return table == "nat" ? "nf_nat, iptable_nat or nf_tables" : "iptable_\(table) or nf_tables"
            }
            return "ip_tables or nf_tables"
        }
        if stderr.contains("Protocol not supported") || stderr.contains("Address family not supported") {
            return "nf_tables / ip6_tables"
        }
        return nil
    }
}
