import MeshIptables
import MeshModel
import MeshNetlink
import MeshSystem

/// Installs `plan` (rules through one backend, then TPROXY routes) in the current network
/// namespace; the caller holds the namespace lock. Shared by `install` and the CNI plugin.
/// With `.auto` the backend that already holds our rules is used (see
/// `Context.installBackend`). Returns the backend used.
@discardableResult
public func applyPlan(_ plan: Plan, _ context: Context, backend request: BackendRequest) throws(CommandFailure)
    -> RulesBackend
{
    // The table list read to choose is the first read of the install; nothing after the
    // write may trust it.
    defer { context.cache.inventory = nil }
    let backend = try context.installBackend(request)
    switch backend {
    case .netlink:
        let nl = try context.netlink()
        let inventory = try context.nftInventory()
        let changed: Bool
        do {
            changed = try nl.apply(plan, after: inventory)
        } catch {
            throw failure(error)
        }
        if changed {
            let tables = NftLayout.tables(of: plan).map(\.table.nftTableName).joined(separator: ", ")
            context.log.info("nftables: installed \(tables) in one transaction")
        } else {
            context.log.info("nftables: rules already installed, nothing to do")
        }
    case .iptables:
        do {
            for change in try context.iptables.apply(plan) { context.log.info("changed: \(change)") }
        } catch {
            throw failure(error)
        }
    }
    do {
        try context.routing.install(route: plan.tproxyRoute, families: plan.families)
    } catch {
        throw failure(error)
    }
    return backend
}

/// `applyPlan` with the backend forced (`netlink`: nftables through netlink, else iptables).
public func applyPlan(_ plan: Plan, _ context: Context, netlink: Bool) throws(CommandFailure) {
    try applyPlan(plan, context, backend: .forced(netlink ? .netlink : .iptables))
}

extension BackendRequest: CustomStringConvertible {
    public var description: String {
        switch self {
        case .forced(.netlink): "nftables (netlink)"
        case .forced(.iptables): "iptables-restore"
        case .auto(.netlink): "auto (nftables (netlink); iptables where our rules are installed through it)"
        case .auto(.iptables): "auto (iptables-restore; nftables where our rules are installed through netlink)"
        }
    }
}
