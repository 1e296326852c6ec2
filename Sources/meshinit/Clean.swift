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
            try cleanOrPrint(Context(settings))
            return
        }
        let settings = try resolveSettings(given: try istio.given(), enterNamespace: false)
        try cleanAllNamespaces(settings, boundary: .live(.current()), force: force, print: writeStandardOutput)
    }
}

/// `clean`: with `--dry-run` what would be removed is printed (nothing is locked or changed);
/// otherwise everything of ours is removed (see `cleanEverything`). Returns what was removed
/// (or would be), one line each.
@discardableResult
func cleanOrPrint(_ context: Context) throws(CommandFailure) -> [String] {
    guard context.settings.run.dryRun else { return try cleanEverything(context) }
    let plan = try planCleanup(context)
    writeStandardOutput(plan.text)
    return plan.isEmpty ? [] : ["(dry run)"]
}
