import MeshConfig
import MeshModel

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
