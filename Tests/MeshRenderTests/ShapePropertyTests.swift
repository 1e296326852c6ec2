import MeshConfig
import MeshModel
import MeshPlanner
import MeshRender
import PropertyBased
import Testing

/// The lesson of Istio's CVE-2026-23766 (an interface name with a space injected iptables
/// options): no value meshinit accepts may change the *shape* of the rendered text. For random
/// accepted values, the number of lines and of whitespace-separated tokens per line must equal
/// those of a reference configuration with the same list lengths.
@Suite("Property: accepted values never change the shape of the rules")
struct ShapePropertyTests {
    /// Characters for interface-name candidates: valid ones, and every kind of separator,
    /// quote and operator a rule could be split or extended with.
    static let namePool: [Character] =
        Array("abcdefxyzABCXYZ0123456789_.-@+")
        + [
            " ", "\t", "\n", "\r", "\u{0B}", "\u{0C}", "\u{85}", "\u{A0}", "\u{2028}", "\u{3000}", "!", "\"", "'",
            "`", "/", ":", ";", ",", "#", "$", "*", "{", "}", "(", ")", "|", "&", "<", ">", "\\", "=", "é", "\u{0}",
            "\u{7F}", "%", "[", "]",
        ]

    static let nameGen = Gen<Character?>.element(of: namePool).map { $0! }.string(of: 0...18)

    /// A config as istio-iptables flags, built from a stream of numbers (random or fixed).
    struct Shape {
        var names: [String]
        var numbers: [UInt32]
        var tproxy: Bool
        var wildcard: Bool
        var ranges: [Bool]
        private var cursor = 0

        init(names: [String], numbers: [UInt32], tproxy: Bool, wildcard: Bool, ranges: [Bool]) {
            self.names = names
            self.numbers = numbers
            self.tproxy = tproxy
            self.wildcard = wildcard
            self.ranges = ranges
        }

        mutating func next() -> UInt32 {
            defer { cursor += 1 }
            return numbers[cursor % numbers.count] &+ UInt32(cursor / numbers.count)
        }

        mutating func port() -> String { String(1 + next() % 65535) }

        mutating func portRange() -> String {
            let first = 1 + next() % 65534
            let last = first + 1 + next() % (65535 - first)
            return ranges[cursor % ranges.count] ? "\(first)-\(last)" : "\(first)"
        }

        mutating func ipv4() -> String {
            var v = next()
            if v >> 24 == 127 { v ^= 0x0100_0000 }  // a loopback -i changes the rules on purpose
            return [v >> 24, v >> 16 & 0xff, v >> 8 & 0xff, v & 0xff].map(String.init).joined(separator: ".")
        }

        mutating func ipv6() -> String {
            var groups = (0..<4).flatMap { _ -> [UInt32] in
                let v = next()
                return [v >> 16, v & 0xffff]
            }
            if groups.dropLast().allSatisfy({ $0 == 0 }) && groups[7] == 1 { groups[7] = 2 }  // not ::1
            return groups.map { String($0, radix: 16) }.joined(separator: ":")
        }

        mutating func cidr4() -> String { "\(ipv4())/\(next() % 33)" }
        mutating func cidr6() -> String { "\(ipv6())/\(next() % 129)" }
        mutating func id() -> String { String(next() % 4_294_967_295) }

        /// The flags, environment and resolv.conf of this config.
        mutating func input() -> (flags: FlagMap<String>, env: [String: String], resolv: String) {
            let half = names.count / 2
            var flags: FlagMap<String> = [
                .envoyPort: port(), .inboundCapturePort: port(), .inboundTunnelPort: port(),
                .proxyUID: "\(id()),\(id())", .proxyGID: id(),
                .interceptionMode: tproxy ? "TPROXY" : "REDIRECT",
                .tproxyMark: String(next()), .tproxyRouteTable: String(1 + next() % 252),
                .excludeInterfaces: names.prefix(half).joined(separator: ","),
                .kubeVirtInterfaces: names.dropFirst(half).joined(separator: ","),
                .serviceCIDR: "\(cidr4()),\(cidr6()),\(cidr4())",
                .serviceExcludeCIDR: "\(cidr6()),\(cidr4())",
                .outboundPorts: "\(portRange()),\(portRange())",
                .localOutboundPortsExclude: "\(portRange()),\(portRange())",
                .redirectDNS: "true", .dropInvalid: "true", .ipv6: "on", .resolvConf: "/r",
            ]
            if wildcard {
                flags[.inboundPorts] = "*"
                flags[.localExcludePorts] = "\(portRange()),\(portRange()),\(portRange())"
            } else {
                flags[.inboundPorts] = "\(portRange()),\(portRange()),\(portRange())"
            }
            let env = ["ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE": "\(id()),\(id())"]
            let resolv = "nameserver \(ipv4())\nnameserver \(ipv6())\n"
            return (flags, env, resolv)
        }
    }

    /// Lines and whitespace-separated tokens per line (any Unicode newline or whitespace).
    static func shape(_ text: String) -> [Int] {
        text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).map {
            $0.split(whereSeparator: \.isWhitespace).count
        }
    }

    static func render(_ shape: Shape) throws -> (v4: String, v6: String, nft: String) {
        var shape = shape
        let (flags, env, resolv) = shape.input()
        var system = FakeSystem()
        system.files["/r"] = resolv
        let settings = try ConfigResolver(system: system).resolve(flags: flags, environment: env)
        let plan = Planner.plan(settings.capture)
        return (
            IptablesRestore.render(plan, family: .ipv4), IptablesRestore.render(plan, family: .ipv6),
            NftScript.render(plan)
        )
    }

    static let forbidden: Set<Character> = [" ", "\t", "\n", "\r", "\"", "'", "`", "!", "/", ":", ";", ",", "#", "$"]

    @Test("random accepted values give the reference shape")
    func shapeIsStable() async throws {
        var acceptedNames = 0
        var rejectedNames = 0
        await propertyCheck(
            count: 300,
            input: Self.nameGen.array(of: 0...6),
            Gen<Character>.latin1.string(of: 1...16).array(of: 0...2),
            Gen<UInt8>.uint8().array(of: 1...16).array(of: 0...2),
            Gen<UInt32>.uint32().array(of: 64),
            Gen<Bool>.bool.array(of: 10)
        ) { pooled, latin1, bytes, numbers, bools in
            var names: [String] = []
            // Names from a pool of hostile characters, from Latin-1, and from arbitrary bytes.
            let candidates = pooled + latin1 + bytes.map { String(decoding: $0, as: UTF8.self) }
            for candidate in candidates {
                if InterfaceName(candidate) != nil {
                    acceptedNames += 1
                    #expect(!candidate.contains { $0.isWhitespace || $0.isNewline || Self.forbidden.contains($0) })
                    #expect(candidate.utf8.count <= 15 && !candidate.isEmpty)
                    #expect(!candidate.hasPrefix("-"))
                    names.append(candidate)
                } else if !candidate.isEmpty && !candidate.contains(",") {
                    // (Empty list items are dropped and commas split the list, as in Istio.)
                    rejectedNames += 1
                    // The resolver refuses it too.
                    #expect(throws: ConfigError.self) {
                        try ConfigResolver(system: FakeSystem()).resolve(
                            flags: [.excludeInterfaces: "eth0,\(candidate)"], environment: [:])
                    }
                }
            }
            let random = Shape(
                names: names, numbers: numbers, tproxy: bools[0], wildcard: bools[1], ranges: Array(bools[2...]))
            let reference = Shape(
                names: names.indices.map { "ref\($0)" }, numbers: [7, 1000, 20, 3, 10, 64, 48, 90],
                tproxy: bools[0], wildcard: bools[1], ranges: Array(bools[2...]))
            let got = try Self.render(random)
            let want = try Self.render(reference)
            #expect(Self.shape(got.v4) == Self.shape(want.v4), "ipv4:\n\(got.v4)")
            #expect(Self.shape(got.v6) == Self.shape(want.v6), "ipv6:\n\(got.v6)")
            #expect(Self.shape(got.nft) == Self.shape(want.nft), "nft:\n\(got.nft)")
        }
        #expect(acceptedNames > 0)
        #expect(rejectedNames > 0)
    }

    @Test("the shape measure sees injected tokens and lines")
    func shapeMeasure() {
        let rule = "-A PREROUTING -i NAME -j RETURN"
        #expect(Self.shape(rule.replacing("NAME", with: "eth0")) == [6])
        #expect(Self.shape(rule.replacing("NAME", with: "eth0 -j ACCEPT")) == [8])
        #expect(Self.shape(rule.replacing("NAME", with: "eth0\u{85}x")) == [4, 3])
        #expect(Self.shape(rule.replacing("NAME", with: "eth0\u{2028}x")) == [4, 3])
        #expect(Self.shape("a\nb c\n") == [1, 2, 0])
    }

    @Test("a name with a space can never reach a rule")
    func cveExample() {
        #expect(InterfaceName("eth0 -j ACCEPT") == nil)
        #expect(throws: ConfigError.self) {
            try ConfigResolver(system: FakeSystem()).resolve(
                flags: [.excludeInterfaces: "eth0 -j ACCEPT"], environment: [:])
        }
    }
}
