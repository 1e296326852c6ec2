/// A TCP/UDP port, 1...65535 (0 is never a valid capture or match port).
public struct Port: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let value: UInt16

    public init?(_ value: Int) {
        guard value >= 1, value <= 65535 else { return nil }
        self.value = UInt16(value)
    }

    /// Strict decimal parse: digits only, no sign, no leading zeros.
    public init?(parsing text: Substring) {
        guard let n = parseDecimal(text, maxDigits: 5) else { return nil }
        self.init(n)
    }

    public init?(parsing text: String) { self.init(parsing: text[...]) }

    public var description: String { String(value) }
    public static func < (a: Port, b: Port) -> Bool { a.value < b.value }
}

/// A single port or an inclusive range `first-last` (first < last).
public struct PortRange: Sendable, Hashable, CustomStringConvertible {
    public let first: Port
    public let last: Port

    public init(_ port: Port) {
        first = port
        last = port
    }

    public init?(first: Port, last: Port) {
        guard first <= last else { return nil }
        self.first = first
        self.last = last
    }

    /// Parses `P` or `A-B` with A < B.
    public init?(parsing text: Substring) {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        if parts.count == 1, let p = Port(parsing: parts[0]) {
            self.init(p)
        } else if parts.count == 2, let a = Port(parsing: parts[0]), let b = Port(parsing: parts[1]), a < b {
            self.init(first: a, last: b)
        } else {
            return nil
        }
    }

    public init?(parsing text: String) { self.init(parsing: text[...]) }

    public var isSingle: Bool { first == last }
    /// `80` or `8000-8010` (nft and meshinit's own spelling).
    public var description: String { isSingle ? "\(first)" : "\(first)-\(last)" }
    /// `80` or `8000:8010` (iptables spelling).
    public var iptablesText: String { isSingle ? "\(first)" : "\(first):\(last)" }
}

/// A numeric user or group id (0 ... 2^32-2; 2^32-1 is "no id" to the kernel).
public struct NumericID: Sendable, Hashable, CustomStringConvertible {
    public let value: UInt32
    public init?(_ value: UInt64) {
        guard value < UInt64(UInt32.max) else { return nil }
        self.value = UInt32(value)
    }
    public init?(parsing text: Substring) {
        guard let n = parseDecimal(text, maxDigits: 10) else { return nil }
        self.init(UInt64(n))
    }
    public init?(parsing text: String) { self.init(parsing: text[...]) }
    public var description: String { String(value) }
}

/// A packet mark / conntrack mark value.
public struct Mark: Sendable, Hashable, CustomStringConvertible {
    public let value: UInt32
    public init(_ value: UInt32) { self.value = value }
    public init?(parsing text: Substring) {
        guard let n = parseDecimal(text, maxDigits: 10), n <= Int(UInt32.max) else { return nil }
        value = UInt32(n)
    }
    public init?(parsing text: String) { self.init(parsing: text[...]) }
    public var description: String { String(value) }
}

/// A network interface name as the kernel accepts it (`dev_valid_name`) and no more:
/// 1...15 bytes, not `.`/`..`, only letters, digits and `_ . - @`, an optional trailing `+`
/// (a prefix wildcard on both backends: iptables `eth+`, nft `"eth*"`), not starting with
/// `-`. `+` alone is refused: iptables reads it as "every interface", nft as a name, so the
/// two backends would disagree on what it means (and "never capture on any interface" is no
/// exclusion anyone means). Whitespace, quotes, `!`, `/` and `:` are refused, so a name can
/// never become another token of a rule.
public struct InterfaceName: Sendable, Hashable, CustomStringConvertible {
    public let name: String

    public init?(_ text: Substring) {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count <= 15, text != ".", text != "..", text != "+", bytes[0] != UInt8(ascii: "-")
        else { return nil }
        for (i, b) in bytes.enumerated() {
            let ok =
                (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
                || b == UInt8(ascii: "_") || b == UInt8(ascii: ".") || b == UInt8(ascii: "-")
                || b == UInt8(ascii: "@") || (b == UInt8(ascii: "+") && i == bytes.count - 1)
            guard ok else { return nil }
        }
        name = String(text)
    }

    public init?(_ text: String) { self.init(text[...]) }

    public static let loopback = InterfaceName("lo")!
    public var description: String { name }
}

/// Layer-4 protocols the rules name.
public enum L4Protocol: String, Sendable, Hashable, CaseIterable {
    case tcp
    case udp
}

/// Conntrack states used by the rules.
public enum ConntrackState: String, Sendable, Hashable, CaseIterable {
    case invalid
    case established
    case related
}

/// Parses a non-negative decimal without sign or leading zeros ("0" itself is allowed).
public func parseDecimal(_ text: String, maxDigits: Int) -> Int? { parseDecimal(text[...], maxDigits: maxDigits) }

/// Parses a non-negative decimal without sign or leading zeros ("0" itself is allowed).
public func parseDecimal(_ text: Substring, maxDigits: Int) -> Int? {
    // On UTF-8 bytes: Character-level checks cost Unicode lookups on the start-up path.
    let bytes = text.utf8
    guard !bytes.isEmpty, bytes.count <= maxDigits, bytes.count == 1 || bytes.first != UInt8(ascii: "0")
    else { return nil }
    var value = 0
    for b in bytes {
        guard b >= 0x30 && b <= 0x39 else { return nil }
        value = value * 10 + Int(b - 0x30)
    }
    return value
}
