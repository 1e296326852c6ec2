import ArgumentParser
import MeshConfig

/// Istio's `istio-iptables` flags on a sub-command's command line. swift-argument-parser
/// leaves them alone (`.allUnrecognized`) and `IstioArguments` parses them from
/// `IstioFlag.table` — the same parser as the install fast path, so there is one declaration
/// of every flag; the help text below is generated from that table.
struct IstioFlagArguments: ParsableArguments {
    @Argument(
        parsing: .allUnrecognized,
        help: ArgumentHelp("Istio's istio-iptables flags (listed below).", valueName: "istio-flags"),
        completion: .list(IstioFlagHelp.spellings))
    var arguments: [String] = []

    /// The flags as text, by flag.
    func given() throws -> FlagMap<String> {
        do {
            return try IstioArguments.parse(arguments)
        } catch {
            throw failure(error)
        }
    }
}

/// The flag table as help text.
enum IstioFlagHelp {
    /// Every spelling (`-p`, `--envoy-port`), for shell completion.
    static var spellings: [String] {
        IstioFlag.table.flatMap { spec in (spec.short.map { ["-\($0)"] } ?? []) + ["--\(spec.long)"] }
    }

    /// One entry per flag: spellings and value, help, environment variables and default; then
    /// the environment-only knobs. Wrapped to 78 columns here (the CLI framework would wrap
    /// longer lines without their indentation).
    static var text: String {
        var lines = ["Istio's flags (istio-iptables' spellings, environment variables and defaults):"]
        for spec in IstioFlag.table {
            lines.append("  " + usage(spec))
            lines += wrap(spec.help, indent: 8)
            var details: [String] = []
            if let env = spec.environment { details.append("env \(env)") }
            if let alias = spec.aliasEnvironment { details.append("or \(alias)") }
            if !spec.defaultValue.isEmpty, spec.value != .boolean { details.append("default \(spec.defaultValue)") }
            if spec.meshinitOwn { details.append("meshinit's own") }
            if !details.isEmpty { lines += wrap(details.joined(separator: ", "), indent: 8) }
        }
        lines.append("Environment only:")
        for knob in EnvironmentKnob.allCases {
            lines.append("  \(knob.rawValue)")
            lines += wrap("\(knob.help) Default \(knob.defaultValue.isEmpty ? "empty" : knob.defaultValue).", indent: 8)
        }
        return lines.joined(separator: "\n")
    }

    /// `text` as lines of at most 78 columns, each indented.
    static func wrap(_ text: String, indent: Int) -> [String] {
        let pad = String(repeating: " ", count: indent)
        var lines: [String] = []
        var line = ""
        for word in text.split(separator: " ") {
            if !line.isEmpty, indent + line.count + 1 + word.count > 78 {
                lines.append(pad + line)
                line = ""
            }
            line += (line.isEmpty ? "" : " ") + word
        }
        if !line.isEmpty { lines.append(pad + line) }
        return lines
    }

    /// `-p, --envoy-port <port>` or `--redirect-dns[=true|false]`.
    static func usage(_ spec: FlagSpec) -> String {
        let names = (spec.short.map { "-\($0), " } ?? "") + "--\(spec.long)"
        switch spec.value {
        case .boolean: return names + "[=true|false]"
        case .text(let value): return names + " <\(value)>"
        }
    }
}
