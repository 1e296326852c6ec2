import MeshConfig
import MeshIptables
import MeshModel
import MeshNetlink
import MeshPlanner
import MeshRender
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// What a cleanup removes, read from the live state.
public struct CleanupPlan: Sendable {
    public var iptables: [IptablesBackend.CleanupStep] = []
    /// Our nft tables (`istio-proxy-*`) present.
    public var nftTables: [String] = []
    public var routes: [PolicyRouting.Removal] = []
    /// Families cleaned (IPv6 is left out where the kernel cannot hold it).
    public var families: [Family] = Family.allCases
    /// Families whose iptables could not be read (IPv6 disabled, ip6tables not working).
    public var unreadableIptables: [Family] = []
    /// Things worth saying, e.g. why IPv6 was skipped.
    public var notes: [String] = []

    public var isEmpty: Bool { iptables.isEmpty && nftTables.isEmpty && routes.isEmpty }

    /// The plan as text: iptables-restore payloads, nft commands, ip commands.
    public var text: String {
        var out = notes.map { "# note: \($0)\n" }.joined()
        if isEmpty { return out + "# nothing of ours installed\n" }
        for step in iptables {
            out += "# \(step.family.rawValue): \(step.tools.restore) --noflush\n" + step.payload
        }
        if !nftTables.isEmpty {
            out += "# nft -f\n" + nftTables.map { "delete table inet \($0)\n" }.joined()
        }
        if !routes.isEmpty {
            out += "# routes\n" + routes.map { $0.command + "\n" }.joined()
        }
        return out
    }
}

/// Reads what a cleanup would remove; changes nothing.
public func planCleanup(_ context: Context) throws(CommandFailure) -> CleanupPlan {
    var plan = CleanupPlan()
    let ipv6 = context.boundary.ipv6()
    if ipv6 == .unsupported, let reason = ipv6.reason {
        plan.families = [.ipv4]
        plan.notes.append("\(reason): IPv6 rules and routes skipped")
    }
    do {
        plan.iptables = try context.iptables.cleanupPlan(families: [.ipv4])
    } catch {
        throw failure(error)
    }
    if plan.families.contains(.ipv6) {
        switch Result(catching: { () throws(IptablesError) in try context.iptables.cleanupPlan(families: [.ipv6]) }) {
        case .success(let steps):
            plan.iptables += steps
        case .failure(let error) where ipv6 == .disabled && error.kind == .unavailable:
            // ip6tables may not work at all where IPv6 is off; rules it cannot read, it cannot
            // have installed since.
            plan.unreadableIptables = [.ipv6]
            plan.notes.append("\(ipv6.reason ?? "IPv6 is off"), and \(error.message): ip6tables rules skipped")
        case .failure(let error):
            throw failure(error)
        }
    }
    do {
        plan.nftTables = try NftablesBackend(transport: try context.sockets.get()).installedTables()
    } catch {
        // A kernel without nf_tables cannot hold our tables: nothing to clean there.
        if error.errno != EPROTONOSUPPORT && error.errno != EAFNOSUPPORT { throw failure(error) }
    }
    do {
        plan.routes = try context.routing.removals(families: plan.families, ipv6Disabled: ipv6 == .disabled)
    } catch {
        throw failure(error)
    }
    return plan
}

/// Carries out a cleanup plan; returns what was removed, one line each. Idempotent.
public func executeCleanup(_ plan: CleanupPlan, _ context: Context) throws(CommandFailure) -> [String] {
    var removed: [String]
    do {
        removed = try context.iptables.clean(plan.iptables)
    } catch {
        throw failure(error)
    }
    var left: [String] = []
    do {
        let nl = NftablesBackend(transport: try context.sockets.get())
        if !plan.nftTables.isEmpty {
            try nl.clean()
            removed += plan.nftTables.map { "nft table inet \($0)" }
        }
        // iptables-nft rules of ours that no iptables binary here could remove: say so.
        let cleaned = plan.families.filter { !plan.unreadableIptables.contains($0) }
        left = try nl.iptablesNftChains().filter { cleaned.contains($0.hasPrefix("ip6 ") ? .ipv6 : .ipv4) }
    } catch {
        if error.errno != EPROTONOSUPPORT && error.errno != EAFNOSUPPORT { throw failure(error) }
    }
    if !left.isEmpty {
        throw CommandFailure(
            status: .unavailable,
            message:
                "iptables rules of ours remain (\(left.joined(separator: ", "))) and no iptables-restore is available to remove them; run meshinit clean where iptables is installed"
        )
    }
    do {
        removed += try context.routing.remove(plan.routes)
    } catch {
        throw failure(error)
    }
    return removed
}

/// Removes our rules (both backends) and routes, found from the live state, holding the
/// namespace lock; idempotent. Returns what was removed, one line each. (A dry run is
/// `planCleanup` and its `text`: nothing is locked or changed.)
@discardableResult
public func cleanEverything(_ context: Context) throws(CommandFailure) -> [String] {
    let lock = try context.lockNamespace()
    defer { withExtendedLifetime(lock) {} }
    let plan = try planCleanup(context)
    for note in plan.notes { context.log.info(note) }
    let removed = try executeCleanup(plan, context)
    for line in removed { context.log.info("removed: \(line)") }
    if removed.isEmpty { context.log.info("nothing of ours found") }
    return removed
}
