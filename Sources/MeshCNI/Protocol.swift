import MeshConfig
import MeshModel

/// The CNI protocol (spec 1.1.0) as values: a request read from the environment and stdin,
/// results and errors as JSON. Pure: the CLI does the I/O.
public enum CNIVersion {
    public static let current = "1.1.0"
    public static let supported = ["0.4.0", "1.0.0", "1.1.0"]
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

/// A CNI error: printed as the spec's error JSON on stdout, with a non-zero exit.
public struct CNIError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: CNIErrorCode
    public var message: String
    public var details: String

    public init(_ code: CNIErrorCode, _ message: String, details: String = "") {
        self.code = code
        self.message = message
        self.details = details
    }

    public var description: String { details.isEmpty ? message : "\(message): \(details)" }

    /// `{"cniVersion":…,"code":N,"msg":…,"details":…}`.
    public func json(cniVersion: String) -> String {
        var members: [(String, JSONValue)] = [
            ("cniVersion", .string(cniVersion)), ("code", .int(code.rawValue)), ("msg", .string(message)),
        ]
        if !details.isEmpty { members.append(("details", .string(details))) }
        return JSONValue.object(members).serialized + "\n"
    }
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
public struct CNIRequest: Sendable {
    public var command: CNICommand
    public var containerID: String
    /// `CNI_NETNS`; empty for a pod on the host network (or a DEL after the netns is gone).
    public var netns: String
    public var ifname: String
    /// `CNI_ARGS` as key → value (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, …).
    public var args: [String: String]
    /// The network configuration (`cniVersion`, `name`, our keys, `runtimeConfig`,
    /// `prevResult`); nil for VERSION without input.
    public var config: JSONSpan?
    /// The raw stdin, for byte-exact pass-through of `prevResult`.
    public var input: [UInt8]
    /// The configuration's `cniVersion` (the version results are written in).
    public var cniVersion: String

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
    /// - Throws: `CNIError` 4 (a variable missing or bad), 6 (stdin is not JSON), 1 (an
    ///   unsupported `cniVersion`).
    public static func parse(environment: [String: String], stdin: [UInt8]) throws(CNIError) -> CNIRequest {
        guard let commandText = environment["CNI_COMMAND"] else {
            throw CNIError(.invalidEnvironment, "CNI_COMMAND is not set")
        }
        guard let command = CNICommand(rawValue: commandText) else {
            throw CNIError(
                .invalidEnvironment, "unknown CNI_COMMAND \(quoted(commandText))",
                details: "expected one of \(CNICommand.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var config: JSONSpan?
        let blank = stdin.allSatisfy { $0 == 0x20 || $0 == 0x0a || $0 == 0x0d || $0 == 0x09 }
        if !(blank && command == .version) {
            do {
                config = try JSONParser.parse(stdin)
            } catch {
                throw CNIError(
                    .decodingFailure, "the network configuration on stdin is not JSON", details: error.description)
            }
            guard case .object = config?.kind else {
                throw CNIError(.decodingFailure, "the network configuration on stdin is not a JSON object")
            }
        }
        var cniVersion = CNIVersion.current
        if let config {
            guard let version = config["cniVersion"] else {
                throw CNIError(.invalidConfig, "the network configuration has no cniVersion")
            }
            guard let text = version.string, CNIVersion.supported.contains(text) else {
                throw CNIError(
                    .incompatibleVersion, "unsupported cniVersion \(quoted(version.string ?? "(not a string)"))",
                    details: "meshinit supports \(CNIVersion.supported.joined(separator: ", "))")
            }
            cniVersion = text
        }
        var args: [String: String] = [:]
        for pair in (environment["CNI_ARGS"] ?? "").split(separator: ";") where !pair.isEmpty {
            guard let eq = pair.firstIndex(of: "=") else {
                throw CNIError(.invalidEnvironment, "CNI_ARGS item \(quoted(String(pair))) is not KEY=VALUE")
            }
            args[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
        }
        let request = CNIRequest(
            command: command, containerID: environment["CNI_CONTAINERID"] ?? "", netns: environment["CNI_NETNS"] ?? "",
            ifname: environment["CNI_IFNAME"] ?? "", args: args, config: config, input: stdin, cniVersion: cniVersion)
        try request.checkEnvironment()
        return request
    }

    /// The variables each command needs (spec: "Parameters").
    func checkEnvironment() throws(CNIError) {
        switch command {
        case .add, .check, .del:
            guard !containerID.isEmpty else {
                throw CNIError(.invalidEnvironment, "CNI_CONTAINERID is not set (required for \(command.rawValue))")
            }
            guard !ifname.isEmpty else {
                throw CNIError(.invalidEnvironment, "CNI_IFNAME is not set (required for \(command.rawValue))")
            }
            if command != .del, netns.isEmpty {
                throw CNIError(.invalidEnvironment, "CNI_NETNS is not set (required for \(command.rawValue))")
            }
            if !netns.isEmpty, netns.utf8.first != UInt8(ascii: "/") || netns.utf8.contains(0) {
                throw CNIError(.invalidEnvironment, "CNI_NETNS \(quoted(netns)) is not an absolute path")
            }
        case .status, .version, .gc:
            break
        }
    }

    /// The ADD result: the previous plugin's result, passed through byte for byte (a chained
    /// plugin that adds no interface), or an empty result when there is none.
    public func passThroughResult() -> String {
        if let previous = config?["prevResult"], case .object = previous.kind {
            return String(decoding: input[previous.range], as: UTF8.self) + "\n"
        }
        return JSONValue.object([("cniVersion", .string(cniVersion))]).serialized + "\n"
    }

    /// The VERSION result.
    public func versionResult() -> String {
        JSONValue.object([
            ("cniVersion", .string(cniVersion)),
            ("supportedVersions", .array(CNIVersion.supported.map(JSONValue.string))),
        ]).serialized + "\n"
    }
}
