import ArgumentParser
import MeshConfig
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The init container's path first: `meshinit [istio-iptables] FLAGS`, `meshinit plan
/// [--format F] [--family X] FLAGS` and `meshinit explain [--format F] [--backend B] FLAGS
/// PACKETS` are parsed without the CLI framework (swift-argument-
/// parser's reflection-driven parse costs about 15 M instructions per start; the table-driven
/// parser a few thousand). Anything else — sub-commands, help, version, completions, and any
/// command line the fast parser refuses — goes through swift-argument-parser, whose commands
/// hand Istio's flags to the same parser (so its errors are the same). With `CNI_COMMAND`
/// set, the runtime is calling us as a CNI plugin.
func runMain() -> Int32 {
    // A container runtime runs us as a CNI plugin: CNI_COMMAND set, arguments unused.
    if CNIPlugin.invoked { return CNIPlugin.run() }
    guard let arguments = processArguments() else {
        writeStandardError("meshinit: cannot read the command line\n")
        return ExitStatus.unavailable.rawValue
    }
    do {
        let install = arguments.first == "istio-iptables" ? arguments.dropFirst() : arguments[...]
        if let given = try? IstioArguments.parse(install) {
            try Install.perform(given: given)
            return ExitStatus.ok.rawValue
        }
        if arguments.first == "plan", let plan = PlanCommand.fastPath(arguments.dropFirst()) {
            try printPlan(format: plan.format, family: plan.family, given: plan.given)
            return ExitStatus.ok.rawValue
        }
        if arguments.first == "explain", let e = ExplainCommand.fastPath(arguments.dropFirst()) {
            try explain(.flags(e.given), operands: e.operands, format: e.format, backend: e.backend, live: false)
            return ExitStatus.ok.rawValue
        }
        var command = try Meshinit.parseAsRoot(arguments)
        try command.run()
        return ExitStatus.ok.rawValue
    } catch let failure as CommandFailure {
        writeStandardError("meshinit: \(failure.message)\n")
        return failure.status.rawValue
    } catch {
        let code = Meshinit.exitCode(for: error)
        if code == .success {
            writeStandardOutput(Meshinit.fullMessage(for: error) + "\n")
            return 0
        }
        // Parse errors: one line, exit 64.
        let message = Meshinit.message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid arguments"
        writeStandardError("meshinit: \(message)\n")
        return code == .validationFailure ? ExitStatus.usage.rawValue : code.rawValue
    }
}

exit(runMain())
