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
        abstract: "Print the rules for the given flags; needs no privileges and changes nothing.",
        discussion: IstioFlagHelp.text
    )

    @Option(help: "Output format.") var format: PlanFormat = .iptablesRestore
    @Option(help: "Family for --format iptables-restore (ipv4 prints exactly the iptables-restore payload).")
    var family: FamilyChoice = .all
    @OptionGroup var istio: IstioFlagArguments

    func run() throws { try printPlan(format: format, family: family, given: try istio.given()) }

    /// `plan`'s arguments (after `plan`) as the fast path reads them, or nil for the full CLI
    /// (which also gives the messages for a bad format or family).
    static func fastPath(_ arguments: ArraySlice<String>) -> (
        format: PlanFormat, family: FamilyChoice, given: FlagMap<String>
    )? {
        var options: [String: String] = [:]
        guard let given = try? IstioArguments.parse(arguments, options: ["format", "family"], into: &options),
            let format = PlanFormat(rawValue: options["format"] ?? PlanFormat.iptablesRestore.rawValue),
            let family = FamilyChoice(rawValue: options["family"] ?? FamilyChoice.all.rawValue)
        else { return nil }
        return (format, family, given)
    }

}

/// `plan`: the rules for these flags, in one format; changes nothing.
func printPlan(format: PlanFormat, family: FamilyChoice, given: FlagMap<String>) throws {
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
