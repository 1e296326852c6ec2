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

struct Clean: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clean",
        abstract: "Remove every rule, chain and route of ours, found from the live state (flags are not needed).",
        discussion: """
            With --dry-run (-n) nothing is changed: what would be removed is printed (iptables-restore \
            payloads, nft and ip commands), per namespace with --all-namespaces.

            """ + IstioFlagHelp.text
    )

    @OptionGroup var istio: IstioFlagArguments

    @Flag(
        name: .customLong("all-namespaces"),
        help: "Clean every network namespace on the node (/run/netns/*, /proc/*/ns/net), not just this one.")
    var allNamespaces = false

    @Flag(
        name: .customLong("force"),
        help:
            "With --all-namespaces: clean namespaces where something listens on the proxy port (-p, default 15001) too."
    )
    var force = false

    func run() throws {
        guard allNamespaces else {
            if force {
                throw CommandFailure(status: .usage, message: "--force only applies to clean --all-namespaces")
            }
            let settings = try resolveSettings(given: try istio.given())
            try cleanEverything(Context(settings))
            return
        }
        try cleanAllNamespaces(given: try istio.given(), force: force)
    }
}

/// `clean --all-namespaces`: every network namespace on the node except our own, each
/// cleaned of both backends' rules and our routes, with a report per namespace. A namespace
/// where something listens on the proxy's outbound port is a live pod: skipped unless
/// `force`. A namespace whose process exited during the walk is skipped, not an error.
func cleanAllNamespaces(given: [IstioFlag: String], force: Bool) throws {
    let settings = try resolveSettings(given: given, enterNamespace: false)
    let log = Logger(level: settings.run.logLevel, json: settings.run.logAsJSON)
    let dryRun = settings.run.dryRun
    let proxyPort = settings.capture.proxyPort
    var failures = 0
    var cleaned = 0
    var skipped = 0
    walkNetworkNamespaces { _ throws -> NamespaceCleanup in
        if !force, tcpListening(on: proxyPort.value) == true {
            return .live
        }
        var context = Context(settings)
        context.log = Logger(level: .none, json: false)
        if dryRun { return .planned(try planCleanup(context)) }
        return .removed(try cleanEverything(context))
    } visited: { ns, visit in
        let label = "\(ns.path) (netns \(ns.inode))"
        guard let outcome = logVisit(visit, label, log, failures: &failures) else { return }
        switch outcome {
        case .live:
            skipped += 1
            log.warn(
                "\(label): skipped: something listens on port \(proxyPort) (a running proxy?); --force cleans it anyway"
            )
        case .planned(let plan):
            if !plan.isEmpty { cleaned += 1 }
            writeStandardOutput("# \(label)\n" + plan.text)
        case .removed(let removed) where removed.isEmpty:
            log.info("\(label): nothing of ours")
        case .removed(let removed):
            cleaned += 1
            log.info("\(label): removed \(removed.joined(separator: "; "))")
        }
    }
    let verb = dryRun ? "would clean" : "cleaned"
    log.info(
        "\(verb) \(cleaned) network namespaces, skipped \(skipped) with a listener on port \(proxyPort) (the caller's own namespace is skipped: use `meshinit clean`)"
    )
    if failures > 0 {
        throw CommandFailure(status: .failure, message: "\(failures) network namespaces could not be cleaned")
    }
}

/// What a node-wide walk's `body` returned in the namespace `label`, or nil when it did not
/// return: a namespace whose process exited (or whose PID was reused) before it was reached
/// is said so and skipped; a failure is logged as an error and counted in `failures`.
func logVisit<T>(_ visit: NamespaceVisit<T>, _ label: String, _ log: Logger, failures: inout Int) -> T? {
    switch visit {
    case .visited(let value):
        return value
    case .vanished:
        log.info("\(label): gone before it was reached (its process exited): skipped")
    case .changed:
        log.info("\(label): no longer that namespace when reached (its process exited and the PID was reused): skipped")
    case .failed(let failure as CommandFailure):
        failures += 1
        log.log(.error, "\(label): \(failure.message)")
    case .failed(let error):
        failures += 1
        log.log(.error, "\(label): \(error)")
    }
    return nil
}

/// What happened in one namespace of `clean --all-namespaces`.
enum NamespaceCleanup {
    /// Something listens on the proxy port: not touched.
    case live
    /// Dry run: what would be removed.
    case planned(CleanupPlan)
    /// What was removed.
    case removed([String])
}
