import MeshConfig
import PropertyBased
import Testing

@testable import meshinit

/// The install path parses Istio's flags with `FastArguments` instead of
/// swift-argument-parser (≈15 M instructions saved per start). Both must collect exactly
/// the same flags for every argv the fast parser accepts; anything else goes to the full CLI.
@Suite struct FastArgumentsTests {
    /// What the full CLI collects for `argv` (nil: it rejects it).
    static func viaArgumentParser(_ argv: [String]) -> [IstioFlag: String]? {
        guard let normalized = try? normalizeArguments(argv),
            let command = try? Meshinit.parseAsRoot(normalized), let install = command as? Install
        else { return nil }
        return install.options.given
    }

    static let seed = [
        "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d",
        "15090,15021,15020",
    ]

    static let accepted: [[String]] = [
        seed,
        ["istio-iptables"] + seed + ["--log_output_level=default:info"],
        seed + ["--native-nftables", "--redirect-dns", "--ipv6=on"],
        ["--envoy-port=15001", "--inbound-capture-port", "15006", "--istio-inbound-ports="],
        ["--redirect-dns=false", "--drop-invalid=1", "--dual-stack=T", "-n", "--log_as_json=false"],
        ["-p=15001", "-n=false", "-x=", "-i=10.0.0.0/8"],
        ["-p", "1", "-p", "2", "--envoy-port", "3"],
        ["--probe-timeout", "5s", "--iptables-probe-port=15002", "--network-namespace", "/run/netns/x"],
        ["--log_as_json", "--force-iptables-binary", "legacy", "--resolv-conf", "/tmp/r"],
        ["-k", "eth0,eth1", "-c", "veth+", "-q", "80,8000-8010", "-o", "22", "-t", "1337", "-r", "133", "-g", "1337"],
        [],
    ]

    @Test("fast path takes Istio's spellings, and agrees with the CLI", arguments: accepted)
    func agrees(argv: [String]) {
        let fast = FastArguments.parse(argv)
        #expect(fast != nil, "fast path declined \(argv)")
        #expect(fast == Self.viaArgumentParser(argv), "\(argv)")
    }

    @Test(
        "plan's fast path agrees with the CLI",
        arguments: [
            ["plan"], ["plan", "--format", "nft", "-i", "*"], ["plan", "--format=json", "--ipv6=off", "-x", ""],
            ["plan", "--family", "ipv4", "--format", "iptables-restore"] + seed,
        ])
    func planAgrees(argv: [String]) throws {
        let fast = try #require(FastArguments.parsePlan(argv), "fast path declined \(argv)")
        let command = try #require(try Meshinit.parseAsRoot(normalizeArguments(argv)) as? PlanCommand)
        #expect(fast.flags == command.options.given)
        #expect((fast.options["format"] ?? "iptables-restore") == command.format.rawValue)
        #expect((fast.options["family"] ?? "all") == command.family.rawValue)
    }

    @Test(
        "plan options it cannot take go to the full CLI",
        arguments: [["plan", "--format"], ["plan", "--format", "--family"], ["plan", "--format="], ["plan", "-h"]])
    func planDeclines(argv: [String]) {
        #expect(FastArguments.parsePlan(argv) == nil)
    }

    static let declined: [[String]] = [
        ["plan", "--format", "nft"], ["clean"], ["verify"], ["install", "-p", "1"], ["--help"], ["-h"], ["--version"],
        ["--unknown"], ["-Z", "1"], ["-p"], ["-p", "--envoy-port"], ["-x", "-1"], ["positional"], ["--", "-p", "1"],
        ["--redirect-dns=yes"], ["-n1"], ["-nq"], ["--no-envoy-port"], ["--no-redirect-dns"], ["--no_log_as_json"],
    ]

    @Test("anything else goes to the full CLI", arguments: declined)
    func declines(argv: [String]) {
        #expect(FastArguments.parse(argv) == nil, "\(argv)")
    }

    /// Random argv over every flag in every spelling: whenever the fast parser accepts, the
    /// full CLI must accept with the same result.
    @Test func randomArgvAgree() async {
        let flags = IstioFlag.allCases
        let values = ["", "15001", "*", "a,b", "-", "x=y", "true", "false", "0", "5s", "--", "-5", "eth0 x"]
        func token(_ code: Int) -> [String] {
            let flag = flags[code % flags.count]
            let value = values[(code / flags.count) % values.count]
            switch code / (flags.count * values.count) {
            case 0: return ["--\(flag.rawValue)", value]
            case 1: return ["--\(flag.rawValue)=\(value)"]
            case 2: return flag.short.map { ["-\($0)", value] } ?? ["--\(flag.rawValue)"]
            case 3: return flag.short.map { ["-\($0)=\(value)"] } ?? ["--no-\(flag.rawValue)"]
            case 4: return ["--\(flag.rawValue)"]
            default: return ["--no-\(flag.rawValue)"]
            }
        }
        let codes = Gen.int(in: 0..<(flags.count * values.count * 6)).array(of: 0...6)
        var accepted = 0
        await propertyCheck(count: 500, input: codes) { codes in
            let argv = codes.flatMap(token)
            if let fast = FastArguments.parse(argv) {
                accepted += 1
                #expect(fast == Self.viaArgumentParser(argv), "\(argv)")
            }
        }
        #expect(accepted > 25, "too few random argv reached the fast path to mean anything")
    }
}
