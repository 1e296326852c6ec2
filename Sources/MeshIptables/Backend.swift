import MeshConfig
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
        /// Anything else (exit 1).
        case failed
    }

    public var kind: Kind
    public var message: String
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
    /// Seconds to wait for the xtables lock (legacy only).
    public var lockWait: Int
    public var log: (String) -> Void
    /// Reads /proc/net/ip{,6}_tables_names; injectable for tests.
    public var legacyTablesLoaded: (Family) -> Bool
    /// Whether the kernel holds any table of this variant and family (nil: unknown). When it
    /// holds none, there is nothing to save: a fresh namespace costs one restore per family.
    public var hasTables: (IptablesTools.Variant, Family) -> Bool?

    public init(
        runner: any CommandRunner, forced: IptablesVariant?, lockWait: Int = 30,
        legacyTablesLoaded: @escaping (Family) -> Bool,
        hasTables: @escaping (IptablesTools.Variant, Family) -> Bool? = { _, _ in nil },
        log: @escaping (String) -> Void
    ) {
        self.hasTables = hasTables
        self.runner = runner
        self.forced = forced
        self.lockWait = lockWait
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
    /// If the IPv6 restore fails after IPv4 was changed, IPv4 is put back as it was.
    public func apply(_ plan: Plan) throws(IptablesError) -> [String] {
        var done: [(tools: IptablesTools, before: [SavedTable], changed: [String])] = []
        var summary: [String] = []
        for family in plan.families {
            let tools = try tools(for: family)
            log("\(family.rawValue): using \(tools.restore) (\(tools.variant.rawValue))")
            // Nothing of this variant in the kernel yet: the live state is known to be empty.
            let live = hasTables(tools.variant, family) == false ? [] : try save(tools)
            let changes = reconcile(live: live, desired: plan.operations(for: family))
            if changes.isEmpty {
                log("\(family.rawValue): rules already installed, nothing to do")
                continue
            }
            do {
                try restore(tools, payload: changes.map(\.block).joined(), noflush: true)
            } catch {
                for previous in done.reversed() { rollback(previous.tools, previous.before, tables: previous.changed) }
                throw error
            }
            done.append((tools, live, changes.map(\.table)))
            for change in changes { summary.append("\(family.rawValue) \(change.summary)") }
        }
        return summary
    }

    /// Removes every chain and rule of ours (see `Ownership`) from every table of both
    /// families and every installed variant, from the live state. Idempotent.
    public func clean() throws(IptablesError) -> [String] {
        var summary: [String] = []
        for family in Family.allCases {
            for tools in cleanupTools(for: family) {
                let live = try save(tools)
                let changes = reconcile(live: live, desired: [])
                guard !changes.isEmpty else { continue }
                try restore(tools, payload: changes.map(\.block).joined(), noflush: true)
                for change in changes {
                    summary.append("\(family.rawValue) \(tools.variant.rawValue) \(change.summary)")
                }
            }
        }
        return summary
    }

    /// Differences between the live state and the plan (empty: they match).
    public func verify(_ plan: Plan) throws(IptablesError) -> [String] {
        var lines: [String] = []
        for family in Family.allCases {
            let tools = try tools(for: family)
            let live = try save(tools)
            lines += drift(live: live, desired: plan.operations(for: family), family: family)
        }
        return lines
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

    func save(_ tools: IptablesTools) throws(IptablesError) -> [SavedTable] {
        let result = try run(tools.save, [], stdin: "")
        guard result.status == 0 else { throw classify(tools.save, result, payload: "") }
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
    func rollback(_ tools: IptablesTools, _ before: [SavedTable], tables: [String]) {
        let existed = before.filter { tables.contains($0.name) }
        let created = tables.filter { name in !before.contains { $0.name == name } }
        do {
            if !existed.isEmpty {
                try restore(tools, payload: existed.map(\.block).joined(), noflush: false)
            }
            if !created.isEmpty {
                let now = try save(tools).filter { created.contains($0.name) }
                let payload = reconcile(live: now, desired: []).map(\.block).joined()
                if !payload.isEmpty { try restore(tools, payload: payload, noflush: true) }
            }
            log("rolled back \(tables.joined(separator: ", ")) with \(tools.restore)")
        } catch {
            log("rollback with \(tools.restore) failed: \(error)")
        }
    }

    func run(_ path: String, _ args: [String], stdin: String) throws(IptablesError) -> CommandResult {
        do {
            return try runner.run(path, args, stdin: stdin)
        } catch {
            throw IptablesError(kind: .unavailable, message: error.description)
        }
    }

    /// Turns a failed restore/save into a one-line, classified error.
    func classify(_ path: String, _ result: CommandResult, payload: String) -> IptablesError {
        let name = path.split(separator: "/").last.map(String.init) ?? path
        let stderr = result.stderr
        let firstLine =
            stderr.split(separator: "\n").first { !$0.isEmpty }.map(String.init) ?? "exit status \(result.status)"
        if stderr.contains("xtables lock") || stderr.contains("holding the xtables lock") {
            return IptablesError(kind: .lockBusy, message: "\(name): xtables lock still busy after \(lockWait)s")
        }
        if stderr.contains("Permission denied") || stderr.contains("must be root")
            || stderr.contains("Operation not permitted")
        {
            return IptablesError(
                kind: .permission, message: "\(name): not permitted (CAP_NET_ADMIN is needed): \(firstLine)")
        }
        if let module = missingModule(stderr) {
            return IptablesError(
                kind: .unavailable, message: "\(name): kernel support missing (\(module)): \(firstLine)")
        }
        var message = "\(name) failed: \(firstLine)"
        if let lineNumber = failedLine(stderr) {
            let lines = payload.split(separator: "\n", omittingEmptySubsequences: false)
            if lineNumber >= 1 && lineNumber <= lines.count {
                message += " — line \(lineNumber): \(lines[lineNumber - 1])"
            }
        }
        return IptablesError(kind: .failed, message: message)
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
