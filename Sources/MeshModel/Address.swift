/// An IP address family. Rules are planned once and rendered per family; there are no
/// twin v4/v6 code paths.
public enum Family: String, Sendable, Hashable, CaseIterable, Codable {
    case ipv4
    case ipv6

    /// The nft payload keyword for this family (`ip` / `ip6`).
    public var nftKeyword: String { self == .ipv4 ? "ip" : "ip6" }
}

/// A set of address families (which iptables families receive a rule).
public struct FamilySet: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let ipv4 = FamilySet(rawValue: 1)
    public static let ipv6 = FamilySet(rawValue: 2)
    public static let both: FamilySet = [.ipv4, .ipv6]

    public init(_ family: Family) { self = family == .ipv4 ? .ipv4 : .ipv6 }
    public func contains(_ family: Family) -> Bool { contains(FamilySet(family)) }
    public var families: [Family] { Family.allCases.filter { contains($0) } }
}

/// An IPv4 or IPv6 address, stored as its 128-bit value (IPv4 in the low 32 bits).
public struct IPAddress: Sendable, Hashable, CustomStringConvertible {
    public let family: Family
    /// High and low 64 bits (IPv4: `high == 0`, value in the low 32 bits of `low`).
    public let high: UInt64
    public let low: UInt64

    public init(ipv4 value: UInt32) {
        family = .ipv4
        high = 0
        low = UInt64(value)
    }

    public init(ipv6 high: UInt64, _ low: UInt64) {
        family = .ipv6
        self.high = high
        self.low = low
    }

    /// Address length in bits (32 or 128).
    public var bitWidth: Int { family == .ipv4 ? 32 : 128 }

    /// Network-order bytes (4 or 16).
    public var bytes: [UInt8] {
        if family == .ipv4 {
            let v = UInt32(truncatingIfNeeded: low)
            return [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)]
        }
        var out: [UInt8] = []
        out.reserveCapacity(16)
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(high >> UInt64(shift) & 0xff)) }
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(low >> UInt64(shift) & 0xff)) }
        return out
    }

    /// True for 127.0.0.0/8 and ::1.
    public var isLoopback: Bool {
        family == .ipv4 ? (low >> 24) == 127 : (high == 0 && low == 1)
    }

    /// Parses dotted-quad IPv4 or RFC 4291 IPv6 text (no zone, no brackets). Strict:
    /// IPv4 needs exactly four decimal octets without leading zeros.
    public init?(_ text: Substring) {
        if text.utf8.contains(UInt8(ascii: ":")) {
            guard let v = Self.parseIPv6(text) else { return nil }
            self.init(ipv6: v.0, v.1)
        } else {
            guard let v = Self.parseIPv4(text) else { return nil }
            self.init(ipv4: v)
        }
    }

    public init?(_ text: String) { self.init(text[...]) }

    static func parseIPv4(_ text: Substring) -> UInt32? {
        var text = text
        return text.withUTF8 { parseDottedQuad($0) }
    }

    /// Four decimal octets without leading zeros, from bytes (no Characters, no substrings:
    /// lists of thousands of CIDRs are parsed at start-up).
    static func parseDottedQuad(_ bytes: UnsafeBufferPointer<UInt8>) -> UInt32? {
        var value: UInt32 = 0
        var octet: UInt32 = 0
        var digits = 0
        var dots = 0
        for b in bytes {
            if b == UInt8(ascii: ".") {
                guard digits > 0, dots < 3 else { return nil }
                value = value << 8 | octet
                (octet, digits) = (0, 0)
                dots += 1
            } else if b >= 0x30 && b <= 0x39 {
                guard digits < 3, !(digits == 1 && octet == 0) else { return nil }
                octet = octet * 10 + UInt32(b - 0x30)
                digits += 1
                guard octet <= 255 else { return nil }
            } else {
                return nil
            }
        }
        guard dots == 3, digits > 0 else { return nil }
        return value << 8 | octet
    }

    static func parseIPv6(_ text: Substring) -> (UInt64, UInt64)? {
        var text = text
        return text.withUTF8 { parseIPv6($0) }
    }

    /// RFC 4291 text from bytes: up to eight groups of 1-4 hex digits, at most one `::`, an
    /// optional dotted-quad tail standing for the last two groups.
    static func parseIPv6(_ b: UnsafeBufferPointer<UInt8>) -> (UInt64, UInt64)? {
        var head: [UInt16] = []
        var tail: [UInt16] = []
        var gap = false
        let n = b.count
        var i = 0
        guard n >= 2 else { return nil }
        if b[0] == UInt8(ascii: ":") {
            guard b[1] == UInt8(ascii: ":") else { return nil }
            gap = true
            i = 2
        }
        while i < n {
            let start = i
            var value: UInt16 = 0
            var digits = 0
            while i < n, let h = hexValue(b[i]) {
                digits += 1
                guard digits <= 4 else { break }
                value = value << 4 | h
                i += 1
            }
            if i < n, b[i] == UInt8(ascii: ".") {
                // A dotted-quad tail: the rest of the text.
                guard let v4 = parseDottedQuad(UnsafeBufferPointer(rebasing: b[start..<n])) else { return nil }
                let groups = [UInt16(v4 >> 16), UInt16(v4 & 0xffff)]
                if gap { tail += groups } else { head += groups }
                i = n
                break
            }
            guard digits > 0, digits <= 4 else { return nil }
            if gap { tail.append(value) } else { head.append(value) }
            if i == n { break }
            guard b[i] == UInt8(ascii: ":"), i + 1 < n else { return nil }
            i += 1
            if b[i] == UInt8(ascii: ":") {
                guard !gap else { return nil }
                gap = true
                i += 1
            }
        }
        let count = head.count + tail.count
        guard gap ? count <= 7 : count == 8 else { return nil }
        let all = head + [UInt16](repeating: 0, count: 8 - count) + tail
        var high: UInt64 = 0
        var low: UInt64 = 0
        for g in all[0..<4] { high = high << 16 | UInt64(g) }
        for g in all[4..<8] { low = low << 16 | UInt64(g) }
        return (high, low)
    }

    static func hexValue(_ b: UInt8) -> UInt16? {
        switch b {
        case 0x30...0x39: UInt16(b - 0x30)
        case 0x41...0x46: UInt16(b - 0x41 + 10)
        case 0x61...0x66: UInt16(b - 0x61 + 10)
        default: nil
        }
    }

    /// Writes `a.b.c.d` (and `/n` when given) as ASCII into `buffer`, returning the count
    /// (at most 18). The hot path of rendering long lists: no intermediate strings.
    static func writeDottedQuad(_ v: UInt32, prefix: Int?, into buffer: UnsafeMutableBufferPointer<UInt8>) -> Int {
        var n = 0
        func put(_ b: UInt8) {
            buffer[n] = b
            n += 1
        }
        for shift in [24, 16, 8, 0] as [UInt32] {
            let octet = UInt8(truncatingIfNeeded: v >> shift)
            if octet >= 100 { put(0x30 + octet / 100) }
            if octet >= 10 { put(0x30 + octet / 10 % 10) }
            put(0x30 + octet % 10)
            if shift != 0 { put(UInt8(ascii: ".")) }
        }
        if let prefix {
            put(UInt8(ascii: "/"))
            if prefix >= 10 { put(0x30 + UInt8(prefix / 10)) }
            put(0x30 + UInt8(prefix % 10))
        }
        return n
    }

    /// Canonical text: dotted quad, or RFC 5952 IPv6 (lower case, longest zero run as `::`).
    public var description: String {
        if family == .ipv4 {
            return String(unsafeUninitializedCapacity: 15) {
                Self.writeDottedQuad(UInt32(truncatingIfNeeded: low), prefix: nil, into: $0)
            }
        }
        if high == 0, low >> 32 == 0xffff {
            // IPv4-mapped: mixed notation (RFC 5952 section 5), as Go's netip prints it.
            return "::ffff:" + IPAddress(ipv4: UInt32(truncatingIfNeeded: low)).description
        }
        var groups: [UInt16] = []
        for shift in stride(from: 48, through: 0, by: -16) { groups.append(UInt16(high >> UInt64(shift) & 0xffff)) }
        for shift in stride(from: 48, through: 0, by: -16) { groups.append(UInt16(low >> UInt64(shift) & 0xffff)) }
        var bestStart = -1
        var bestLen = 0
        var i = 0
        while i < 8 {
            if groups[i] == 0 {
                var j = i
                while j < 8 && groups[j] == 0 { j += 1 }
                if j - i > bestLen {
                    bestStart = i
                    bestLen = j - i
                }
                i = j
            } else {
                i += 1
            }
        }
        func hex(_ range: Range<Int>) -> String {
            groups[range].map { String($0, radix: 16) }.joined(separator: ":")
        }
        if bestLen < 2 { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLen)..<8)
    }
}

/// An address prefix such as `10.0.0.0/8` or `2001:db8::/32`. The address is kept as
/// written (Istio writes `127.0.0.1/8`); `network` gives the masked form.
public struct CIDR: Sendable, Hashable, CustomStringConvertible {
    public let address: IPAddress
    public let prefixLength: Int

    public init?(address: IPAddress, prefixLength: Int) {
        guard prefixLength >= 0, prefixLength <= address.bitWidth else { return nil }
        self.address = address
        self.prefixLength = prefixLength
    }

    /// Parses `ADDR/LEN` strictly (Go's `netip.ParsePrefix` rules: the length is required,
    /// decimal, without leading zeros, and at most the address width).
    public init?(_ text: Substring) {
        guard let slash = text.utf8.firstIndex(of: UInt8(ascii: "/")),
            let address = IPAddress(text[..<slash]),
            let length = parseDecimal(text[text.utf8.index(after: slash)...], maxDigits: 3)
        else { return nil }
        self.init(address: address, prefixLength: length)
    }

    public init?(_ text: String) { self.init(text[...]) }

    /// Appends the canonical text to `bytes` (IPv4 without an intermediate string).
    public func append(to bytes: inout [UInt8]) {
        guard address.family == .ipv4 else {
            bytes.append(contentsOf: description.utf8)
            return
        }
        var scratch: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes ≥ 18
        withUnsafeMutableBytes(of: &scratch) { raw in
            let buffer = raw.bindMemory(to: UInt8.self)
            let n = IPAddress.writeDottedQuad(
                UInt32(truncatingIfNeeded: address.low), prefix: prefixLength, into: buffer)
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[0..<n]))
        }
    }

    /// `a, b, c` (any separator) in one buffer: for sets of thousands of prefixes.
    public static func joined(_ list: [CIDR], separator: String) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(list.count * (19 + separator.utf8.count))
        for (i, cidr) in list.enumerated() {
            if i > 0 { bytes.append(contentsOf: separator.utf8) }
            cidr.append(to: &bytes)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Parses a comma-separated list (empty items dropped, as Istio does) in one pass over
    /// the bytes; IPv4 items without building substrings. Returns the first bad item instead
    /// when there is one.
    public static func parseList(_ text: String) -> Result<[CIDR], BadItem> {
        var out: [CIDR] = []
        var bad: String?
        var copy = text
        copy.withUTF8 { buffer in
            var start = 0
            var index = 0
            func item(_ range: Range<Int>) -> Bool {
                guard !range.isEmpty else { return true }
                let slice = UnsafeBufferPointer(rebasing: buffer[range])
                if let cidr = parseIPv4CIDR(slice) ?? CIDR(String(decoding: slice, as: UTF8.self)) {
                    out.append(cidr)
                    return true
                }
                bad = String(decoding: slice, as: UTF8.self)
                return false
            }
            while index < buffer.count {
                if buffer[index] == UInt8(ascii: ",") {
                    guard item(start..<index) else { return }
                    start = index + 1
                }
                index += 1
            }
            _ = item(start..<buffer.count)
        }
        if let bad { return .failure(BadItem(text: bad)) }
        return .success(out)
    }

    /// An item of a list that is not a CIDR.
    public struct BadItem: Error, Sendable, Hashable {
        public var text: String
    }

    /// `a.b.c.d/n` from bytes, or nil (anything else, including IPv6, goes the general way).
    static func parseIPv4CIDR(_ bytes: UnsafeBufferPointer<UInt8>) -> CIDR? {
        guard let slash = bytes.firstIndex(of: UInt8(ascii: "/")), slash + 1 < bytes.count,
            bytes.count - slash - 1 <= 2,
            let address = IPAddress.parseDottedQuad(UnsafeBufferPointer(rebasing: bytes[..<slash]))
        else { return nil }
        var length = 0
        for i in (slash + 1)..<bytes.count {
            let b = bytes[i]
            guard b >= 0x30 && b <= 0x39, !(i == slash + 1 && b == 0x30 && bytes.count - slash - 1 > 1) else {
                return nil
            }
            length = length * 10 + Int(b - 0x30)
        }
        return CIDR(address: IPAddress(ipv4: address), prefixLength: length)
    }

    /// A single-host prefix (`/32` or `/128`).
    public init(host address: IPAddress) {
        self.address = address
        self.prefixLength = address.bitWidth
    }

    public var family: Family { address.family }
    public var description: String {
        guard address.family == .ipv4 else { return "\(address)/\(prefixLength)" }
        return String(unsafeUninitializedCapacity: 18) {
            IPAddress.writeDottedQuad(UInt32(truncatingIfNeeded: address.low), prefix: prefixLength, into: $0)
        }
    }

    /// The prefix with host bits cleared (what the kernel stores).
    public var network: IPAddress {
        if address.family == .ipv4 {
            let mask: UInt64 = prefixLength == 0 ? 0 : (0xffff_ffff << UInt64(32 - prefixLength)) & 0xffff_ffff
            return IPAddress(ipv4: UInt32(address.low & mask))
        }
        func mask(_ n: Int) -> UInt64 { n <= 0 ? 0 : n >= 64 ? ~0 : ~0 << UInt64(64 - n) }
        return IPAddress(ipv6: address.high & mask(prefixLength), address.low & mask(prefixLength - 64))
    }

    /// Whether `address` lies in this prefix (an address of the other family never does).
    public func contains(_ other: IPAddress) -> Bool {
        guard other.family == family else { return false }
        guard let host = CIDR(address: other, prefixLength: prefixLength) else { return false }
        return host.network == network
    }

    /// The netmask bytes (4 or 16), network order.
    public var maskBytes: [UInt8] {
        (0..<(address.bitWidth / 8)).map { i in
            let remaining = prefixLength - i * 8
            if remaining >= 8 { return 0xff }
            if remaining <= 0 { return 0 }
            return UInt8(0xff << (8 - remaining) & 0xff)
        }
    }
}
