/// A pflag-compatible parser for the install path (`meshinit [istio-iptables] FLAGS`): the
/// flags as text, by `IstioFlag`, exactly as the swift-argument-parser CLI would collect
/// them — or nil for anything it does not handle on its own (sub-commands, help, version,
/// unknown or malformed flags, values that look like options), which then goes through the
/// full CLI with its messages.
///
/// Why: an init container's whole job is this one parse, and swift-argument-parser's
/// reflection-driven parse costs about 15 M instructions (≈3 ms) per start; this costs
/// about as many thousand. The CLI tests check both give the same flags for the same argv.
public enum FastArguments {
    public static func parse(_ arguments: [String]) -> [IstioFlag: String]? {
        var rest = arguments[...]
        if rest.first == "istio-iptables" { rest = rest.dropFirst() }
        var extra: [String: String] = [:]
        return parseFlags(rest, options: [], into: &extra)
    }

    /// `meshinit plan [--format F] [--family X] FLAGS` (the operators' path, fast for long
    /// lists too): the plan options as given (the CLI validates them) and the flags.
    public static func parsePlan(_ arguments: [String]) -> (options: [String: String], flags: [IstioFlag: String])? {
        guard arguments.first == "plan" else { return nil }
        var options: [String: String] = [:]
        guard let flags = parseFlags(arguments.dropFirst(), options: ["format", "family"], into: &options) else {
            return nil
        }
        return (options, flags)
    }

    /// Istio flags, plus the long `options` (values only) collected into `extra`.
    static func parseFlags(
        _ arguments: ArraySlice<String>, options: Set<String>, into extra: inout [String: String]
    ) -> [IstioFlag: String]? {
        var rest = arguments
        var flags: [IstioFlag: String] = [:]
        while let arg = rest.popFirst() {
            guard arg.hasPrefix("-"), arg.utf8.count >= 2, arg != "--" else { return nil }
            let flag: IstioFlag
            var inline: String?
            if arg.hasPrefix("--") {
                var name = arg.dropFirst(2)
                if let eq = name.firstIndex(of: "=") {
                    inline = String(name[name.index(after: eq)...])
                    name = name[..<eq]
                }
                if options.contains(String(name)) {
                    if let inline {
                        guard !inline.isEmpty else { return nil }
                        extra[String(name)] = inline
                    } else {
                        guard let value = rest.popFirst(), !value.hasPrefix("-") else { return nil }
                        extra[String(name)] = value
                    }
                    continue
                }
                // (`--no-x` inversions are the full CLI's spelling: left to it.)
                guard let found = IstioFlag(long: name) else { return nil }
                flag = found
            } else {
                // -p VALUE, -p=VALUE, -n
                let body = arg.dropFirst()
                guard let letter = body.first, let found = IstioFlag(short: letter) else { return nil }
                if body.count > 1 {
                    guard body.dropFirst().first == "=" else { return nil }
                    inline = String(body.dropFirst(2))
                }
                flag = found
            }
            if flag.isBoolean {
                guard let inline else {
                    flags[flag] = "true"
                    continue
                }
                guard let value = parseGoBool(inline) else { return nil }
                flags[flag] = value ? "true" : "false"
            } else if let inline {
                flags[flag] = inline
            } else {
                guard let value = rest.popFirst(), !(value.hasPrefix("-") && value.utf8.count > 1) else { return nil }
                flags[flag] = value
            }
        }
        return flags
    }
}
