import MeshConfig
import MeshModel

// The CNI protocol's versions and errors: the codes of spec 1.1.0 and their JSON.
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
