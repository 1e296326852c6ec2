import MeshModel
import Testing

@Suite("IPAddress")
struct IPAddressTests {
    @Test(
        "IPv4 accepted and formatted back",
        arguments: ["0.0.0.0", "10.0.0.1", "127.0.0.53", "255.255.255.255", "192.168.100.200"])
    func ipv4RoundTrip(text: String) throws {
        let address = try #require(IPAddress(text))
        #expect(address.family == .ipv4)
        #expect(address.bitWidth == 32)
        #expect(address.description == text)
    }

    @Test("IPv4 value and bytes")
    func ipv4Value() throws {
        let address = try #require(IPAddress("10.1.2.3"))
        #expect(address.high == 0)
        #expect(address.low == 0x0A01_0203)
        #expect(address.bytes == [10, 1, 2, 3])
        #expect(address == IPAddress(ipv4: 0x0A01_0203))
    }

    @Test(
        "IPv4 strictness: four decimal octets, no leading zeros",
        arguments: [
            "", "1.2.3", "1.2.3.4.5", "256.0.0.1", "1.2.3.256", "010.0.0.1", "1.02.3.4", "00.0.0.0",
            "1..3.4", "1.2.3.", ".1.2.3", "1.2.3.-1", "+1.2.3.4", " 1.2.3.4", "1.2.3.4 ", "a.b.c.d",
            "0x1.2.3.4", "1.2.3.4/32", "1234.1.1.1", "\u{0661}.2.3.4", "1.2.3.4\n",
        ])
    func ipv4Rejected(text: String) {
        #expect(IPAddress(text) == nil)
    }

    @Test(
        "IPv6 forms parse and format per RFC 5952",
        arguments: [
            ("::", "::"),
            ("::1", "::1"),
            ("::6", "::6"),
            ("1::", "1::"),
            ("2001:db8::1", "2001:db8::1"),
            ("2001:0DB8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
            ("2001:DB8::ABCD", "2001:db8::abcd"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
            ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
            ("2001:0:0:1:0:0:0:1", "2001:0:0:1::1"),
            ("1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"),
            ("fe80::1:2", "fe80::1:2"),
            ("::127.0.0.53", "::7f00:35"),
            ("1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304"),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        ])
    func ipv6Forms(text: String, canonical: String) throws {
        let address = try #require(IPAddress(text))
        #expect(address.family == .ipv6)
        #expect(address.bitWidth == 128)
        #expect(address.description == canonical)
        #expect(IPAddress(canonical) == address)
    }

    @Test("IPv6 value and bytes, embedded IPv4")
    func ipv6Value() throws {
        let mapped = try #require(IPAddress("::ffff:1.2.3.4"))
        #expect(mapped.high == 0)
        #expect(mapped.low == 0x0000_FFFF_0102_0304)
        #expect(mapped == IPAddress("::ffff:102:304"))
        let doc = try #require(IPAddress("2001:db8::1"))
        #expect(doc.high == 0x2001_0DB8_0000_0000)
        #expect(doc.low == 1)
        #expect(doc.bytes == [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [1])
        #expect(IPAddress("::1")!.isLoopback)
        #expect(!IPAddress("::2")!.isLoopback)
        #expect(IPAddress("127.255.0.1")!.isLoopback)
        #expect(!IPAddress("128.0.0.1")!.isLoopback)
    }

    /// RFC 5952 section 5: IPv4-mapped addresses are written in mixed notation
    /// (`::ffff:192.0.2.1`), which is also what Go's `netip` (so Istio) prints.
    @Test("IPv4-mapped IPv6 is written in mixed notation (RFC 5952 section 5)")
    func ipv4MappedMixedNotation() throws {
        let mapped = try #require(IPAddress("::ffff:192.0.2.1"))
        #expect(mapped.description == "::ffff:192.0.2.1")
    }

    /// Many addresses with random zero runs: the text re-parses to the same value and follows
    /// RFC 5952 section 4 (lower case, no leading zeros, `::` only for the first longest run of
    /// two or more zero groups).
    @Test("IPv6 format/parse round trip (RFC 5952 section 4)")
    func ipv6RoundTripMany() throws {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return state
        }
        for _ in 0..<5000 {
            let groups: [UInt64] = (0..<8).map { _ in next() % 2 == 0 ? 0 : next() % 0x1_0000 }
            let high = groups[0..<4].reduce(0) { $0 << 16 | $1 }
            let low = groups[4..<8].reduce(0) { $0 << 16 | $1 }
            let address = IPAddress(ipv6: high, low)
            let text = address.description
            #expect(IPAddress(text) == address, "\(text)")
            #expect(text == text.lowercased())
            #expect(text.ranges(of: "::").count <= 1, "\(text)")
            let fields = text.split(separator: ":", omittingEmptySubsequences: true)
            #expect(fields.allSatisfy { $0.count == 1 || $0.first != "0" }, "\(text)")
            // Expected compression: first longest run of >= 2 zero groups.
            var best = (start: -1, length: 0)
            var i = 0
            while i < 8 {
                var j = i
                while j < 8 && groups[j] == 0 { j += 1 }
                if j - i > best.length { best = (i, j - i) }
                i = max(j, i + 1)
            }
            if best.length >= 2 {
                #expect(text.contains("::"), "\(text)")
                #expect(fields.count == 8 - best.length, "\(text)")
            } else {
                #expect(!text.contains("::") && fields.count == 8, "\(text)")
            }
        }
    }

    @Test(
        "IPv6 rejected",
        arguments: [
            ":", ":::", "1::2::3", "1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7:8::", "::1:2:3:4:5:6:7:8",
            "12345::", "g::1", "fe80::1%eth0", "[::1]", "::1/128", "1.2.3.4::", "::1.2.3.04", "::1.2.3",
            "1:2:3:4:5:6:7:1.2.3.4", ":1::", "1::2:", " ::1", "::1 ", "\u{FF11}::1",
        ])
    func ipv6Rejected(text: String) {
        #expect(IPAddress(text) == nil)
    }
}

@Suite("CIDR")
struct CIDRTests {
    @Test(
        "accepted and formatted as written",
        arguments: [
            "10.0.0.0/8", "127.0.0.1/8", "0.0.0.0/0", "1.2.3.4/32", "2001:db8::/32", "::/0", "::1/128",
            "fd00::1/64",
        ])
    func accepted(text: String) throws {
        let cidr = try #require(CIDR(text))
        #expect(cidr.description == text)
    }

    @Test(
        "rejected",
        arguments: [
            "10.0.0.0/33", "300.1.1.1/8", "10.0.0.0", "10.0.0.0/", "/8", "10.0.0.0/08", "10.0.0.0/-1",
            "10.0.0.0/+8", "10.0.0.0/8/8", "10.0.0.0 /8", "10.0.0.0/8 ", "::/129", "2001:db8::/0129", "*", "",
            "10.0.0/8", "10.0.0.0/1000",
        ])
    func rejected(text: String) {
        #expect(CIDR(text) == nil)
    }

    @Test("prefix length bounds per family")
    func prefixBounds() {
        let v4 = IPAddress("10.0.0.0")!
        let v6 = IPAddress("2001:db8::")!
        #expect(CIDR(address: v4, prefixLength: 32) != nil)
        #expect(CIDR(address: v4, prefixLength: 33) == nil)
        #expect(CIDR(address: v4, prefixLength: -1) == nil)
        #expect(CIDR(address: v6, prefixLength: 128) != nil)
        #expect(CIDR(address: v6, prefixLength: 129) == nil)
        #expect(CIDR(host: v4).description == "10.0.0.0/32")
        #expect(CIDR(host: v6).description == "2001:db8::/128")
    }

    @Test(
        "network clears host bits",
        arguments: [
            ("10.1.2.3/8", "10.0.0.0"),
            ("127.0.0.1/8", "127.0.0.0"),
            ("192.168.1.255/23", "192.168.0.0"),
            ("1.2.3.4/32", "1.2.3.4"),
            ("1.2.3.4/0", "0.0.0.0"),
            ("2001:db8:1:2:3:4:5:6/64", "2001:db8:1:2::"),
            ("2001:db8:1:2:3:4:5:6/65", "2001:db8:1:2::"),
            ("2001:db8:1:2:8000:4:5:6/65", "2001:db8:1:2:8000::"),
            ("2001:db8::1/32", "2001:db8::"),
            ("2001:db8::1/128", "2001:db8::1"),
            ("ffff::1/0", "::"),
            ("ffff:ffff::/17", "ffff:8000::"),
        ])
    func network(text: String, network: String) throws {
        let cidr = try #require(CIDR(text))
        #expect(cidr.network.description == network)
        #expect(cidr.network.family == cidr.family)
    }

    @Test("maskBytes")
    func maskBytes() {
        #expect(CIDR("10.0.0.0/8")!.maskBytes == [255, 0, 0, 0])
        #expect(CIDR("10.0.0.0/20")!.maskBytes == [255, 255, 240, 0])
        #expect(CIDR("10.0.0.0/0")!.maskBytes == [0, 0, 0, 0])
        #expect(CIDR("10.0.0.0/32")!.maskBytes == [255, 255, 255, 255])
        #expect(CIDR("::/0")!.maskBytes == Array(repeating: 0, count: 16))
        #expect(CIDR("::/128")!.maskBytes == Array(repeating: 255, count: 16))
        #expect(CIDR("::/65")!.maskBytes == Array(repeating: 255, count: 8) + [0x80] + Array(repeating: 0, count: 7))
        #expect(CIDR("2001:db8::/33")!.maskBytes == [255, 255, 255, 255, 0x80] + Array(repeating: 0, count: 11))
    }
}
