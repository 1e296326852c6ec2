import MeshModel
import Testing

/// The JSON parser every configuration goes through (CNI stdin, `cni install --config`, the
/// node's `.conflist`, `explain --cni-config`).
@Suite("JSON parser")
struct JSONParserTests {
    static func parse(_ text: String, _ options: JSONParser.Options = .strict) throws(JSONSyntaxError) -> JSONSpan {
        try JSONParser.parse(text, options: options)
    }

    static func kind(_ bytes: [UInt8], _ options: JSONParser.Options = .strict) -> JSONSyntaxError.Kind? {
        do {
            _ = try JSONParser.parse(bytes, options: options)
            return nil
        } catch {
            return error.kind
        }
    }

    @Test("values, member order, numbers as written, spans")
    func values() throws {
        let text = #" {"b": [1, -0.5e+3, true, false, null], "a": {"x": "y"}, "n": 12345678901234567890} "#
        let doc = try Self.parse(text)
        guard case .object(let members) = doc.kind else {
            Issue.record("not an object")
            return
        }
        #expect(members.map(\.key) == ["b", "a", "n"])
        #expect(doc.range == 1..<(text.utf8.count - 1))
        guard case .array(let items)? = doc["b"]?.kind else {
            Issue.record("b is not an array")
            return
        }
        #expect(items.count == 5)
        if case .number(let n) = items[1].kind { #expect(n == "-0.5e+3") } else { Issue.record("not a number") }
        #expect(doc["a"]?["x"]?.string == "y")
        // A span is the value's exact bytes.
        let bytes = Array(text.utf8)
        let a = try #require(doc["a"])
        #expect(String(decoding: bytes[a.range], as: UTF8.self) == #"{"x": "y"}"#)
        // Beyond Int64: kept as text.
        #expect(doc["n"]?.value.serialized == "12345678901234567890")
    }

    @Test("escapes and surrogate pairs decode; the serializer escapes back")
    func escapes() throws {
        let doc = try Self.parse(#""a\"b\\c\/d\b\f\n\r\t\u0041\u00e9\ud83d\ude00""#)
        #expect(doc.string == "a\"b\\c/d\u{8}\u{c}\n\r\tAé😀")
        #expect(try Self.parse(JSONValue.string(doc.string!).serialized).string == doc.string)
    }

    @Test(
        "not JSON: refused with the offset",
        arguments: [
            "", " ", "{", "}", "[1,]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "'a'", "01", "1.", ".5", "-", "1e", "+1",
            "NaN", "Infinity", "tru", "nul", "[1 2]", "\"abc", "\"\\x\"", "\"\\u12\"", "\"\\ud800\"",
            "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"a\u{1}b\"", "\"tab\tin\"", "1 2", "{} x", "/* c */ 1",
            "\u{feff}{}",
        ])
    func refused(text: String) {
        #expect(throws: JSONSyntaxError.self, "\(quoted(text))") { try Self.parse(text) }
    }

    /// Every way bytes can fail to be UTF-8 (Unicode table 3-7), inside a string.
    static let invalidUTF8: [[UInt8]] = [
        [0x80], [0xbf], [0xc0, 0xaf], [0xc1, 0xbf], [0xc2], [0xc2, 0x41], [0xe0, 0x80, 0x80], [0xe0, 0x9f, 0xbf],
        [0xed, 0xa0, 0x80], [0xed, 0xbf, 0xbf], [0xe1, 0x80], [0xf0, 0x80, 0x80, 0x80], [0xf0, 0x8f, 0xbf, 0xbf],
        [0xf4, 0x90, 0x80, 0x80], [0xf5, 0x80, 0x80, 0x80], [0xff], [0xfe], [0xf1, 0x80, 0x80],
    ]

    @Test("invalid UTF-8 is refused (never silently U+FFFD); kept byte for byte when allowed")
    func utf8() throws {
        for bad in Self.invalidUTF8 {
            let bytes = Array(#"{"k":"a"#.utf8) + bad + Array(#"b"}"#.utf8)
            #expect(Self.kind(bytes) == .invalidUTF8, "\(bad)")
            // In a key too.
            #expect(Self.kind(Array(#"{"a"#.utf8) + bad + Array(#"":1}"#.utf8)) == .invalidUTF8, "\(bad)")
            // An editor of another program's file may keep it: the span still covers its bytes.
            let doc = try JSONParser.parse(bytes, options: .keepingInvalidUTF8)
            let value = try #require(doc["k"])
            #expect(Array(bytes[value.range]) == Array("\"a".utf8) + bad + Array("b\"".utf8))
        }
        // Valid multi-byte sequences at every boundary of the table pass.
        for good: [UInt8] in [
            [0xc2, 0x80], [0xdf, 0xbf], [0xe0, 0xa0, 0x80], [0xed, 0x9f, 0xbf], [0xee, 0x80, 0x80],
            [0xf0, 0x90, 0x80, 0x80], [0xf4, 0x8f, 0xbf, 0xbf],
        ] {
            let doc = try JSONParser.parse(Array("\"".utf8) + good + Array("\"".utf8))
            #expect(Array(doc.string!.utf8) == good)
        }
        // Outside a string, a non-ASCII byte is no JSON at all.
        #expect(Self.kind([0xc3, 0xa9]) == .syntax)
    }

    @Test("a key given twice is refused (one reader takes the first, another the last), at any depth")
    func duplicates() throws {
        #expect(Self.kind(Array(#"{"a":1,"a":2}"#.utf8)) == .duplicateKey("a"))
        #expect(Self.kind(Array(#"{"x":[{"b":1,"c":2,"b":3}]}"#.utf8)) == .duplicateKey("b"))
        // Equal after decoding: "\u0061" is "a".
        #expect(Self.kind(Array(#"{"a":1,"\u0061":2}"#.utf8)) == .duplicateKey("a"))
        // Many keys (the set path): still found, and a big object stays fast.
        let many = (0..<5000).map { "\"k\($0)\":\($0)" }.joined(separator: ",")
        #expect(Self.kind(Array("{\(many)}".utf8)) == nil)
        #expect(Self.kind(Array("{\(many),\"k4999\":0}".utf8)) == .duplicateKey("k4999"))
        #expect(Self.kind(Array("{\(many),\"k17\":0}".utf8)) == .duplicateKey("k17"))
        // Allowed on request; the subscript then gives the last, `count(of:)` says how many.
        let doc = try Self.parse(#"{"a":1,"a":2}"#, .lenient)
        #expect(doc["a"]?.value.serialized == "2")
        #expect(doc.count(of: "a") == 2)
        // The same key in different objects is fine.
        #expect(Self.kind(Array(#"{"a":{"a":1},"b":{"a":2}}"#.utf8)) == nil)
    }

    @Test("nesting and size are bounded")
    func bounds() throws {
        let limit = JSONParser.Options.strict.maxDepth
        #expect(
            Self.kind(Array((String(repeating: "[", count: limit) + String(repeating: "]", count: limit)).utf8)) == nil)
        let deep = String(repeating: "[", count: limit + 1) + String(repeating: "]", count: limit + 1)
        #expect(Self.kind(Array(deep.utf8)) == .tooDeep)
        let objects = String(repeating: "{\"a\":", count: limit + 1) + "1" + String(repeating: "}", count: limit + 1)
        #expect(Self.kind(Array(objects.utf8)) == .tooDeep)
        // A depth bomb of a million brackets fails fast, without exhausting the stack.
        #expect(Self.kind([UInt8](repeating: UInt8(ascii: "["), count: 1_000_000)) == .tooDeep)
        var small = JSONParser.Options.strict
        small.maxBytes = 10
        #expect(Self.kind(Array("\"0123456789\"".utf8), small) == .tooLarge)
        #expect(Self.kind(Array("\"01234567\"".utf8), small) == nil)
    }

    @Test("the serializer's output parses back to the same value (random strings, control characters included)")
    func roundTrip() throws {
        var generator = SystemRandomNumberGenerator()
        let alphabet: [Unicode.Scalar] = ["a", "\"", "\\", "/", "\n", "\u{0}", "\u{1f}", "\u{7f}", "é", "€", "😀", " "]
        for _ in 0..<300 {
            var s = ""
            for _ in 0..<Int.random(in: 0..<20, using: &generator) {
                s.unicodeScalars.append(alphabet.randomElement(using: &generator)!)
            }
            let value = JSONValue.object([(s, .array([.string(s), .number(-7), .bool(true), .null]))])
            let doc = try JSONParser.parse(value.serialized)
            #expect(doc.value.serialized == value.serialized, "\(quoted(s))")
            guard case .array(let items)? = doc[s]?.kind else {
                Issue.record("round trip lost \(quoted(s))")
                continue
            }
            #expect(items.first?.string == s)
        }
    }
}
