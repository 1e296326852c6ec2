import MeshModel

/// A bad command line: one line, naming the flag or argument.
public struct ArgumentError: Error, Sendable, Hashable, CustomStringConvertible {
    public var message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message }
}

/// Istio's flags on a command line, parsed the way Go's pflag parses them (which is how
/// `istio-iptables` reads its arguments), with every spelling taken from `IstioFlag.table`:
///
/// - `--long VALUE`, `--long=VALUE` (also an empty `--long=`), `-s VALUE`, `-s=VALUE`,
///   `-sVALUE`; a value-taking flag takes the next argument whatever it looks like, as pflag does;
/// - booleans `--long`, `--long=true|false` (Go's ParseBool spellings), `-s`, `-s=false`, and
///   `--no-long`;
/// - the last occurrence of a flag wins.
///
/// Stricter than pflag: an argument that is no flag is an error (Istio ignores it: a value
/// whose flag was forgotten would be lost silently).
public enum IstioArguments {
    /// The flags as text (booleans `"true"`/`"false"`).
    ///
    /// - Throws: `ArgumentError` naming the unknown flag, the flag without a value, the bad
    ///   boolean or the unexpected argument.
    public static func parse(_ arguments: some Collection<String>) throws(ArgumentError) -> FlagMap<String> {
        var extra: [String: String] = [:]
        return try parse(arguments, options: [], into: &extra)
    }

    /// The flags, plus meshinit's own long `options` that take a value (`--format nft`),
    /// collected into `extra`.
    public static func parse(
        _ arguments: some Collection<String>, options: [String], into extra: inout [String: String]
    ) throws(ArgumentError) -> FlagMap<String> {
        var operands: [String]? = nil
        return try parse(arguments, options: options, into: &extra, operands: &operands)
    }

    /// The flags, `extra` options, and (where a command takes them: `operands` not nil)
    /// every other argument, in order: the words that are no flag and no flag's value, and
    /// `-`.
    public static func parse(
        _ arguments: some Collection<String>, options: [String], into extra: inout [String: String],
        operands: inout [String]?
    ) throws(ArgumentError) -> FlagMap<String> {
        var rest = arguments[...]
        var flags: FlagMap<String> = [:]
        while let arg = rest.popFirst() {
            if arg == "--" {
                if operands != nil {
                    operands?.append(contentsOf: rest)
                    break
                }
                if let next = rest.first { throw ArgumentError("unexpected argument \(quoted(next))") }
                break
            }
            guard arg.hasPrefix("-"), arg.utf8.count >= 2 else {
                guard operands != nil else {
                    throw ArgumentError("unexpected argument \(quoted(arg)) (Istio's flags only)")
                }
                operands?.append(arg)
                continue
            }
            var inline: String?
            let flag: IstioFlag
            if arg.hasPrefix("--") {
                var name = arg.dropFirst(2)
                if let eq = name.firstIndex(of: "=") {
                    inline = String(name[name.index(after: eq)...])
                    name = name[..<eq]
                }
                if options.contains(String(name)) {
                    guard let value = inline ?? rest.popFirst() else {
                        throw ArgumentError("flag needs an argument: --\(name)")
                    }
                    extra[String(name)] = value
                    continue
                }
                if let found = IstioFlag(long: name) {
                    flag = found
                } else if inline == nil, name.hasPrefix("no-") || name.hasPrefix("no_"),
                    let negated = IstioFlag(long: name.dropFirst(3)), negated.isBoolean
                {
                    flags[negated] = "false"
                    continue
                } else {
                    throw ArgumentError("unknown flag: --\(name)")
                }
            } else {
                let body = arg.dropFirst()
                guard let letter = body.first, let found = IstioFlag(short: letter) else {
                    throw ArgumentError("unknown shorthand flag: \(quoted(String(body.prefix(1)))) in \(arg)")
                }
                flag = found
                let attached = body.dropFirst()
                if attached.first == "=" {
                    inline = String(attached.dropFirst())
                } else if !attached.isEmpty {
                    guard !flag.isBoolean else {
                        throw ArgumentError("unknown shorthand flag: \(quoted(String(attached.prefix(1)))) in \(arg)")
                    }
                    inline = String(attached)
                }
            }
            if flag.isBoolean {
                guard let inline else {
                    flags[flag] = "true"
                    continue
                }
                guard let value = parseGoBool(inline) else {
                    throw ArgumentError(
                        ConfigError(.flag(flag), inline, "expected a boolean (true/false, 1/0, t/f)").description)
                }
                flags[flag] = value ? "true" : "false"
            } else if let inline {
                flags[flag] = inline
            } else {
                guard let value = rest.popFirst() else {
                    throw ArgumentError("flag needs an argument: \(flag.displayName)")
                }
                flags[flag] = value
            }
        }
        return flags
    }
}
