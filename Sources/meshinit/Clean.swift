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
func cleanAllNamespaces(given: FlagMap<String>, force: Bool) throws {
    let settings = try resolveSettings(given: given, enterNamespace: false)
    let log = Logger(level: settings.run.logLevel, json: settings.run.logAsJSON)
    let dryRun = settings.run.dryRun
    let proxyPort = settings.capture.proxyPort
    let home = currentNetworkNamespaceInode()
    var failures = 0
    var cleaned = 0
    var skipped = 0
    for ns in listNetworkNamespaces() where ns.inode != home {
        let label = "\(ns.path) (netns \(ns.inode))"
        do {
            // Entered through the file opened and checked now, not by its path: the PID may have
            // been reused since the listing, even by a process of the caller's own namespace.
            let outcome = try withListedNetworkNamespace(ns, refusing: home) { () throws -> NamespaceCleanup in
                if !force, tcpListening(on: proxyPort.value) == true {
                    return .live
                }
                var context = Context(settings)
                context.log = Logger(level: .none, json: false)
                if dryRun { return .planned(try planCleanup(context)) }
                return .removed(try cleanEverything(context))
            }
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
        } catch let error as NamespaceError where error.vanished {
            log.info("\(label): gone before it was reached (its process exited): skipped")
        } catch let error as NamespaceError where error.changed {
            log.info(
                "\(label): no longer that namespace when reached (its process exited and the PID was reused): skipped")
        } catch let failure as CommandFailure {
            failures += 1
            log.log(.error, "\(label): \(failure.message)")
        } catch {
            failures += 1
            log.log(.error, "\(label): \(error)")
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

/// What happened in one namespace of `clean --all-namespaces`.
enum NamespaceCleanup {
    /// Something listens on the proxy port: not touched.
    case live
    /// Dry run: what would be removed.
    case planned(CleanupPlan)
    /// What was removed.
    case removed([String])
}
