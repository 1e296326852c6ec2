import Foundation
import MeshIptables
import MeshModel
import MeshNetlink
import MeshTestKit
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Loads our recorded goldens into fresh network namespaces and compares the kernel's read-back
/// with that of Istio's goldens (`../shared/conformance/istio`): the conformance check's idea,
/// applied to our own goldens. Where Istio has no golden, the content is compared with what
/// another path makes of the same plan: for iptables the rules `SaveCanonical` predicts for it
/// (chain by chain, in order, nothing more), for nft the ruleset the netlink backend installs
/// for it. Needs root, `ip`, `iptables-restore`/`ip6tables-restore` (and the `-save` tools)
/// and `nft`. Reported as skipped when those are missing, except with `CI=true`: then each fails.
@Suite("Kernel: goldens are Istio's rules", .serialized, .enabled(if: Kernel.mayRun(tools: Kernel.goldenTools)))
struct KernelGoldenTests {
    @Test("iptables goldens", arguments: GoldenCase.all)
    func iptables(_ c: GoldenCase) throws {
        try Kernel.need(tools: Kernel.goldenTools)
        let istio = c.istioIptables ? try Kernel.istioIptables(c.name) : nil
        let plan = try c.plan()
        for (index, family) in ["ipv4", "ipv6"].enumerated() {
            let ours = try String(contentsOf: KernelSupport.golden(c.name, family), encoding: .utf8)
            let got = try Kernel.iptablesReadback(ours, ipv6: index == 1)
            if let istio {
                let want = try Kernel.iptablesReadback(index == 0 ? istio.ipv4 : istio.ipv6, ipv6: index == 1)
                #expect(got == want, "\(c.name).\(family):\n\(Kernel.diff(want, got))")
            } else {
                // No Istio golden: the kernel holds exactly the plan's rules, chain by chain.
                let family: Family = index == 0 ? .ipv4 : .ipv6
                let ops = plan.operations(for: family)
                let live = parseSave(got.joined(separator: "\n") + "\n")
                #expect(drift(live: live, desired: ops, family: family) == [], "\(c.name).\(family)")
                let planned = ChainLayout.materialize(ops).flatMap { $0.rules.flatMap(\.expanded) }.count
                #expect(live.flatMap(\.rules).count == planned, "\(c.name).\(family): rules other than the plan's")
            }
        }
    }

    @Test("nft goldens", arguments: GoldenCase.all)
    func nft(_ c: GoldenCase) throws {
        try Kernel.need(tools: Kernel.goldenTools)
        let ours = try String(contentsOf: KernelSupport.golden(c.name, "nft"), encoding: .utf8)
        let got = try Kernel.nftReadback(ours)
        let want: [String]
        if c.istioNft {
            want = try Kernel.nftReadback(try Kernel.istioNft(c.name))
        } else {
            // No Istio golden: what the netlink backend installs for the same plan (built
            // from the plan by other code than the nft text).
            want = try Kernel.netlinkReadback(try c.plan())
        }
        #expect(!got.isEmpty)
        #expect(got == want, "\(c.name).nft:\n\(Kernel.diff(want, got))")
    }

    @Test("namespaces are unique and removed")
    func namespaces() throws {
        try Kernel.need()
        let a = try Kernel.Namespace()
        let b = try Kernel.Namespace()
        #expect(a.name != b.name)
        let listed = try Kernel.run(["ip", "netns", "list"]).stdout
        #expect(listed.contains(a.name) && listed.contains(b.name))
        a.delete()
        b.delete()
        let after = try Kernel.run(["ip", "netns", "list"]).stdout
        #expect(!after.contains(a.name) && !after.contains(b.name))
    }
}

/// Read-backs through the shared kernel kit, and Istio's goldens prepared for loading.
extension Kernel {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static let goldenTools = ["iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save"]

    /// The ruleset the netlink backend leaves for `plan` in a fresh namespace.
    static func netlinkReadback(_ plan: Plan) throws -> [String] {
        let ns = try Namespace()
        defer { ns.delete() }
        try NftablesBackend(transport: try NetfilterSocket(networkNamespace: ns.path)).apply(plan)
        return try ns.ruleset()
    }

    /// What the kernel holds after `iptables-restore` of `payload` in a fresh namespace.
    static func iptablesReadback(_ payload: String, ipv6: Bool) throws -> [String] {
        let ns = try Namespace()
        defer { ns.delete() }
        if !payload.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            try ns.exec([ipv6 ? "ip6tables-restore" : "iptables-restore"], stdin: payload)
        }
        return canonicalIptablesSave(try ns.exec([ipv6 ? "ip6tables-save" : "iptables-save"]).stdout)
    }

    /// What the kernel holds after `nft -f` of `script` in a fresh namespace (`java` known).
    static func nftReadback(_ script: String) throws -> [String] {
        let ns = try Namespace()
        defer { ns.delete() }
        if !script.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            try ns.loadNft(script, groups: ["java": KernelSupport.javaGID])
        }
        return try ns.ruleset()
    }

    /// Istio's golden with the `java` group (not in this host's /etc/group) replaced by the gid
    /// the fake system gives it, as the conformance check's private /etc/group does.
    static func istioGolden(_ folder: String, _ name: String) throws -> String {
        let url = KernelSupport.istioCases.appendingPathComponent(folder).appendingPathComponent("\(name).golden")
        guard let text = try? String(contentsOf: url, encoding: .utf8) else {
            throw Failure(description: "Istio golden \(url.path) is missing")
        }
        return text.replacing(/(--gid-owner|skgid|skgid !=) java\b/) { m in "\(m.1) \(KernelSupport.javaGID)" }
    }

    static func istioNft(_ name: String) throws -> String { try istioGolden("nftables", name) }

    /// An istio-iptables golden split into restore payloads per family (`-N X` → `:X - [0:0]`).
    static func istioIptables(_ name: String) throws -> (ipv4: String, ipv6: String) {
        let text = try istioGolden("iptables", name)
        var families: [[(String, [String])]] = [[]]
        var seen: Set<String> = []
        var current: Int?
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let line = String(raw)
            if line.hasPrefix("* ") {
                let table = line.dropFirst(2).trimmingCharacters(in: .whitespaces)
                if seen.contains(table) {
                    families.append([])
                    seen = []
                }
                seen.insert(table)
                families[families.count - 1].append((table, []))
                current = families[families.count - 1].count - 1
            } else if line == "COMMIT" {
                current = nil
            } else if let index = current {
                families[families.count - 1][index].1.append(line)
            }
        }
        let payloads = families.map { tables -> String in
            var out: [String] = []
            for (table, lines) in tables {
                out.append("*\(table)")
                out += lines.filter { $0.hasPrefix("-N ") }.map {
                    ":\($0.dropFirst(3).trimmingCharacters(in: .whitespaces)) - [0:0]"
                }
                out += lines.filter { !$0.hasPrefix("-N ") }
                out.append("COMMIT")
            }
            return out.isEmpty ? "" : out.joined(separator: "\n") + "\n"
        }
        return (payloads.first ?? "", payloads.count > 1 ? payloads[1] : "")
    }
}
