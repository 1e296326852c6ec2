import MeshConfig
import MeshModel

/// The CNI protocol (spec 1.1.0) as values: a request read from the environment and stdin,
/// results and errors as JSON. Pure: the CLI does the I/O.
public enum CNIVersion {
    public static let current = "1.1.0"
    /// What ADD, CHECK and DEL accept (VERSION answers for any input; STATUS and GC exist
    /// from 1.1.0).
    public static let supported = ["0.4.0", "1.0.0", "1.1.0"]

    /// Results of these versions share a shape (and convert to each other).
    enum Family { case v020, v040, v100 }

    static func family(_ version: String) -> Family? {
        switch version {
        case "0.1.0", "0.2.0": .v020
        case "0.3.0", "0.3.1", "0.4.0": .v040
        case "1.0.0", "1.1.0": .v100
        default: nil
        }
    }

    /// `a` ≥ `b` for dotted versions (non-numbers compare as 0).
    static func atLeast(_ a: String, _ b: String) -> Bool {
        let x = a.split(separator: ".").map { Int($0) ?? 0 }
        let y = b.split(separator: ".").map { Int($0) ?? 0 }
        for i in 0..<max(x.count, y.count) {
            let l = i < x.count ? x[i] : 0
            let r = i < y.count ? y[i] : 0
            if l != r { return l > r }
        }
        return true
    }
}

/// The spec's error codes, and meshinit's own (≥ 100).
public enum CNIErrorCode: Int, Sendable, Hashable {
    case incompatibleVersion = 1
    case unsupportedField = 2
    case unknownContainer = 3
    case invalidEnvironment = 4
    case ioFailure = 5
    case decodingFailure = 6
    case invalidConfig = 7
    case tryAgainLater = 11
    /// STATUS: the plugin cannot serve ADDs now.
    case notAvailable = 50
    /// CHECK: the installed rules differ from the plan.
    case drift = 100
    /// The kernel refused the rules or routes.
    case installFailed = 101
    /// A kernel feature or binary the rules need is missing.
    case unavailable = 102
    /// Not permitted (CAP_NET_ADMIN).
    case permission = 103
    /// The network namespace cannot be entered.
    case namespace = 104
}

/// A CNI error: printed as the spec's error JSON on stdout, with a non-zero exit. Both parts
/// are bounded when printed (`msg` short, `details` at most 4 KiB), whatever value they name.
public struct CNIError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: CNIErrorCode
    public var message: String
    public var details: String

    /// The printed `msg` is at most this many characters; `details` at most this many bytes.
    public static let messageLimit = 200
    public static let detailsLimit = 4096

    public init(_ code: CNIErrorCode, _ message: String, details: String = "") {
        self.code = code
        self.message = message
        self.details = details
    }

    /// A bad value of the resolver's (a config key, an annotation), the value shortened.
    public init(_ error: ConfigError) {
        self.init(.invalidConfig, "invalid value \(brief(error.value)) for \(error.source): \(error.reason)")
    }

    public var description: String { details.isEmpty ? message : "\(message): \(details)" }

    /// The message and details as printed: a long message is cut (and given whole, as far as
    /// the bound allows, in the details).
    public var bounded: (message: String, details: String) {
        var message = self.message
        var details = self.details
        if message.count > Self.messageLimit {
            details = details.isEmpty ? message : message + ": " + details
            message = String(message.prefix(Self.messageLimit - 1)) + "…"
        }
        return (message, truncated(details, bytes: Self.detailsLimit))
    }

    /// `{"cniVersion":…,"code":N,"msg":…,"details":…}`.
    public func json(cniVersion: String) -> String {
        let (message, details) = bounded
        var members: [(String, JSONValue)] = [
            ("cniVersion", .string(cniVersion)), ("code", .int(code.rawValue)), ("msg", .string(message)),
        ]
        if !details.isEmpty { members.append(("details", .string(details))) }
        return JSONValue.object(members).serialized + "\n"
    }
}

/// A value for a message: quoted, and cut after `limit` characters (saying how long it was),
/// so a 100 kB annotation does not become a 100 kB error.
public func brief(_ value: String, limit: Int = 48) -> String {
    guard value.count > limit else { return quoted(value) }
    return quoted(String(value.prefix(limit))) + "… (\(value.utf8.count) bytes)"
}

/// `text` cut to at most `bytes` bytes of UTF-8, on a character boundary.
func truncated(_ text: String, bytes: Int) -> String {
    guard text.utf8.count > bytes else { return text }
    var out = ""
    for character in text {
        if out.utf8.count + character.utf8.count > bytes - 3 { break }
        out.append(character)
    }
    return out + "…"
}

/// What the runtime asks.
public enum CNICommand: String, Sendable, Hashable, CaseIterable {
    case add = "ADD"
    case del = "DEL"
    case check = "CHECK"
    case status = "STATUS"
    case version = "VERSION"
    case gc = "GC"
}

/// One invocation: `CNI_*` variables and the network configuration from stdin.
///
/// ADD, CHECK, STATUS and GC read it strictly (the spec's required variables, a JSON object
/// without duplicate keys or invalid UTF-8, a supported `cniVersion`, a valid `name`). DEL
/// reads only what it needs (a teardown must not fail on input it does not use): any
/// `CNI_NETNS`, and from stdin, if it parses at all, `cniVersion` and `logFile`. VERSION
/// answers whatever it is given.
public struct CNIRequest: Sendable {
    public var command: CNICommand
    public var containerID: String
    /// `CNI_NETNS`; may be empty for DEL (the namespace is gone).
    public var netns: String
    public var ifname: String
    /// `CNI_ARGS` as key → value (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, …; the last of a key
    /// given twice, as libcni reads them).
    public var args: [String: String]
    /// The network configuration (`cniVersion`, `name`, our keys, `runtimeConfig`,
    /// `prevResult`); nil for VERSION, and for a DEL whose stdin is not JSON.
    public var config: JSONSpan?
    /// The raw stdin, for byte-exact pass-through of `prevResult`.
    public var input: [UInt8]
    /// The version results and errors are written in: the configuration's (when supported).
    public var cniVersion: String
    /// DEL: what was wrong with the input it does not need (for the log).
    public var ignored: [String] = []

    public var podNamespace: String? { args["K8S_POD_NAMESPACE"].flatMap { $0.isEmpty ? nil : $0 } }
    public var podName: String? { args["K8S_POD_NAME"].flatMap { $0.isEmpty ? nil : $0 } }

    /// `namespace/name`, or what is known of it.
    public var pod: String {
        switch (podNamespace, podName) {
        case (let ns?, let name?): "\(ns)/\(name)"
        case (nil, let name?): name
        case (let ns?, nil): "\(ns)/?"
        case (nil, nil): "?"
        }
    }

    /// Reads a request. `environment` holds the `CNI_*` variables.
    ///
    /// - Throws: `CNIError` 4 (a variable missing or bad), 6 (stdin is not JSON, or not an
    ///   object), 7 (a bad `name`, `cniVersion` missing, a key given twice), 1 (an unsupported
    ///   `cniVersion`, or one that predates the command).
    public static func parse(environment: [String: String], stdin: [UInt8]) throws(CNIError) -> CNIRequest {
        guard let commandText = environment["CNI_COMMAND"], !commandText.isEmpty else {
            throw CNIError(.invalidEnvironment, "CNI_COMMAND is not set")
        }
        guard let command = CNICommand(rawValue: commandText) else {
            throw CNIError(
                .invalidEnvironment, "unknown CNI_COMMAND \(brief(commandText))",
                details: "expected one of \(CNICommand.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var request = CNIRequest(
            command: command, containerID: environment["CNI_CONTAINERID"] ?? "", netns: environment["CNI_NETNS"] ?? "",
            ifname: environment["CNI_IFNAME"] ?? "", args: [:], config: nil, input: stdin,
            cniVersion: CNIVersion.current)
        switch command {
        case .version:
            // Answered for any input (as libcni's skel does): stdin is not even needed.
            return request
        case .del:
            request.readLeniently(environment)
            return request
        case .add, .check, .status, .gc:
            try request.readStrictly(environment)
            return request
        }
    }

    mutating func readStrictly(_ environment: [String: String]) throws(CNIError) {
        try checkEnvironment(environment)
        do {
            config = try JSONParser.parse(input)
        } catch {
            if case .duplicateKey(let key) = error.kind {
                throw CNIError(.invalidConfig, "the network configuration has the key \(brief(key)) twice")
            }
            throw CNIError(
                .decodingFailure, "the network configuration on stdin is not JSON", details: error.description)
        }
        guard let config, case .object = config.kind else {
            throw CNIError(.decodingFailure, "the network configuration on stdin is not a JSON object")
        }
        guard let version = config["cniVersion"], !version.isNull else {
            throw CNIError(.invalidConfig, "the network configuration has no cniVersion")
        }
        guard let text = version.string else {
            throw CNIError(.invalidConfig, "cniVersion is \(version.typeName), not a string")
        }
        guard CNIVersion.supported.contains(text) else {
            throw CNIError(
                .incompatibleVersion, "unsupported cniVersion \(brief(text))",
                details: "meshinit supports \(CNIVersion.supported.joined(separator: ", "))")
        }
        cniVersion = text
        if command == .status || command == .gc, !CNIVersion.atLeast(text, "1.1.0") {
            throw CNIError(
                .incompatibleVersion, "cniVersion \(text) does not allow \(command.rawValue)",
                details: "\(command.rawValue) exists from CNI 1.1.0")
        }
        guard let name = config["name"], !name.isNull else {
            throw CNIError(.invalidConfig, "the network configuration has no name")
        }
        guard let nameText = name.string, Self.isValidName(nameText) else {
            throw CNIError(
                .invalidConfig,
                "invalid network name \(name.string.map { brief($0) } ?? name.typeName)",
                details: "expected letters, digits, _ . - (not first)")
        }
        for pair in (environment["CNI_ARGS"] ?? "").split(separator: ";") where !pair.isEmpty {
            guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
                throw CNIError(.invalidEnvironment, "CNI_ARGS item \(brief(String(pair))) is not KEY=VALUE")
            }
            args[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
        }
    }

    /// DEL: only what it needs, and nothing it cannot read stops it.
    mutating func readLeniently(_ environment: [String: String]) {
        for pair in (environment["CNI_ARGS"] ?? "").split(separator: ";") where !pair.isEmpty {
            guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
                ignored.append("CNI_ARGS item \(brief(String(pair))) is not KEY=VALUE")
                continue
            }
            args[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
        }
        do {
            config = try JSONParser.parse(input, options: .lenient)
        } catch {
            ignored.append("stdin is not JSON (\(error))")
            return
        }
        guard let config, case .object = config.kind else {
            ignored.append("stdin is not a JSON object")
            self.config = nil
            return
        }
        if let text = config["cniVersion"]?.string, CNIVersion.supported.contains(text) {
            cniVersion = text
        } else {
            ignored.append(
                "cniVersion \(config["cniVersion"].map { $0.string.map { brief($0) } ?? $0.typeName } ?? "missing")")
        }
    }

    /// The variables each command needs (spec: "Parameters"; libcni's skel checks the same).
    func checkEnvironment(_ environment: [String: String]) throws(CNIError) {
        func required(_ name: String) throws(CNIError) -> String {
            guard let value = environment[name], !value.isEmpty else {
                throw CNIError(.invalidEnvironment, "\(name) is not set (required for \(command.rawValue))")
            }
            return value
        }
        switch command {
        case .add, .check:
            let id = try required("CNI_CONTAINERID")
            guard Self.isValidName(id) else {
                throw CNIError(
                    .invalidEnvironment, "CNI_CONTAINERID \(brief(id)) has invalid characters",
                    details: "expected letters, digits, _ . - (not first)")
            }
            let netns = try required("CNI_NETNS")
            guard netns.utf8.first == UInt8(ascii: "/"), !netns.utf8.contains(0) else {
                throw CNIError(.invalidEnvironment, "CNI_NETNS \(brief(netns)) is not an absolute path")
            }
            let ifname = try required("CNI_IFNAME")
            guard Self.isValidInterfaceName(ifname) else {
                throw CNIError(
                    .invalidEnvironment, "CNI_IFNAME \(brief(ifname)) is not an interface name",
                    details: "1-15 bytes, not . or .., without / : or whitespace")
            }
            _ = try required("CNI_PATH")
        case .status, .gc:
            _ = try required("CNI_PATH")
        case .del, .version:
            break
        }
    }

    /// A network name or container id: `[a-zA-Z0-9][a-zA-Z0-9_.-]*` (libcni's check).
    static func isValidName(_ text: String) -> Bool {
        guard let first = text.utf8.first, isAlphanumeric(first) else { return false }
        return text.utf8.allSatisfy {
            isAlphanumeric($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-")
        }
    }

    static func isAlphanumeric(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
    }

    /// libcni's `ValidateInterfaceName`: 1-15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
    static func isValidInterfaceName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count <= 15, name != ".", name != ".." else { return false }
        return !bytes.contains { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 == 0x7f }
    }

    /// The ADD result: the previous plugin's result in the configuration's `cniVersion` (byte
    /// for byte when it already is), or an empty result when there is none.
    ///
    /// - Throws: `CNIError` 1 for a `prevResult` version that cannot be converted, 7 for a
    ///   `prevResult` that is not a result.
    public func addResult() throws(CNIError) -> String {
        guard let previous = config?["prevResult"], !previous.isNull else {
            return JSONValue.object([("cniVersion", .string(cniVersion))]).serialized + "\n"
        }
        return try CNIResult.converted(previous, input: input, to: cniVersion) + "\n"
    }

    /// The VERSION result (libcni's skel answers with its own version, whatever it is asked).
    public func versionResult() -> String {
        JSONValue.object([
            ("cniVersion", .string(CNIVersion.current)),
            ("supportedVersions", .array(CNIVersion.supported.map(JSONValue.string))),
        ]).serialized + "\n"
    }
}

/// A previous plugin's result, converted between the spec's result versions (libcni's
/// convert package does the same for the runtime).
public enum CNIResult {
    /// `previous` (a value of `input`) as a result of `version`: the bytes themselves when the
    /// version is the same; only the `cniVersion` changed between 1.0.0 and 1.1.0 (and 0.3.x
    /// and 0.4.0), which share their shape; rebuilt otherwise (0.4.0 has `version` in each IP,
    /// 1.0.0 not; 0.1.0/0.2.0 have `ip4`/`ip6` instead of `ips`).
    public static func converted(_ previous: JSONSpan, input: [UInt8], to version: String) throws(CNIError) -> String {
        guard case .object(let members) = previous.kind else {
            throw CNIError(.invalidConfig, "prevResult is \(previous.typeName), not a result object")
        }
        let given: String
        switch previous["cniVersion"] {
        case nil: given = version  // before 1.0.0 a result need not say (libcni assumes the config's)
        case let v? where v.isNull: given = version
        case let v?:
            guard let text = v.string else {
                throw CNIError(.invalidConfig, "prevResult cniVersion is \(v.typeName), not a string")
            }
            given = text
        }
        guard let from = CNIVersion.family(given), let to = CNIVersion.family(version) else {
            throw CNIError(
                .incompatibleVersion, "prevResult cniVersion \(brief(given)) cannot be converted to \(version)",
                details: "known result versions: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0")
        }
        if from != .v020 { try checkShape(previous) }
        let bytes = input[previous.range]
        if from == to {
            if let v = previous["cniVersion"], v.string == version { return String(decoding: bytes, as: UTF8.self) }
            // The same shape: only the version changes (or is added), every other byte kept.
            var out = Array(bytes)
            let quotedVersion = Array(JSONValue.string(version).serialized.utf8)
            if let v = previous["cniVersion"] {
                out.replaceSubrange(
                    (v.range.lowerBound - previous.range.lowerBound)..<(v.range.upperBound - previous.range.lowerBound),
                    with: quotedVersion)
            } else {
                out.insert(
                    contentsOf: Array("\"cniVersion\":".utf8) + quotedVersion
                        + (members.isEmpty ? [] : [UInt8(ascii: ",")]), at: 1)
            }
            return String(decoding: out, as: UTF8.self)
        }
        var fields: [(String, JSONValue)] = []
        switch from {
        case .v020:
            fields = try fromV020(previous, to: to)
        case .v040, .v100:
            for (key, value) in members where key != "cniVersion" {
                if key == "ips" {
                    fields.append((key, try ips(value, to: to)))
                } else {
                    fields.append((key, value.value))
                }
            }
        }
        return JSONValue.object([("cniVersion", .string(version))] + fields).serialized
    }

    /// A result's lists are lists of objects, its `dns` an object (what is passed on must be a
    /// result a runtime can read).
    static func checkShape(_ result: JSONSpan) throws(CNIError) {
        for key in ["interfaces", "ips", "routes"] {
            guard let list = result[key], !list.isNull else { continue }
            guard case .array(let items) = list.kind else {
                throw CNIError(.invalidConfig, "prevResult \(key) is \(list.typeName), not an array")
            }
            for (i, item) in items.enumerated() {
                guard case .object = item.kind else {
                    throw CNIError(.invalidConfig, "prevResult \(key)[\(i)] is \(item.typeName), not an object")
                }
            }
        }
        if let dns = result["dns"], !dns.isNull {
            guard case .object = dns.kind else {
                throw CNIError(.invalidConfig, "prevResult dns is \(dns.typeName), not an object")
            }
        }
    }

    /// `ips` for the target family: each IP with (0.4.0) or without (1.0.0) its `version`.
    static func ips(_ value: JSONSpan, to: CNIVersion.Family) throws(CNIError) -> JSONValue {
        guard case .array(let items) = value.kind else {
            throw CNIError(.invalidConfig, "prevResult ips is \(value.typeName), not an array")
        }
        var out: [JSONValue] = []
        for (i, item) in items.enumerated() {
            guard case .object(let members) = item.kind else {
                throw CNIError(.invalidConfig, "prevResult ips[\(i)] is \(item.typeName), not an object")
            }
            var fields = members.filter { $0.key != "version" }.map { ($0.key, $0.value.value) }
            if to == .v040 {
                guard let address = item["address"]?.string else {
                    throw CNIError(.invalidConfig, "prevResult ips[\(i)] has no address string")
                }
                fields.insert(("version", .string(address.contains(":") ? "6" : "4")), at: 0)
            }
            out.append(.object(fields))
        }
        return .array(out)
    }

    /// A 0.1.0/0.2.0 result (`ip4`, `ip6`, `dns`) as `ips` and `routes`.
    static func fromV020(_ previous: JSONSpan, to: CNIVersion.Family) throws(CNIError) -> [(String, JSONValue)] {
        var ips: [JSONValue] = []
        var routes: [JSONValue] = []
        for (key, family) in [("ip4", "4"), ("ip6", "6")] {
            guard let config = previous[key], !config.isNull else { continue }
            guard case .object = config.kind, let address = config["ip"]?.string else {
                throw CNIError(.invalidConfig, "prevResult \(key) has no ip string")
            }
            var ip: [(String, JSONValue)] = to == .v040 ? [("version", .string(family))] : []
            ip.append(("address", .string(address)))
            if let gateway = config["gateway"]?.string { ip.append(("gateway", .string(gateway))) }
            ips.append(.object(ip))
            if let list = config["routes"], case .array(let items) = list.kind {
                routes += items.map(\.value)
            }
        }
        var fields: [(String, JSONValue)] = []
        if !ips.isEmpty { fields.append(("ips", .array(ips))) }
        if !routes.isEmpty { fields.append(("routes", .array(routes))) }
        if let dns = previous["dns"], !dns.isNull { fields.append(("dns", dns.value)) }
        return fields
    }
}
