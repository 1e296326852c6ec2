/// A strict RFC 8259 JSON parser over UTF-8 bytes (no Foundation: it runs on the CNI plugin's
/// start-up path). It keeps object members in order, integers exact and other numbers as
/// their text, and where every value sits in the input, so a document can be edited in place
/// (`JSONSpan`) with every other byte kept.
public struct JSONSyntaxError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Byte offset of the problem.
    public var offset: Int
    public var reason: String

    public var description: String { "invalid JSON at byte \(offset): \(reason)" }
}

/// A parsed value and the bytes it came from.
public struct JSONSpan: Sendable {
    public enum Kind: Sendable {
        case object([(key: String, value: JSONSpan)])
        case array([JSONSpan])
        case string(String)
        case number(String)
        case bool(Bool)
        case null
    }

    public var kind: Kind
    /// The value's bytes in the input (for an object or array, from the bracket to the bracket).
    public var range: Range<Int>

    /// The member `key` of an object (the last one, if repeated).
    public subscript(key: String) -> JSONSpan? {
        guard case .object(let members) = kind else { return nil }
        return members.last { $0.key == key }?.value
    }

    public var string: String? {
        if case .string(let s) = kind { return s }
        return nil
    }

    public var value: JSONValue {
        switch kind {
        case .object(let members): .object(members.map { ($0.key, $0.value.value) })
        case .array(let items): .array(items.map(\.value))
        case .string(let s): .string(s)
        case .number(let text): Int64(text).map(JSONValue.number) ?? .numberText(text)
        case .bool(let b): .bool(b)
        case .null: .null
        }
    }
}

public enum JSONParser {
    /// Parses a whole document (one value, surrounded by whitespace only).
    public static func parse(_ text: String) throws(JSONSyntaxError) -> JSONSpan {
        try parse(Array(text.utf8))
    }

    public static func parse(_ bytes: [UInt8]) throws(JSONSyntaxError) -> JSONSpan {
        var reader = Reader(bytes: bytes)
        reader.skipWhitespace()
        let value = try reader.value(depth: 0)
        reader.skipWhitespace()
        guard reader.offset == bytes.count else { throw reader.error("unexpected data after the value") }
        return value
    }

    struct Reader {
        let bytes: [UInt8]
        var offset = 0
        static let maxDepth = 128

        func error(_ reason: String) -> JSONSyntaxError { JSONSyntaxError(offset: offset, reason: reason) }

        var current: UInt8? { offset < bytes.count ? bytes[offset] : nil }

        mutating func skipWhitespace() {
            while let b = current, b == 0x20 || b == 0x0a || b == 0x0d || b == 0x09 { offset += 1 }
        }

        mutating func expect(_ byte: UInt8) throws(JSONSyntaxError) {
            guard current == byte else { throw error("expected '\(Character(Unicode.Scalar(byte)))'") }
            offset += 1
        }

        mutating func value(depth: Int) throws(JSONSyntaxError) -> JSONSpan {
            guard depth < Self.maxDepth else { throw error("nested deeper than \(Self.maxDepth)") }
            let start = offset
            guard let b = current else { throw error("unexpected end of input") }
            switch b {
            case UInt8(ascii: "{"):
                offset += 1
                var members: [(key: String, value: JSONSpan)] = []
                skipWhitespace()
                if current == UInt8(ascii: "}") {
                    offset += 1
                } else {
                    while true {
                        skipWhitespace()
                        guard current == UInt8(ascii: "\"") else { throw error("expected a member name") }
                        let key = try string()
                        skipWhitespace()
                        try expect(UInt8(ascii: ":"))
                        skipWhitespace()
                        members.append((key, try value(depth: depth + 1)))
                        skipWhitespace()
                        if current == UInt8(ascii: ",") {
                            offset += 1
                            continue
                        }
                        try expect(UInt8(ascii: "}"))
                        break
                    }
                }
                return JSONSpan(kind: .object(members), range: start..<offset)
            case UInt8(ascii: "["):
                offset += 1
                var items: [JSONSpan] = []
                skipWhitespace()
                if current == UInt8(ascii: "]") {
                    offset += 1
                } else {
                    while true {
                        skipWhitespace()
                        items.append(try value(depth: depth + 1))
                        skipWhitespace()
                        if current == UInt8(ascii: ",") {
                            offset += 1
                            continue
                        }
                        try expect(UInt8(ascii: "]"))
                        break
                    }
                }
                return JSONSpan(kind: .array(items), range: start..<offset)
            case UInt8(ascii: "\""):
                let s = try string()
                return JSONSpan(kind: .string(s), range: start..<offset)
            case UInt8(ascii: "t"):
                try literal("true")
                return JSONSpan(kind: .bool(true), range: start..<offset)
            case UInt8(ascii: "f"):
                try literal("false")
                return JSONSpan(kind: .bool(false), range: start..<offset)
            case UInt8(ascii: "n"):
                try literal("null")
                return JSONSpan(kind: .null, range: start..<offset)
            default:
                return JSONSpan(kind: .number(try number()), range: start..<offset)
            }
        }

        mutating func literal(_ word: String) throws(JSONSyntaxError) {
            for byte in word.utf8 {
                guard current == byte else { throw error("expected \(word)") }
                offset += 1
            }
        }

        /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
        mutating func number() throws(JSONSyntaxError) -> String {
            let start = offset
            func digits(_ reader: inout Reader) -> Int {
                var n = 0
                while let b = reader.current, b >= 0x30, b <= 0x39 {
                    reader.offset += 1
                    n += 1
                }
                return n
            }
            if current == UInt8(ascii: "-") { offset += 1 }
            if current == UInt8(ascii: "0") {
                offset += 1
            } else {
                guard digits(&self) > 0 else { throw error("expected a value") }
            }
            if current == UInt8(ascii: ".") {
                offset += 1
                guard digits(&self) > 0 else { throw error("expected digits after '.'") }
            }
            if current == UInt8(ascii: "e") || current == UInt8(ascii: "E") {
                offset += 1
                if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") { offset += 1 }
                guard digits(&self) > 0 else { throw error("expected an exponent") }
            }
            return String(decoding: bytes[start..<offset], as: UTF8.self)
        }

        mutating func string() throws(JSONSyntaxError) -> String {
            try expect(UInt8(ascii: "\""))
            var out: [UInt8] = []
            while true {
                guard let b = current else { throw error("unterminated string") }
                offset += 1
                switch b {
                case UInt8(ascii: "\""):
                    // The input is UTF-8 (a String's bytes, or checked by the caller).
                    return String(decoding: out, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    guard let e = current else { throw error("unterminated escape") }
                    offset += 1
                    switch e {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0c)
                    case UInt8(ascii: "n"): out.append(0x0a)
                    case UInt8(ascii: "r"): out.append(0x0d)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        var scalar = try hex4()
                        if scalar >= 0xd800 && scalar < 0xdc00 {
                            // A surrogate pair: \uD83D\uDE00.
                            guard current == UInt8(ascii: "\\"), offset + 1 < bytes.count,
                                bytes[offset + 1] == UInt8(ascii: "u")
                            else { throw error("lone surrogate") }
                            offset += 2
                            let low = try hex4()
                            guard low >= 0xdc00 && low < 0xe000 else { throw error("bad surrogate pair") }
                            scalar = 0x10000 + ((scalar - 0xd800) << 10) + (low - 0xdc00)
                        } else if scalar >= 0xdc00 && scalar < 0xe000 {
                            throw error("lone surrogate")
                        }
                        guard let unicode = Unicode.Scalar(scalar) else { throw error("bad \\u escape") }
                        out.append(contentsOf: Array(String(Character(unicode)).utf8))
                    default: throw error("bad escape")
                    }
                default:
                    guard b >= 0x20 else { throw error("control character in a string") }
                    out.append(b)
                }
            }
        }

        mutating func hex4() throws(JSONSyntaxError) -> UInt32 {
            var value: UInt32 = 0
            for _ in 0..<4 {
                guard let b = current else { throw error("short \\u escape") }
                let digit: UInt32
                switch b {
                case 0x30...0x39: digit = UInt32(b - 0x30)
                case 0x41...0x46: digit = UInt32(b - 0x41 + 10)
                case 0x61...0x66: digit = UInt32(b - 0x61 + 10)
                default: throw error("bad \\u escape")
                }
                value = value << 4 | digit
                offset += 1
            }
            return value
        }
    }
}
