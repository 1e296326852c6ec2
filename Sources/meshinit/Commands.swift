import ArgumentParser
import MeshConfig
import MeshModel
import MeshPlanner
import MeshRender
import MeshSystem

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
            with Istio's leading `istio-iptables`) it installs; `plan` prints the rules.
            """,
        version: meshinitVersion,
        subcommands: [Install.self, PlanCommand.self],
        defaultSubcommand: Install.self
    )
}

/// Resolves flags and environment into settings, mapping bad input to exit 64.
func resolveSettings(_ options: IstioOptions) throws -> Settings {
    do {
        return try ConfigResolver(system: LiveSystem()).resolve(flags: options.given, environment: processEnvironment())
    } catch {
        throw CommandFailure(status: .usage, message: error.description)
    }
}

func printWarnings(_ settings: Settings) {
    for warning in settings.warnings { writeStandardError("meshinit: warning: \(warning)\n") }
}

struct Install: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "install",
        abstract: "Install the capture rules (the default; Istio's `istio-iptables` is an alias).",
        aliases: ["istio-iptables"]
    )

    @OptionGroup var options: IstioOptions

    func run() throws {
        let settings = try resolveSettings(options)
        printWarnings(settings)
        let plan = Planner.plan(settings.capture)
        if settings.run.dryRun {
            // Dry-run prints exactly what would be applied, for the chosen backend.
            if settings.run.nativeNftables {
                writeStandardOutput(NftScript.render(plan))
            } else {
                for family in plan.families {
                    writeStandardOutput("# \(family.rawValue)\n" + IptablesRestore.render(plan, family: family))
                }
            }
            return
        }
        throw CommandFailure(
            status: .unavailable,
            message: "applying rules is not implemented in this build; nothing was changed (use -n or `meshinit plan`)")
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

    func run() throws {
        let settings = try resolveSettings(options)
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
}
