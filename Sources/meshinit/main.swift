import ArgumentParser
import CMeshShims
import MeshConfig
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

let meshinitVersion = "0.1.0"

/// Go's pflag accepts `--bool-flag=false` and `-p=15001`; swift-argument-parser does not.
/// Rewrite those spellings before parsing (`--x=false` → `--no-x`), so Istio's callers work
/// unchanged. A bad boolean is bad input, named.
func normalizeArguments(_ arguments: [String]) throws(CommandFailure) -> [String] {
    var out: [String] = []
    var index = 0
    while index < arguments.count {
        let arg = arguments[index]
        index += 1
        if arg == "--" {
            out += arguments[(index - 1)...]
            break
        }
        if arg.hasPrefix("--"), let eq = arg.firstIndex(of: "=") {
            let name = arg[arg.index(arg.startIndex, offsetBy: 2)..<eq]
            if let flag = IstioFlag(long: name), flag.isBoolean {
                let value = String(arg[arg.index(after: eq)...])
                guard let bool = parseGoBool(value) else {
                    throw CommandFailure(
                        status: .usage,
                        message: ConfigError(.flag(flag), value, "expected a boolean (true/false, 1/0, t/f)")
                            .description)
                }
                out.append(bool ? "--\(name)" : inversion(flag))
                continue
            }
            if IstioFlag(long: name) != nil, arg.index(after: eq) == arg.endIndex {
                // `--istio-inbound-ports=` (an empty value) is valid for pflag.
                out += ["--\(name)", ""]
                continue
            }
        } else if arg.count > 2, arg.hasPrefix("-"), !arg.hasPrefix("--"),
            arg[arg.index(arg.startIndex, offsetBy: 2)] == "=",
            let short = arg.dropFirst().first, let flag = IstioFlag(short: short)
        {
            let value = String(arg.dropFirst(3))
            if flag.isBoolean {
                guard let bool = parseGoBool(value) else {
                    throw CommandFailure(
                        status: .usage,
                        message: ConfigError(.flag(flag), value, "expected a boolean (true/false, 1/0, t/f)")
                            .description)
                }
                out.append(bool ? "-\(short)" : inversion(flag))
            } else {
                // `-p=V` as `--envoy-port=V`, which keeps a value such as `--` bound to its flag.
                out += value.isEmpty ? ["--\(flag.rawValue)", ""] : ["--\(flag.rawValue)=\(value)"]
            }
            continue
        }
        out.append(arg)
    }
    return out
}

/// swift-argument-parser's `.prefixedNo` spelling: `--no-redirect-dns`, `--no_log_as_json`.
func inversion(_ flag: IstioFlag) -> String {
    flag.rawValue.contains("_") ? "--no_\(flag.rawValue)" : "--no-\(flag.rawValue)"
}

func runMain() -> Int32 {
    // From the ELF constructor, not CommandLine.arguments: without /proc (a bare chroot) the
    // latter is empty, and an install with no flags would apply Istio's defaults.
    let count = Int(cmesh_argc())
    guard count >= 1, let argv = cmesh_argv() else {
        writeStandardError("meshinit: cannot read the command line\n")
        return ExitStatus.unavailable.rawValue
    }
    let arguments = (1..<count).map { String(cString: argv[$0]!) }
    do {
        // The init container's path: Istio's flags only, parsed without the CLI framework.
        if let given = FastArguments.parse(arguments) {
            try install(given: given)
            return ExitStatus.ok.rawValue
        }
        if let (options, given) = FastArguments.parsePlan(arguments),
            let format = PlanFormat(rawValue: options["format"] ?? PlanFormat.iptablesRestore.rawValue),
            let family = FamilyChoice(rawValue: options["family"] ?? FamilyChoice.all.rawValue)
        {
            try printPlan(format: format, family: family, given: given)
            return ExitStatus.ok.rawValue
        }
        var command = try Meshinit.parseAsRoot(try normalizeArguments(arguments))
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
