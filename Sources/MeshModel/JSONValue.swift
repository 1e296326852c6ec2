/// A JSON value with ordered object keys, serialized compactly (RFC 8259 escaping).
public indirect enum JSONValue: Sendable {
    case object([(String, JSONValue)])
    case array([JSONValue])
    case string(String)
    case number(Int64)
    /// A number kept as its JSON text (a fraction, an exponent, or beyond Int64).
    case numberText(String)
    case bool(Bool)
    case null

    public static func int(_ value: some BinaryInteger) -> JSONValue { .number(Int64(value)) }

    public var serialized: String {
        var out = ""
        write(to: &out)
        return out
    }

    public func write(to out: inout String) {
        switch self {
        case .object(let members):
            out += "{"
            for (i, (key, value)) in members.enumerated() {
                if i > 0 { out += "," }
                JSONValue.writeString(key, to: &out)
                out += ":"
                value.write(to: &out)
            }
            out += "}"
        case .array(let items):
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                item.write(to: &out)
            }
            out += "]"
        case .string(let s): JSONValue.writeString(s, to: &out)
        case .number(let n): out += String(n)
        case .numberText(let text): out += text
        case .bool(let b): out += b ? "true" : "false"
        case .null: out += "null"
        }
    }

    public static func writeString(_ value: String, to out: inout String) {
        out += "\""
        // Runs of bytes that need no escape are appended whole (a multi-byte character never
        // contains a byte below 0x80, so the runs end on character boundaries).
        let utf8 = value.utf8
        var run = utf8.startIndex
        var i = run
        while i != utf8.endIndex {
            let b = utf8[i]
            guard b < 0x20 || b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") else {
                i = utf8.index(after: i)
                continue
            }
            out += value[run..<i]
            switch b {
            case UInt8(ascii: "\""): out += "\\\""
            case UInt8(ascii: "\\"): out += "\\\\"
            case UInt8(ascii: "\n"): out += "\\n"
            case UInt8(ascii: "\r"): out += "\\r"
            case UInt8(ascii: "\t"): out += "\\t"
            default:
                let hex = String(b, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            }
            i = utf8.index(after: i)
            run = i
        }
        out += value[run..<i]
        out += "\""
    }
}
