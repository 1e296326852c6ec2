import MeshModel
import MeshRender

/// Plan → netlink batch (pure bytes; no kernel).
public enum NftBatchBuilder {
    /// The tables meshinit owns, in Istio's order.
    public static let ownedTables: [Table] = NftLayout.tableOrder

    /// The sequence number of the first (begin) message; fixed so batches are deterministic.
    public static let defaultFirstSequence: UInt32 = 1

    /// One transaction installing `plan`: for each owned table, in order —
    /// in the plan: `add table`, `delete table`, `add table` (atomic replace: whatever was
    /// there, including rules appended by others, is gone when the transaction commits),
    /// then its chains (base chains with type/hook/priority) and every rule in final order;
    /// not in the plan: `add table` + `delete table` (removes a stale table, and is a no-op
    /// when there is none). Every message carries `NLM_F_ACK`.
    ///
    /// - Throws: `NetlinkError` (`.messageTooLarge`, `.allocation`) naming the object.
    ///
    /// With `existing` (the owned tables the kernel holds, read just before), the batch only
    /// deletes what exists: a table that is absent is created with `create table` (EEXIST if
    /// another writer made it meanwhile: the caller then retries without `existing`), and an
    /// absent table the plan does not use is left alone. Deleting nothing matters: every
    /// deleted object makes the kernel wait an RCU grace period (≈10 ms) when the socket closes.
    public static func applyBatch(
        _ plan: Plan, existing: Set<String>? = nil, firstSequence: UInt32 = defaultFirstSequence
    ) throws(NetlinkError) -> Batch {
        try applyWriter(plan, existing: existing, firstSequence: firstSequence).finish()
    }

    /// `applyBatch` before `finish()`, so tests can append to it.
    static func applyWriter(_ plan: Plan, existing: Set<String>? = nil, firstSequence: UInt32) throws(NetlinkError)
        -> BatchWriter
    {
        let layouts = NftLayout.tables(of: plan)
        let writer = BatchWriter(firstSequence: firstSequence)
        for table in ownedTables {
            let name = table.nftTableName
            let layout = layouts.first { $0.table == table }
            switch (existing.map { $0.contains(name) }, layout) {
            case (false?, nil):
                continue
            case (false?, let layout?):
                try writer.addTable(name, exclusive: true)
                try addContents(layout, to: writer)
            case (true?, nil):
                try writer.deleteTable(name)
            case (_, let layout):
                try writer.addTable(name)
                try writer.deleteTable(name)
                guard let layout else { continue }
                try writer.addTable(name)
                try addContents(layout, to: writer)
            }
        }
        return writer
    }

    /// One transaction deleting meshinit's tables: without `existing`, `add table` +
    /// `delete table` for each (it succeeds whether or not they exist); with it, `delete
    /// table` for those only. Foreign tables are not touched.
    public static func cleanBatch(existing: Set<String>? = nil, firstSequence: UInt32 = defaultFirstSequence)
        throws(NetlinkError) -> Batch
    {
        let writer = BatchWriter(firstSequence: firstSequence)
        for table in ownedTables {
            if let existing, !existing.contains(table.nftTableName) { continue }
            if existing == nil { try writer.addTable(table.nftTableName) }
            try writer.deleteTable(table.nftTableName)
        }
        return writer.finish()
    }

    /// Chains, then rules, of one table.
    static func addContents(_ layout: NftLayout.TableContents, to writer: BatchWriter) throws(NetlinkError) {
        let name = layout.table.nftTableName
        for chain in layout.chains {
            try writer.addChain(table: name, name: chain.chain.nftName, base: baseChain(layout.table, chain.chain))
        }
        for chain in layout.chains {
            for rule in chain.rules {
                try writer.addRule(
                    table: name, chain: chain.chain.nftName, compiled: RuleCompiler.compile(rule), rule: rule)
            }
        }
    }

    static func baseChain(_ table: Table, _ chain: Chain) -> (type: String, hook: Hook, priority: Int32)? {
        guard case .builtin(let hook) = chain, let base = NftBaseChain(table: table, hook: hook) else { return nil }
        return (base.type, hook, base.priority)
    }
}
