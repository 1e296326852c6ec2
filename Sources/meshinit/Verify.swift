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
                let ipv6 = IPv6Availability.current()
                var found = try context.iptables.verify(plan, families: [.ipv4])
                if ipv6 == .unsupported {
                    context.log.info("\(ipv6.reason ?? ""): IPv6 rules not compared")
                } else {
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
                }
                differences = found
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
