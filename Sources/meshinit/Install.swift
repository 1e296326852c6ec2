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
    static func perform(given: [IstioFlag: String]) throws {
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
        let netlink = !settings.run.cleanupOnly && !settings.run.skipRuleApply && context.usesNetlink
        context.logConfig(
            backend: netlink ? "nftables (netlink)" : settings.run.cleanupOnly ? "cleanup" : "iptables-restore")
        if settings.run.cleanupOnly {
            try cleanEverything(context)
            return
        }
        if !settings.run.skipRuleApply {
            let lock = try lockNamespace(context)
            defer { withExtendedLifetime(lock) {} }
            try applyPlan(plan, context, netlink: netlink)
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
func applyPlan(_ plan: Plan, _ context: Context, netlink: Bool) throws {
    do {
        if netlink {
            if try context.netlink().apply(plan) {
                let tables = NftLayout.tables(of: plan).map(\.table.nftTableName).joined(separator: ", ")
                context.log.info("nftables: installed \(tables) in one transaction")
            } else {
                context.log.info("nftables: rules already installed, nothing to do")
            }
        } else {
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
}
