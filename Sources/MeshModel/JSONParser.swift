/// A strict RFC 8259 JSON parser over UTF-8 bytes (no Foundation: it runs on the CNI plugin's
/// start-up path). It keeps object members in order, integers exact and other numbers as
/// their text, and where every value sits in the input, so a document can be edited in place
/// (`JSONSpan`) with every other byte kept.
///
/// By default it refuses what would make a configuration ambiguous: invalid UTF-8 (which a
/// lenient decoder turns into U+FFFD, so the value read is not the value written), a key
/// repeated in one object (one reader takes the first, another the last), nesting deeper than
/// `maxDepth`, and input longer than `maxBytes`. An editor that must keep a foreign file's
/// bytes as they are can accept invalid UTF-8 (`Options.keepingInvalidUTF8`): the decoded
/// strings then hold U+FFFD, but the spans still point at the original bytes.
public struct JSONSyntaxError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// Not JSON grammar (or an unexpected end).
        case syntax
        /// Bytes that are not UTF-8 inside a string.
        case invalidUTF8
        /// An object holds `key` twice.
        case duplicateKey(String)
        /// Nested deeper than the limit.
        case tooDeep
        /// Longer than the limit.
        case tooLarge
    }

    /// Byte offset of the problem.
    public var offset: Int
    public var reason: String
    public var kind: Kind

    public init(offset: Int, reason: String, kind: Kind = .syntax) {
        self.offset = offset
        self.reason = reason
        self.kind = kind
    }

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

    /// The member `key` of an object (the last one, if repeated: only a document parsed with
    /// `allowDuplicateKeys` can repeat one).
    public subscript(key: String) -> JSONSpan? {
        guard case .object(let members) = kind else { return nil }
        return members.last { $0.key == key }?.value
    }

    /// How many members of an object are named `key`.
    public func count(of key: String) -> Int {
        guard case .object(let members) = kind else { return 0 }
        return members.reduce(0) { $0 + ($1.key == key ? 1 : 0) }
    }

    public var string: String? {
        if case .string(let s) = kind { return s }
        return nil
    }

    public var isNull: Bool {
        if case .null = kind { return true }
        return false
    }

    /// The JSON type's name, for messages ("an object", "a string", …).
    public var typeName: String {
        switch kind {
        case .object: "an object"
        case .array: "an array"
        case .string: "a string"
        case .number: "a number"
        case .bool: "a boolean"
        case .null: "null"
        }
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
    /// What the parser accepts.
    public struct Options: Sendable, Hashable {
        /// Arrays and objects nested deeper than this are refused.
        public var maxDepth: Int
        /// Longer input is refused before it is read.
        public var maxBytes: Int
        /// Invalid UTF-8 in strings: refused (false), or decoded as U+FFFD with the bytes kept.
        public var allowInvalidUTF8: Bool
        /// A key repeated in one object: refused (false), or kept (`subscript` gives the last).
        public var allowDuplicateKeys: Bool

        public init(
            maxDepth: Int = 64, maxBytes: Int = 16 << 20, allowInvalidUTF8: Bool = false,
            allowDuplicateKeys: Bool = false
        ) {
            self.maxDepth = maxDepth
            self.maxBytes = maxBytes
            self.allowInvalidUTF8 = allowInvalidUTF8
            self.allowDuplicateKeys = allowDuplicateKeys
        }

        /// Configuration: refuses everything ambiguous.
        public static let strict = Options()
        /// Another program's file that is edited in place: its bytes are kept as they are,
        /// whatever they hold inside strings.
        public static let keepingInvalidUTF8 = Options(allowInvalidUTF8: true)
        /// Reading what is needed from input that need not be valid (a teardown that must not
        /// fail on a key it does not use).
        public static let lenient = Options(allowInvalidUTF8: true, allowDuplicateKeys: true)
    }

    /// Parses a whole document (one value, surrounded by whitespace only).
    public static func parse(_ text: String, options: Options = .strict) throws(JSONSyntaxError) -> JSONSpan {
        try parse(Array(text.utf8), options: options)
    }

    public static func parse(_ bytes: [UInt8], options: Options = .strict) throws(JSONSyntaxError) -> JSONSpan {
        guard bytes.count <= options.maxBytes else {
            throw JSONSyntaxError(
                offset: options.maxBytes, reason: "longer than \(options.maxBytes) bytes", kind: .tooLarge)
        }
        var reader = Reader(bytes: bytes, options: options)
        reader.skipWhitespace()
        let value = try reader.value(depth: 0)
        reader.skipWhitespace()
        guard reader.offset == bytes.count else { throw reader.error("unexpected data after the value") }
        return value
    }

    struct Reader {
        let bytes: [UInt8]
        let options: Options
        var offset = 0

        init(bytes: [UInt8], options: Options) {
            self.bytes = bytes
            self.options = options
        }

        func error(_ reason: String, _ kind: JSONSyntaxError.Kind = .syntax) -> JSONSyntaxError {
            JSONSyntaxError(offset: offset, reason: reason, kind: kind)
        }

        var current: UInt8? { offset < bytes.count ? bytes[offset] : nil }

        mutating func skipWhitespace() {
            while let b = current, b == 0x20 || b == 0x0a || b == 0x0d || b == 0x09 { offset += 1 }
        }

        mutating func expect(_ byte: UInt8) throws(JSONSyntaxError) {
            guard current == byte else { throw error("expected '\(Character(Unicode.Scalar(byte)))'") }
            offset += 1
        }

        mutating func value(depth: Int) throws(JSONSyntaxError) -> JSONSpan {
            let start = offset
            guard let b = current else { throw error("unexpected end of input") }
            switch b {
            case UInt8(ascii: "{"):
                guard depth < options.maxDepth else { throw error("nested deeper than \(options.maxDepth)", .tooDeep) }
                offset += 1
                var members: [(key: String, value: JSONSpan)] = []
                // Duplicates: a linear scan for small objects, a set once they grow (a hostile
                // object with many keys stays linear).
                var seen: Set<String> = []
                skipWhitespace()
                if current == UInt8(ascii: "}") {
                    offset += 1
                } else {
                    while true {
                        skipWhitespace()
                        guard current == UInt8(ascii: "\"") else { throw error("expected a member name") }
                        let keyOffset = offset
                        let key = try string()
                        if !options.allowDuplicateKeys {
                            let repeated: Bool
                            if members.count < 16 {
                                repeated = members.contains { $0.key == key }
                            } else {
                                if seen.isEmpty { seen = Set(members.map(\.key)) }
                                repeated = !seen.insert(key).inserted
                            }
                            if repeated {
                                throw JSONSyntaxError(
                                    offset: keyOffset, reason: "duplicate key \(quoted(String(key.prefix(64))))",
                                    kind: .duplicateKey(key))
                            }
                        }
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
                guard depth < options.maxDepth else { throw error("nested deeper than \(options.maxDepth)", .tooDeep) }
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
                switch b {
                case UInt8(ascii: "\""):
                    offset += 1
                    // Valid UTF-8 unless invalid bytes were allowed (then they become U+FFFD).
                    return String(decoding: out, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    offset += 1
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
                case 0..<0x20:
                    throw error("control character in a string")
                case 0x20..<0x80:
                    offset += 1
                    out.append(b)
                default:
                    let length = Self.utf8SequenceLength(bytes, at: offset)
                    if length == 0 {
                        guard options.allowInvalidUTF8 else { throw error("invalid UTF-8 in a string", .invalidUTF8) }
                        out.append(b)
                        offset += 1
                    } else {
                        out.append(contentsOf: bytes[offset..<offset + length])
                        offset += length
                    }
                }
            }
        }

        /// The length of the well-formed UTF-8 sequence at `i` (Unicode table 3-7: no
        /// overlong forms, no surrogates, nothing above U+10FFFF), or 0.
        static func utf8SequenceLength(_ bytes: [UInt8], at i: Int) -> Int {
            let b0 = bytes[i]
            func continuation(_ k: Int, _ range: ClosedRange<UInt8> = 0x80...0xbf) -> Bool {
                i + k < bytes.count && range.contains(bytes[i + k])
            }
            switch b0 {
            case 0xc2...0xdf:
                return continuation(1) ? 2 : 0
            case 0xe0:
                return continuation(1, 0xa0...0xbf) && continuation(2) ? 3 : 0
            case 0xe1...0xec, 0xee...0xef:
                return continuation(1) && continuation(2) ? 3 : 0
            case 0xed:
                return continuation(1, 0x80...0x9f) && continuation(2) ? 3 : 0
            case 0xf0:
                return continuation(1, 0x90...0xbf) && continuation(2) && continuation(3) ? 4 : 0
            case 0xf1...0xf3:
                return continuation(1) && continuation(2) && continuation(3) ? 4 : 0
            case 0xf4:
                return continuation(1, 0x80...0x8f) && continuation(2) && continuation(3) ? 4 : 0
            default:
                return 0
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
