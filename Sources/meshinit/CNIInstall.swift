import ArgumentParser
import MeshCNI
import MeshConfig
import MeshModel
import MeshRuntime
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// `meshinit cni …`: the node side of the CNI plugin.
struct CNINodeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cni",
        abstract: "Install meshinit as a chained CNI plugin on this node (pods then need no NET_ADMIN), or remove it.",
        discussion: """
            The container runtime runs the plugin for every pod: meshinit acts as a CNI plugin \
            whenever CNI_COMMAND is set. `install` copies this binary into the CNI bin directory \
            and appends {"type": "meshinit", …} to the primary .conflist (the first in \
            lexicographic order); `uninstall` removes exactly that entry and the binary.
            """,
        subcommands: [CNIInstall.self, CNIUninstall.self]
    )
}

struct CNIPaths: ParsableArguments {
    @Option(name: .customLong("bin-dir"), help: "The runtime's CNI plugin directory.")
    var binDir = "/opt/cni/bin"

    @Option(name: .customLong("conf-dir"), help: "The runtime's CNI network configuration directory.")
    var confDir = "/etc/cni/net.d"

    var node: CNINode.Paths { CNINode.Paths(binDir: binDir, confDir: confDir) }
    var plugin: String { node.plugin }
}

struct CNIInstall: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install",
        abstract: "Copy the plugin and chain it at the end of the primary .conflist (idempotent).",
        discussion: """
            With --watch it stays, and puts the entry back whenever the primary CNI rewrites its \
            file (which otherwise makes new pods start without capture after a node reboot); \
            SIGTERM ends it (the entry stays, unless --uninstall-on-exit).
            """
    )

    @OptionGroup var paths: CNIPaths

    @Option(
        help: ArgumentHelp(
            "The plugin's settings: a JSON object of meshinit's CNI keys (Istio flag names, excludeNamespaces, backend, requireAnnotation, logFile), or @FILE.",
            valueName: "json"))
    var config = "{}"

    @Flag(help: "Keep watching the configuration directory and re-insert the entry when it is lost.")
    var watch = false

    @Flag(name: .customLong("uninstall-on-exit"), help: "With --watch: remove the entry and the binary on SIGTERM.")
    var uninstallOnExit = false

    @Option(
        name: .customLong("failure-timeout"),
        help: ArgumentHelp(
            "With --watch: exit non-zero once the primary configuration cannot be edited for this long (a single-plugin .conf, broken JSON), so the failure shows (the DaemonSet restarts the pod).",
            valueName: "seconds"))
    var failureTimeout = 10

    func validate() throws {
        guard failureTimeout >= 1, failureTimeout <= 86400 else {
            throw ValidationError("invalid value \(failureTimeout) for --failure-timeout: expected 1-86400 seconds")
        }
    }

    func run() throws {
        let log = Logger(level: .info, json: false)
        let entry = try CNINode.entry(config, boundary: .live(.current()))
        try CNINode.copyBinary(to: paths.plugin, log: log)
        guard watch else {
            try CNINode.chain(entry, in: paths.node, log: log)
            return
        }
        try CNINode.watch(entry, in: paths.node, failureTimeout: failureTimeout, log: log)
        if uninstallOnExit { try CNINode.remove(paths.node, log: log) }
    }
}

struct CNIUninstall: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uninstall",
        abstract: "Remove exactly meshinit's entry from the primary .conflist, and the plugin binary."
    )

    @OptionGroup var paths: CNIPaths

    func run() throws { try CNINode.remove(paths.node, log: Logger(level: .info, json: false)) }
}
