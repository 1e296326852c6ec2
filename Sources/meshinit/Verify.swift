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

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract:
            "Compare the installed rules with the plan for these flags: exit 0 if they match, 3 with a diff if not.",
        discussion: IstioFlagHelp.text
    )

    @OptionGroup var istio: IstioFlagArguments

    func run() throws {
        let settings = try resolveSettings(given: try istio.given())
        let context = Context(settings)
        let plan = Planner.plan(settings.capture)
        let differences = try verifyPlan(plan, context, backend: context.backendRequest)
        guard differences.isEmpty else {
            for line in differences { writeStandardOutput(line + "\n") }
            throw CommandFailure(
                status: .drift, message: "installed rules differ from the plan (\(differences.count) differences)")
        }
        context.log.info("installed rules match the plan")
    }
}

/// The differences between the installed rules and `plan` (empty: they match), in the
/// backends `Context.installedBackends` picks: the forced one, else the one holding our rules
/// (each line prefixed with its backend when both do). Shared by `verify` and CNI CHECK.
func verifyPlan(_ plan: Plan, _ context: Context, backend request: BackendRequest) throws -> [String] {
    let backends = try context.installedBackends(request)
    var differences: [String] = []
    for backend in backends {
        let prefix = backends.count > 1 ? "\(backend.name): " : ""
        let lines: [String]
        switch backend {
        case .netlink:
            do {
                let comparison = try context.netlink().compare(plan)
                for note in comparison.notes { context.log.warn(note) }
                lines = comparison.differences
            } catch let error as NetlinkError {
                throw failure(error)
            }
        case .iptables:
            lines = try verifyIptables(plan, context)
        }
        differences += lines.map { prefix + $0 }
    }
    return differences
}

/// The iptables backend's differences, IPv6 left out (said so) where it cannot be read.
func verifyIptables(_ plan: Plan, _ context: Context) throws -> [String] {
    do {
        let ipv6 = IPv6Availability.current()
        var found = try context.iptables.verify(plan, families: [.ipv4])
        if ipv6 == .unsupported {
            context.log.info("\(ipv6.reason ?? ""): IPv6 rules not compared")
            return found
        }
        switch Result(catching: { () throws(IptablesError) in
            try context.iptables.verify(plan, families: [.ipv6])
        }) {
        case .success(let lines):
            found += lines
        case .failure(let error) where ipv6 == .disabled && error.kind == .unavailable:
            // Where IPv6 is off ip6tables may not work at all: nothing to compare.
            context.log.info("\(ipv6.reason ?? ""), and \(error.message): IPv6 rules not compared")
        case .failure(let error):
            throw error
        }
        return found
    } catch let error as IptablesError {
        throw failure(error)
    }
}
