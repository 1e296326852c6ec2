import MeshModel
import Testing

@Suite("Port and PortRange")
struct PortTests {
    @Test("ports 1...65535 accepted", arguments: ["1", "80", "15001", "65535"])
    func accepted(text: String) throws {
        let port = try #require(Port(parsing: text))
        #expect(port.description == text)
        #expect(String(port.value) == text)
    }

    @Test(
        "ports rejected",
        arguments: [
            "0", "65536", "99999", "abc", "080", "00", "", "-1", "+80", " 80", "80 ", "8 0", "1e3", "0x50",
            "\u{0668}\u{0660}",
        ])
    func rejected(text: String) {
        #expect(Port(parsing: text) == nil)
    }

    @Test("integer bounds")
    func integerBounds() {
        #expect(Port(0) == nil)
        #expect(Port(65536) == nil)
        #expect(Port(-1) == nil)
        #expect(Port(1)?.value == 1)
        #expect(Port(65535)?.value == 65535)
        #expect(Port(80)! < Port(443)!)
    }

    @Test("ranges: single and A-B")
    func ranges() throws {
        let single = try #require(PortRange(parsing: "80"))
        #expect(single.isSingle)
        #expect(single.description == "80")
        #expect(single.iptablesText == "80")
        let range = try #require(PortRange(parsing: "8000-8010"))
        #expect(!range.isSingle)
        #expect(range.first.value == 8000)
        #expect(range.last.value == 8010)
        #expect(range.description == "8000-8010")
        #expect(range.iptablesText == "8000:8010")
        #expect(PortRange(parsing: "1-65535")?.iptablesText == "1:65535")
    }

    @Test(
        "ranges rejected",
        arguments: [
            "80-70", "80-80", "0-10", "10-65536", "80-", "-80", "-", "1-2-3", "80:90", "80 - 90", "abc", "", "080-90",
            "80-090", "*",
        ])
    func rangesRejected(text: String) {
        #expect(PortRange(parsing: text) == nil)
    }

    @Test("range init checks order")
    func rangeInit() {
        #expect(PortRange(first: Port(90)!, last: Port(80)!) == nil)
        #expect(PortRange(first: Port(80)!, last: Port(90)!)?.iptablesText == "80:90")
    }
}

@Suite("NumericID and Mark")
struct IDTests {
    @Test("ids")
    func ids() {
        #expect(NumericID(parsing: "0")?.value == 0)
        #expect(NumericID(parsing: "1337")?.description == "1337")
        #expect(NumericID(parsing: "4294967294")?.value == 4_294_967_294)
        #expect(NumericID(parsing: "4294967295") == nil)
        #expect(NumericID(parsing: "01") == nil)
        #expect(NumericID(parsing: "-1") == nil)
        #expect(NumericID(parsing: "") == nil)
        #expect(NumericID(parsing: "12345678901") == nil)
        #expect(NumericID(UInt64(UInt32.max)) == nil)
    }

    @Test("marks")
    func marks() {
        #expect(Mark(parsing: "0")?.value == 0)
        #expect(Mark(parsing: "1337")?.description == "1337")
        #expect(Mark(parsing: "4294967295")?.value == UInt32.max)
        #expect(Mark(parsing: "4294967296") == nil)
        #expect(Mark(parsing: "0x539") == nil)
        #expect(Mark(parsing: "01") == nil)
        #expect(Mark(parsing: "1337/0xffffffff") == nil)
    }
}

@Suite("InterfaceName")
struct InterfaceNameTests {
    @Test(
        "accepted",
        arguments: ["eth0", "eth0.100", "veth+", "lo", "not-istio-nic", "a", "br_0", "wg@x", "123456789012345", "x.."])
    func accepted(text: String) throws {
        let name = try #require(InterfaceName(text))
        #expect(name.name == text)
        #expect(name.description == text)
    }

    @Test(
        "rejected",
        arguments: [
            "", "eth 0", "eth0 ", " eth0", "eth\t0", "eth0\n", "eth\r0", "1234567890123456", "eth0!", "!eth0", "eth/0",
            "eth:0", "eth0\"", "eth0'", "`eth0`", "-eth0", "-", ".", "..", "eth+0", "+eth", "eth0;", "eth$0", "eth*",
            "ethé", "eth\u{0}0", "eth0,eth1", "eth0\u{85}", "eth0\u{2028}", "eth0\u{A0}", "-j ACCEPT",
            "\"x\" -j ACCEPT", "eth0 -j DROP", "+", "++",
        ])
    func rejected(text: String) {
        #expect(InterfaceName(text) == nil)
    }

    @Test("length is counted in bytes, not characters")
    func byteLength() {
        #expect(InterfaceName(String(repeating: "a", count: 15)) != nil)
        #expect(InterfaceName(String(repeating: "a", count: 16)) == nil)
        // 8 characters, 16 bytes: rejected by length as well as by charset.
        #expect(InterfaceName(String(repeating: "é", count: 8)) == nil)
    }

    @Test("loopback constant")
    func loopback() {
        #expect(InterfaceName.loopback.name == "lo")
    }
}
