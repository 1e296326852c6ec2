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
