import ArgumentParser
import MeshCNI
import MeshConfig
import MeshModel
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// `meshinit cni …`: the node side of the CNI plugin.
struct CNICommand: ParsableCommand {
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

    var plugin: String { binDir + "/" + Conflist.pluginType }
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

    func run() throws {
        let log = Logger(level: .info, json: false)
        let entry = try Self.entry(config)
        try Self.copyBinary(to: paths.plugin, log: log)
        guard watch else {
            guard try Self.ensureChained(entry, in: paths.confDir, log: log) else {
                throw CommandFailure(
                    status: .unavailable,
                    message:
                        "no network configuration in \(paths.confDir) yet (the primary CNI writes it; --watch waits for it)"
                )
            }
            return
        }
        let watcher: DirectoryWatch
        do {
            watcher = try DirectoryWatch(paths.confDir)
        } catch {
            throw CommandFailure(status: .failure, message: error.description)
        }
        log.info("watching \(paths.confDir)")
        while true {
            do {
                _ = try Self.ensureChained(entry, in: paths.confDir, log: log)
            } catch let failure as CommandFailure {
                // A primary we cannot edit now (half-written, or not a list): try again later.
                log.warn(failure.message)
            }
            // A periodic look too, in case an event was missed.
            if watcher.wait(milliseconds: 60_000) == .stop { break }
        }
        log.info("stopping")
        if uninstallOnExit { try CNIUninstall.remove(paths, log: log) }
    }

    /// Our `.conflist` entry, as compact JSON: `type` first, the given keys, and the
    /// pod-annotations capability (so containerd and CRI-O pass the annotations).
    static func entry(_ text: String) throws -> String {
        var source = text
        if text.hasPrefix("@") {
            do {
                source = String(decoding: try Files.read(String(text.dropFirst())), as: UTF8.self)
            } catch {
                throw CommandFailure(status: .usage, message: "--config: \(error)")
            }
        }
        let parsed: JSONSpan
        do {
            parsed = try JSONParser.parse(source)
        } catch {
            throw CommandFailure(status: .usage, message: "--config: \(error)")
        }
        guard case .object(let members) = parsed.kind else {
            throw CommandFailure(status: .usage, message: "--config: expected a JSON object")
        }
        var out: [(String, JSONValue)] = [("type", .string(Conflist.pluginType))]
        var capabilities: [(String, JSONValue)] = [("io.kubernetes.cri.pod-annotations", .bool(true))]
        for (key, value) in members {
            switch key {
            case "type", "cniVersion", "name", "prevResult", "runtimeConfig":
                throw CommandFailure(
                    status: .usage, message: "--config: \(quoted(key)) is set by the runtime, not here")
            case "capabilities":
                guard case .object(let extra) = value.kind else {
                    throw CommandFailure(status: .usage, message: "--config: \"capabilities\" must be an object")
                }
                for (name, flag) in extra where name != "io.kubernetes.cri.pod-annotations" {
                    capabilities.append((name, flag.value))
                }
            default:
                out.append((key, value.value))
            }
        }
        out.append(("capabilities", .object(capabilities)))
        let entry = JSONValue.object(out).serialized
        // The keys must be what the plugin accepts: check them as the plugin will.
        do {
            let config = try PluginConfig(
                try JSONParser.parse("{\"cniVersion\":\"1.1.0\",\"name\":\"check\"," + entry.dropFirst()))
            // And their values, as they resolve for a pod without annotations.
            _ = try ConfigResolver(system: HostLookup()).resolve(PodDecision.input(config))
        } catch let error as CNIError {
            throw CommandFailure(status: .usage, message: "--config: \(error)")
        } catch let error as ConfigError {
            throw CommandFailure(status: .usage, message: "--config: \(error)")
        }
        return entry
    }

    /// Copies this binary to `path` (atomically), unless it is already there byte for byte.
    static func copyBinary(to path: String, log: Logger) throws {
        do {
            let own = try Files.read(try Files.ownExecutable())
            if let current = try? Files.read(path), current == own { return }
            try Files.replace(path, with: own, mode: 0o755)
            log.info("installed \(path)")
        } catch {
            throw CommandFailure(
                status: error.errno == EACCES || error.errno == EPERM ? .permission : .failure,
                message: error.description)
        }
    }

    /// Puts `entry` at the end of the primary `.conflist`'s plugins, if it is not there.
    /// Returns false when the directory has no configuration yet.
    @discardableResult
    static func ensureChained(_ entry: String, in directory: String, log: Logger) throws -> Bool {
        let names: [String]
        do {
            names = try Files.list(directory)
        } catch {
            throw CommandFailure(status: .failure, message: error.description)
        }
        guard let primary = Conflist.primary(among: names) else { return false }
        let path = directory + "/" + primary
        do {
            let text = String(decoding: try Files.read(path), as: UTF8.self)
            guard let updated = try Conflist.inserting(entry, into: text) else { return true }
            try Files.replace(path, with: Array(updated.utf8), mode: Files.mode(path) ?? 0o644)
            log.info("chained meshinit into \(path)")
            return true
        } catch let error as ConflistError {
            throw CommandFailure(status: .failure, message: "\(path): \(error)")
        } catch let error as SystemCallError {
            throw CommandFailure(status: .failure, message: error.description)
        }
    }
}

struct CNIUninstall: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uninstall",
        abstract: "Remove exactly meshinit's entry from the primary .conflist, and the plugin binary."
    )

    @OptionGroup var paths: CNIPaths

    func run() throws { try Self.remove(paths, log: Logger(level: .info, json: false)) }

    static func remove(_ paths: CNIPaths, log: Logger) throws {
        do {
            if let primary = Conflist.primary(among: (try? Files.list(paths.confDir)) ?? []) {
                let path = paths.confDir + "/" + primary
                let text = String(decoding: try Files.read(path), as: UTF8.self)
                if let updated = try Conflist.removing(from: text) {
                    try Files.replace(path, with: Array(updated.utf8), mode: Files.mode(path) ?? 0o644)
                    log.info("removed meshinit from \(path)")
                }
            }
            if Files.exists(paths.plugin) {
                try Files.remove(paths.plugin)
                log.info("removed \(paths.plugin)")
            }
        } catch let error as ConflistError {
            throw CommandFailure(status: .failure, message: error.description)
        } catch let error as SystemCallError {
            throw CommandFailure(status: .failure, message: error.description)
        }
    }
}
