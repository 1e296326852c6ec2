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

/// sysexits-style exit codes (plus 126 for a failed validation probe and 3 for verify drift).
enum ExitStatus: Int32 {
    case ok = 0
    case failure = 1
    case drift = 3
    case usage = 64
    case unavailable = 69
    case temporary = 75
    case permission = 77
    case validation = 126
}

/// A failure with its exit status and a one-line message.
struct CommandFailure: Error {
    var status: ExitStatus
    var message: String
}

struct Meshinit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshinit",
        abstract: "Install Istio's traffic capture rules in a pod network namespace.",
        discussion: """
            Accepts istio-iptables' flags and environment variables. With no sub-command (or \
            with Istio's leading `istio-iptables`) it installs; `plan` prints the rules; `clean` \
            removes them; `verify` compares what is installed with the plan.
            """,
        version: meshinitVersion,
        subcommands: [Install.self, PlanCommand.self, Clean.self, Verify.self],
        defaultSubcommand: Install.self
    )
}

/// Resolves flags and environment into settings, mapping bad input to exit 64. When a
/// network namespace is named, it is entered first, so that everything after (interface
/// detection, rules, routes) happens inside it.
func resolveSettings(_ options: IstioOptions, enterNamespace: Bool = true) throws -> Settings {
    try resolveSettings(given: options.given, enterNamespace: enterNamespace)
}

func resolveSettings(given: [IstioFlag: String], enterNamespace: Bool = true) throws -> Settings {
    let environment = meshinitEnvironment()
    do {
        if enterNamespace, let netns = try ConfigResolver.networkNamespace(flags: given, environment: environment) {
            do {
                try enterNetworkNamespace(netns)
            } catch {
                throw CommandFailure(status: error.errno == EPERM ? .permission : .failure, message: error.description)
            }
        }
        return try ConfigResolver(system: LiveSystem()).resolve(flags: given, environment: environment)
    } catch let error as ConfigError {
        throw CommandFailure(status: .usage, message: error.description)
    }
}

func printWarnings(_ settings: Settings) {
    for warning in settings.warnings { writeStandardError("meshinit: warning: \(warning)\n") }
}

/// One nfnetlink socket per run, opened when first needed (each open and close costs).
final class NetfilterSocketCache {
    private var socket: NetfilterSocket?

    func get() throws(NetlinkError) -> NetfilterSocket {
        if let socket { return socket }
        let opened = try NetfilterSocket()
        socket = opened
        return opened
    }
}

/// The pieces a command needs to act: logger, process runner, backends.
struct Context {
    var settings: Settings
    var log: Logger
    var runner: SpawnRunner
    let sockets = NetfilterSocketCache()

    init(_ settings: Settings) {
        self.settings = settings
        log = Logger(level: settings.run.logLevel, json: settings.run.logAsJSON)
        runner = SpawnRunner()
    }

    var iptables: IptablesBackend {
        let log = self.log
        let sockets = self.sockets
        return IptablesBackend(
            runner: runner, forced: settings.run.forceIptablesVariant,
            legacyTablesLoaded: legacyTablesLoaded,
            hasTables: { variant, family in
                switch variant {
                case .legacy: return legacyTablesLoaded(family)
                case .nft:
                    // One netlink dump instead of an iptables-nft-save process.
                    guard let socket = try? sockets.get() else { return nil }
                    return try? NftablesBackend(transport: socket).hasIptablesNftTables(ipv6: family == .ipv6)
                case .plain: return nil
                }
            },
            log: { log.info($0) })
    }

    /// The netlink backend, on a socket in the current network namespace.
    func netlink() throws -> NftablesBackend {
        do {
            return NftablesBackend(transport: try sockets.get())
        } catch {
            throw failure(error)
        }
    }

    /// `--native-nftables`, or no iptables binary at all (and none forced): the netlink
    /// backend needs no binary, so a minimal image still works with Istio's arguments.
    var usesNetlink: Bool {
        if settings.run.nativeNftables { return true }
        if settings.run.forceIptablesVariant != nil { return false }
        if (try? iptables.tools(for: .ipv4)) == nil {
            log.info("no iptables-restore in PATH: using the nftables netlink backend")
            return true
        }
        return false
    }

    var routing: PolicyRouting {
        let log = self.log
        return PolicyRouting(log: { log.info($0) })
    }

    func logConfig(backend: String) {
        let c = settings.capture
        log.info(
            "meshinit \(meshinitVersion): proxy port \(c.proxyPort), inbound \(c.inboundCapturePort), tunnel \(c.inboundTunnelPort), uids \(c.proxyUIDs.map(\.description).joined(separator: ",")), gids \(c.proxyGIDs.map(\.description).joined(separator: ",")), mode \(c.interceptionMode.rawValue), ipv6 \(c.ipv6), dns \(c.dns.map { "\($0)" } ?? "off"), backend \(backend)"
        )
        for warning in settings.warnings { log.warn(warning) }
    }
}

/// Whether this namespace has legacy xtables tables (`/proc/net/ip{,6}_tables_names`).
func legacyTablesLoaded(_ family: Family) -> Bool {
    let file = family == .ipv4 ? "/proc/net/ip_tables_names" : "/proc/net/ip6_tables_names"
    return !(LiveSystem().readFile(file) ?? "").isEmpty
}

/// Maps backend errors to exit statuses.
func failure(_ error: IptablesError) -> CommandFailure {
    let status: ExitStatus =
        switch error.kind {
        case .unavailable: .unavailable
        case .permission: .permission
        case .lockBusy: .temporary
        case .failed: .failure
        }
    return CommandFailure(status: status, message: error.message)
}

func failure(_ error: NetlinkError) -> CommandFailure {
    let status: ExitStatus
    switch error.errno {
    case EPERM?, EACCES?:
        return CommandFailure(status: .permission, message: "\(error) (CAP_NET_ADMIN is needed)")
    case EPROTONOSUPPORT?, EAFNOSUPPORT?:
        return CommandFailure(status: .unavailable, message: "\(error) (kernel support missing: nf_tables)")
    case EOPNOTSUPP?:
        return CommandFailure(
            status: .unavailable,
            message:
                "\(error) (kernel support missing: nf_tables expression modules such as nft_redir, nft_tproxy, nft_ct)")
    case EBUSY?, EAGAIN?, EINTR?: status = .temporary
    default:
        // ENOENT on an expression means its module is missing; on an object it is a plan bug.
        status =
            error.code == .kernel && error.errno == ENOENT && !error.subject.contains("jump") ? .unavailable : .failure
    }
    return CommandFailure(status: status, message: error.description)
}

func failure(_ error: PolicyRouting.Failure) -> CommandFailure {
    CommandFailure(status: error.permission ? .permission : .failure, message: error.message)
}

/// Everything of ours a cleanup would remove, read from the live state (both backends and
/// the routes): what `clean` carries out, and what a dry run prints.
struct CleanupPlan {
    var iptables: [IptablesBackend.CleanupStep] = []
    /// Our nft tables (`istio-proxy-*`) present.
    var nftTables: [String] = []
    var routes: [PolicyRouting.Removal] = []
    /// Families cleaned (IPv6 is left out where the kernel cannot hold it).
    var families: [Family] = Family.allCases
    /// Things worth saying, e.g. why IPv6 was skipped.
    var notes: [String] = []

    var isEmpty: Bool { iptables.isEmpty && nftTables.isEmpty && routes.isEmpty }

    /// The plan as text: iptables-restore payloads, nft commands, ip commands.
    var text: String {
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
func planCleanup(_ context: Context) throws -> CleanupPlan {
    var plan = CleanupPlan()
    if let reason = IPv6Availability.current().reason {
        plan.families = [.ipv4]
        plan.notes.append("\(reason): IPv6 rules and routes skipped")
    }
    do {
        plan.iptables = try context.iptables.cleanupPlan(families: plan.families)
    } catch {
        throw failure(error)
    }
    do {
        plan.nftTables = try NftablesBackend(transport: try context.sockets.get()).installedTables()
    } catch {
        // A kernel without nf_tables cannot hold our tables: nothing to clean there.
        if error.errno != EPROTONOSUPPORT && error.errno != EAFNOSUPPORT { throw failure(error) }
    }
    do {
        plan.routes = try context.routing.removals(families: plan.families)
    } catch {
        throw failure(error)
    }
    return plan
}

/// Carries out a cleanup plan; returns what was removed, one line each. Idempotent.
func executeCleanup(_ plan: CleanupPlan, _ context: Context) throws -> [String] {
    var removed: [String]
    do {
        removed = try context.iptables.clean(plan.iptables)
    } catch {
        throw failure(error)
    }
    do {
        let nl = NftablesBackend(transport: try context.sockets.get())
        if !plan.nftTables.isEmpty {
            try nl.clean()
            removed += plan.nftTables.map { "nft table inet \($0)" }
        }
        // iptables-nft rules of ours that no iptables binary here could remove: say so.
        let left = try nl.iptablesNftChains().filter { plan.families.contains(.ipv6) || $0.hasPrefix("ip ") }
        if !left.isEmpty {
            throw CommandFailure(
                status: .unavailable,
                message:
                    "iptables rules of ours remain (\(left.joined(separator: ", "))) and no iptables-restore is available to remove them; run meshinit clean where iptables is installed"
            )
        }
    } catch let error as NetlinkError {
        if error.errno != EPROTONOSUPPORT && error.errno != EAFNOSUPPORT { throw failure(error) }
    }
    do {
        removed += try context.routing.remove(plan.routes)
    } catch {
        throw failure(error)
    }
    return removed
}

/// Removes our rules (both backends) and routes, found from the live state, holding the
/// namespace lock; idempotent. With `--dry-run` it prints what it would remove and changes
/// nothing. Returns what was removed (or would be), one line each.
@discardableResult
func cleanEverything(_ context: Context) throws -> [String] {
    if context.settings.run.dryRun {
        let plan = try planCleanup(context)
        writeStandardOutput(plan.text)
        return plan.isEmpty ? [] : ["(dry run)"]
    }
    let lock = try lockNamespace(context)
    defer { withExtendedLifetime(lock) {} }
    let plan = try planCleanup(context)
    for note in plan.notes { context.log.info(note) }
    let removed = try executeCleanup(plan, context)
    for line in removed { context.log.info("removed: \(line)") }
    if removed.isEmpty { context.log.info("nothing of ours found") }
    return removed
}

/// The namespace lock (see `NamespaceLock`), waited for as long as iptables waits for its own.
func lockNamespace(_ context: Context) throws -> NamespaceLock? {
    do {
        let lock = try NamespaceLock.acquire(timeoutSeconds: lockWaitSeconds)
        if lock == nil { context.log.info("no /proc/thread-self/ns/net to lock: going on without the namespace lock") }
        return lock
    } catch {
        switch error {
        case .busy: throw CommandFailure(status: .temporary, message: error.description)
        case .system: throw CommandFailure(status: .failure, message: error.description)
        }
    }
}

/// Seconds to wait for a lock (the namespace lock, and the xtables lock of iptables-legacy).
let lockWaitSeconds = 30

struct Install: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install",
        abstract: "Install the capture rules (the default; Istio's `istio-iptables` is an alias).",
        aliases: ["istio-iptables"]
    )

    @OptionGroup var options: IstioOptions

    func run() throws { try install(given: options.given) }
}

/// The install command's work, from flags as text (the fast path and the full CLI meet here).
func install(given: [IstioFlag: String]) throws {
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

struct Clean: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "clean",
        abstract: "Remove every rule, chain and route of ours, found from the live state (flags are not needed).",
        discussion: """
            With --dry-run (-n) nothing is changed: what would be removed is printed (iptables-restore \
            payloads, nft and ip commands), per namespace with --all-namespaces.
            """
    )

    @OptionGroup var options: IstioOptions

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
            let settings = try resolveSettings(options)
            try cleanEverything(Context(settings))
            return
        }
        try cleanAllNamespaces(options, force: force)
    }
}

/// `clean --all-namespaces`: every network namespace on the node except our own, each
/// cleaned of both backends' rules and our routes, with a report per namespace. A namespace
/// where something listens on the proxy's outbound port is a live pod: skipped unless
/// `force`. A namespace whose process exited during the walk is skipped, not an error.
func cleanAllNamespaces(_ options: IstioOptions, force: Bool) throws {
    let settings = try resolveSettings(options, enterNamespace: false)
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
            let outcome = try withNetworkNamespace(ns.path) { () throws -> NamespaceCleanup in
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

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract:
            "Compare the installed rules with the plan for these flags: exit 0 if they match, 3 with a diff if not."
    )

    @OptionGroup var options: IstioOptions

    func run() throws {
        let settings = try resolveSettings(options)
        let context = Context(settings)
        let plan = Planner.plan(settings.capture)
        let differences: [String]
        do {
            if context.usesNetlink {
                differences = try context.netlink().verify(plan)
            } else {
                var families = Family.allCases
                if let reason = IPv6Availability.current().reason {
                    // Nothing can be installed for IPv6 here, and ip6tables may not even work.
                    context.log.info("\(reason): IPv6 rules not compared")
                    families = [.ipv4]
                }
                differences = try context.iptables.verify(plan, families: families)
            }
        } catch let error as IptablesError {
            throw failure(error)
        } catch let error as NetlinkError {
            throw failure(error)
        }
        guard differences.isEmpty else {
            for line in differences { writeStandardOutput(line + "\n") }
            throw CommandFailure(
                status: .drift, message: "installed rules differ from the plan (\(differences.count) differences)")
        }
        context.log.info("installed rules match the plan")
    }
}

enum PlanFormat: String, ExpressibleByArgument, CaseIterable {
    case iptablesRestore = "iptables-restore"
    case nft
    case json
}

enum FamilyChoice: String, ExpressibleByArgument, CaseIterable {
    case ipv4, ipv6, all
}

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Print the rules for the given flags; needs no privileges and changes nothing."
    )

    @Option(help: "Output format.") var format: PlanFormat = .iptablesRestore
    @Option(help: "Family for --format iptables-restore (ipv4 prints exactly the iptables-restore payload).")
    var family: FamilyChoice = .all
    @OptionGroup var options: IstioOptions

    func run() throws { try printPlan(format: format, family: family, given: options.given) }

}

/// `plan`: the rules for these flags, in one format; changes nothing.
func printPlan(format: PlanFormat, family: FamilyChoice, given: [IstioFlag: String]) throws {
    let settings = try resolveSettings(given: given, enterNamespace: false)
    printWarnings(settings)
    let plan = Planner.plan(settings.capture)
    switch format {
    case .iptablesRestore:
        switch family {
        case .ipv4: writeStandardOutput(IptablesRestore.render(plan, family: .ipv4))
        case .ipv6: writeStandardOutput(IptablesRestore.render(plan, family: .ipv6))
        case .all:
            for f in plan.families {
                writeStandardOutput("# \(f.rawValue)\n" + IptablesRestore.render(plan, family: f))
            }
        }
    case .nft, .json:
        guard family == .all else {
            throw CommandFailure(
                status: .usage,
                message:
                    "invalid value \"\(family.rawValue)\" for --family: only --format iptables-restore is per family"
            )
        }
        writeStandardOutput(format == .nft ? NftScript.render(plan) : PlanJSON.render(plan))
    }
}
