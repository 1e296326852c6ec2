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
