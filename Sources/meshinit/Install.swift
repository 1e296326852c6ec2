import ArgumentParser
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

struct Install: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install",
        abstract: "Install the capture rules (the default; Istio's `istio-iptables` is an alias).",
        discussion: IstioFlagHelp.text,
        aliases: ["istio-iptables"]
    )

    @OptionGroup var istio: IstioFlagArguments

    func run() throws { try Self.perform(given: try istio.given()) }

    /// The install command's work, from flags as text (the fast path and the full CLI meet here).
    static func perform(given: FlagMap<String>) throws {
        let settings = try resolveSettings(given: given)
        let plan = Planner.plan(settings.capture)
        if settings.run.dryRun {
            printWarnings(settings)
            // A dry run never writes: it prints what would be removed, or what would be applied
            // to a clean namespace, per backend.
            if settings.run.cleanupOnly {
                try cleanEverything(Context(settings))
            } else if settings.run.nativeNftables {
                writeStandardOutput(NftScript.render(plan))
            } else {
                for family in plan.families {
                    writeStandardOutput("# \(family.rawValue)\n" + IptablesRestore.render(plan, family: family))
                }
            }
            return
        }
        let context = Context(settings)
        if settings.run.cleanupOnly {
            context.logConfig(backend: "cleanup")
            try cleanEverything(context)
            return
        }
        let request = context.backendRequest
        context.logConfig(backend: settings.run.skipRuleApply ? "none (--skip-rule-apply)" : request.description)
        if !settings.run.skipRuleApply {
            let lock = try lockNamespace(context)
            defer { withExtendedLifetime(lock) {} }
            try applyPlan(plan, context, backend: request)
        }
        if settings.run.runValidation {
            let probe = RedirectProbe(
                listenPorts: [settings.capture.proxyPort, settings.capture.inboundCapturePort],
                probePort: settings.run.probePort, timeoutMilliseconds: settings.run.probeTimeoutMilliseconds)
            do {
                try probe.run()
                context.log.info("validation passed: connections to 127.0.0.6:\(settings.run.probePort) are redirected")
            } catch {
                throw CommandFailure(status: .validation, message: error.message)
            }
        }
    }
}

/// Installs `plan` (rules through one backend, then TPROXY routes) in the current network
/// namespace; the caller holds the namespace lock. Shared by `install` and the CNI plugin.
/// With `.auto` the backend that already holds our rules is used (see
/// `Context.installBackend`). Returns the backend used.
@discardableResult
func applyPlan(_ plan: Plan, _ context: Context, backend request: BackendRequest) throws -> RulesBackend {
    // The table list read to choose is the first read of the install; nothing after the
    // write may trust it.
    defer { context.cache.inventory = nil }
    let backend = try context.installBackend(request)
    do {
        switch backend {
        case .netlink:
            if try context.netlink().apply(plan, after: try context.nftInventory()) {
                let tables = NftLayout.tables(of: plan).map(\.table.nftTableName).joined(separator: ", ")
                context.log.info("nftables: installed \(tables) in one transaction")
            } else {
                context.log.info("nftables: rules already installed, nothing to do")
            }
        case .iptables:
            let changes = try context.iptables.apply(plan)
            for change in changes { context.log.info("changed: \(change)") }
        }
        try context.routing.install(route: plan.tproxyRoute, families: plan.families)
    } catch let error as IptablesError {
        throw failure(error)
    } catch let error as NetlinkError {
        throw failure(error)
    } catch let error as PolicyRouting.Failure {
        throw failure(error)
    }
    return backend
}

/// `applyPlan` with the backend forced (`netlink`: nftables through netlink, else iptables).
func applyPlan(_ plan: Plan, _ context: Context, netlink: Bool) throws {
    try applyPlan(plan, context, backend: .forced(netlink ? .netlink : .iptables))
}

extension BackendRequest: CustomStringConvertible {
    var description: String {
        switch self {
        case .forced(.netlink): "nftables (netlink)"
        case .forced(.iptables): "iptables-restore"
        case .auto(.netlink): "auto (nftables (netlink); iptables where our rules are installed through it)"
        case .auto(.iptables): "auto (iptables-restore; nftables where our rules are installed through netlink)"
        }
    }
}
