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
                try cleanOrPrint(Context(settings))
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
            try cleanOrPrint(context)
            return
        }
        let request = context.backendRequest
        context.logConfig(backend: settings.run.skipRuleApply ? "none (--skip-rule-apply)" : request.description)
        if !settings.run.skipRuleApply {
            let lock = try context.lockNamespace()
            defer { withExtendedLifetime(lock) {} }
            try applyPlan(plan, context, backend: request)
        }
        if settings.run.runValidation {
            // IPv6 too when the plan installs IPv6 rules (Istio's validation covers both).
            for family in plan.families {
                let probe = RedirectProbe(
                    listenPorts: [settings.capture.proxyPort, settings.capture.inboundCapturePort],
                    probePort: settings.run.probePort, timeoutMilliseconds: settings.run.probeTimeoutMilliseconds,
                    family: family)
                do {
                    try probe.run()
                    context.log.info("validation passed: connections to \(probe.target) are redirected")
                } catch {
                    throw CommandFailure(status: .validation, message: error.message)
                }
            }
        }
    }
}
