import Foundation
import MeshConfig
import MeshModel
import MeshPlanner
import MeshRender
import Testing

/// Byte-for-byte golden tests of every renderer. A missing golden is a failure; recording is
/// explicit: `MESHINIT_RECORD=1 swift test --filter GoldenTests` (re)writes the files, and
/// those then belong in a commit of their own, checked against Istio in the kernel.
@Suite("Golden renderings")
struct GoldenTests {
    static var recording: Bool { ProcessInfo.processInfo.environment["MESHINIT_RECORD"] == "1" }

    @Test("at least 20 named configurations, unique names")
    func enoughCases() {
        #expect(GoldenCase.all.count >= 20)
        #expect(Set(GoldenCase.all.map(\.name)).count == GoldenCase.all.count)
        #expect(GoldenCase.all.filter(\.istioIptables).count == 20)
        #expect(GoldenCase.all.filter(\.istioNft).count == 21)
    }

    @Test("renderings match the goldens", arguments: GoldenCase.all)
    func golden(_ c: GoldenCase) throws {
        for (ext, text) in try c.renderings() {
            Self.compare(text, name: c.name, ext: ext)
        }
    }

    static func compare(_ actual: String, name: String, ext: String) {
        let url = KernelSupport.golden(name, ext)
        let data = Data(actual.utf8)
        if recording {
            write(data, to: url)
            return
        }
        guard let expected = try? Data(contentsOf: url) else {
            Issue.record("missing golden \(url.path) (record it explicitly with MESHINIT_RECORD=1)")
            return
        }
        if expected != data {
            Issue.record("\(url.lastPathComponent) differs from the golden: \(firstDifference(expected, data))")
        }
    }

    static func write(_ data: Data, to url: URL) {
        do {
            try FileManager.default.createDirectory(
                at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try data.write(to: url)
        } catch {
            Issue.record("cannot write \(url.path): \(error)")
        }
    }

    static func firstDifference(_ expected: Data, _ actual: Data) -> String {
        let a = String(decoding: expected, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        let b = String(decoding: actual, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        for i in 0..<max(a.count, b.count) {
            let x = i < a.count ? String(a[i]) : "<end>"
            let y = i < b.count ? String(b[i]) : "<end>"
            if x != y { return "line \(i + 1):\n  golden: \(x)\n  actual: \(y)" }
        }
        return "same lines, different bytes"
    }

    /// Our translation of the conformance cases (`#note`s to `--ipv6`/resolv.conf, `#env` to the
    /// environment) must be exactly the cases in `../shared/conformance/istio`.
    @Test("conformance cases are translated faithfully", arguments: GoldenCase.all.filter(\.istioNft))
    func conformanceTranslation(_ c: GoldenCase) throws {
        let folders = c.istioIptables ? ["iptables", "nftables"] : ["nftables"]
        for folder in folders {
            let url = KernelSupport.istioCases.appendingPathComponent(folder).appendingPathComponent("\(c.name).args")
            let text = try String(contentsOf: url, encoding: .utf8)
            var args: [String] = []
            var env: [String: String] = [:]
            var notes: [String: String] = [:]
            for line in text.split(separator: "\n").map(String.init) where !line.isEmpty {
                if line.hasPrefix("#env ") || line.hasPrefix("#note ") {
                    let body = line.drop { $0 != " " }.dropFirst()
                    let key = String(body.prefix { $0 != "=" })
                    let value = String(body.dropFirst(key.count + 1))
                    if line.hasPrefix("#env ") { env[key] = value } else { notes[key] = value }
                } else if !line.hasPrefix("#") && line != "--native-nftables" && line != "--dry-run" {
                    args.append(line)
                }
            }
            #expect(c.args.filter { $0 != "--dry-run" } == args, "\(folder)/\(c.name).args")
            #expect(c.environment == env, "\(folder)/\(c.name).args")
            #expect(c.ipv6 == (notes["ENABLE_INBOUND_IPV6"] == "true"), "\(folder)/\(c.name).args")
            let dns = ["DNS_SERVERS_V4", "DNS_SERVERS_V6"].filter { notes[$0] != nil }
            let resolv: String? =
                dns.isEmpty
                ? nil
                : dns.flatMap { notes[$0]!.split(separator: ",") }.map { "nameserver \($0)\n" }.joined()
            #expect(c.resolvConf == resolv, "\(folder)/\(c.name).args")
        }
    }

    @Test("no stray files in Goldens/")
    func noStrayGoldens() throws {
        let expected = Set(GoldenCase.all.flatMap { c in ["ipv4", "ipv6", "nft", "json"].map { "\(c.name).\($0)" } })
        let present = Set(try FileManager.default.contentsOfDirectory(atPath: KernelSupport.goldens.path))
        #expect(present.subtracting(expected).isEmpty, "stray: \(present.subtracting(expected).sorted())")
    }

    @Test("JSON goldens are valid JSON with one entry per operation", arguments: GoldenCase.all)
    func jsonValid(_ c: GoldenCase) throws {
        let plan = try c.plan()
        let text = PlanJSON.render(plan)
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        let operations = object?["operations"] as? [[String: Any]]
        #expect(operations?.count == plan.operations.count)
        #expect(object?["ipv6"] as? Bool == plan.ipv6)
        #expect((object?["tproxyRoute"] is NSNull) == (plan.tproxyRoute == nil))
    }

    @Test("no IPv6 payload when IPv6 is off", arguments: GoldenCase.all.filter { !$0.ipv6 })
    func noIPv6(_ c: GoldenCase) throws {
        #expect(IptablesRestore.render(try c.plan(), family: .ipv6).isEmpty)
    }

    @Test("every iptables payload is well formed", arguments: GoldenCase.all)
    func iptablesShape(_ c: GoldenCase) throws {
        let plan = try c.plan()
        for family in plan.families {
            let lines = IptablesRestore.render(plan, family: family).split(separator: "\n")
            var inTable = false
            for line in lines {
                if line.hasPrefix("*") {
                    #expect(!inTable, "\(line)")
                    inTable = true
                } else if line == "COMMIT" {
                    #expect(inTable)
                    inTable = false
                } else {
                    #expect(inTable, "\(line)")
                    #expect(line.hasPrefix(":ISTIO_") || line.hasPrefix("-A ") || line.hasPrefix("-I "), "\(line)")
                }
            }
            #expect(!inTable)
        }
    }

    @Test("render helpers")
    func helpers() {
        let rule = Rule(
            [
                .inInterface(InterfaceName("veth+")!), .l4proto(.tcp, scope: .all),
                .destinationPorts(.tcp, [PortRange(parsing: "80")!, PortRange(parsing: "8000-8010")!], negated: true),
                .owner(.gid(NumericID(5)!), negated: true),
            ], .jump(.inRedirect))
        #expect(
            IptablesRestore.arguments(rule).joined(separator: " ")
                == "-i veth+ -p tcp -m multiport ! --dports 80,8000:8010 -m owner ! --gid-owner 5 -j ISTIO_IN_REDIRECT")
        #expect(
            NftScript.statement(rule)
                == "iifname \"veth*\" meta l4proto tcp tcp dport != { 80, 8000-8010 } meta skgid != 5 counter jump istio-in-redirect"
        )
        #expect(NftBaseChain(table: .mangle, hook: .output)?.type == "route")
        #expect(NftBaseChain(table: .raw, hook: .prerouting)?.priority == -300)
        #expect(NftBaseChain(table: .nat, hook: .input) == nil)
    }

    @Test("JSON escapes strings")
    func jsonEscapes() {
        #expect(JSONValue.string("a\"b\\c\n\u{1}").serialized == "\"a\\\"b\\\\c\\n\\u0001\"")
        #expect(
            JSONValue.object([("k", .array([.number(-1), .bool(true), .null]))]).serialized == "{\"k\":[-1,true,null]}")
    }
}
