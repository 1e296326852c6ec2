import Foundation
import MeshConfig
import MeshIptables
import MeshModel
import MeshPlanner
import MeshRender
import MeshTestKit
import Testing

/// Real kernel: what `iptables-save` prints for our rules must be exactly what
/// `SaveCanonical` predicts, or re-runs would not be no-ops and `verify` would report false
/// drift. Each check runs in its own throwaway network namespace, for both iptables variants.
@Suite(.serialized) struct KernelCanonicalTests {
    static func configs() -> [(String, CaptureConfig)] {
        var out: [(String, CaptureConfig)] = []
        var seed = CaptureConfig()
        seed.inboundPorts = .all(except: [15090, 15021, 15020].map { PortRange(Port($0)!) })
        seed.outboundInclude = .all
        seed.ipv6 = true
        out.append(("seed", seed))

        var tproxy = seed
        tproxy.interceptionMode = .tproxy
        tproxy.inboundPorts = .only([PortRange(Port(8080)!), PortRange(first: Port(9000)!, last: Port(9010)!)!])
        tproxy.excludeInterfaces = [InterfaceName("eth9")!, InterfaceName("veth+")!]
        tproxy.dropInvalid = true
        tproxy.proxyUIDs = [NumericID(3)!, NumericID(4)!]
        tproxy.proxyGIDs = [NumericID(5)!]
        out.append(("tproxy", tproxy))

        var dns = seed
        dns.dns = .servers(ipv4: [IPAddress("10.0.0.10")!], ipv6: [IPAddress("fd00::a")!])
        dns.outboundInclude = .only([CIDR("10.0.0.0/8")!, CIDR("2001:db8::/32")!, CIDR("127.0.0.1/8")!])
        dns.outboundExclude = [CIDR("10.1.0.0/16")!, CIDR("2001:db8:1::/48")!]
        dns.outboundPorts = [PortRange(Port(3306)!)]
        dns.outboundExcludePorts = [PortRange(first: Port(20)!, last: Port(22)!)!]
        dns.kubeVirtInterfaces = [InterfaceName("eth1")!]
        dns.ownerGroups = .only([NumericID(202)!, NumericID(203)!])
        dns.ipv4LoopbackCIDR = CIDR("127.0.0.1/8")!
        out.append(("dns-cidrs", dns))

        var long = seed
        long.outboundExclude = (0..<20).map { CIDR("10.\($0).0.0/16")! } + (0..<17).map { CIDR("2001:db8:\($0)::/48")! }
        long.outboundInclude = .only((1...18).map { CIDR("198.51.100.\($0)/32")! })
        long.outboundExcludePorts = (1...17).map { PortRange(Port(6000 + $0)!) }
        long.inboundPorts = .all(except: (1...17).map { PortRange(Port(8000 + $0)!) })
        out.append(("long-lists", long))

        var all = seed
        all.dns = .all
        all.ownerGroups = .allExcept([NumericID(7)!])
        all.tproxyMark = Mark(0)
        out.append(("capture-all-dns", all))
        return out
    }

    @Test(arguments: ["nft", "legacy"])
    func saveOutputMatchesCanonicalRendering(variant: String) throws {
        guard try Kernel.require(tools: ["iptables-nft-restore", "iptables-legacy-restore"]) else { return }
        for (name, config) in Self.configs() {
            let plan = Planner.plan(config)
            for family in plan.families {
                let prefix = family == .ipv4 ? "iptables" : "ip6tables"
                let ns = try Kernel.Namespace()
                defer { ns.delete() }
                let payload = IptablesRestore.render(plan, family: family)
                let restore = try ns.exec(["\(prefix)-\(variant)-restore", "--noflush"], stdin: payload, check: false)
                #expect(restore.status == 0, "\(name) \(family) \(variant): \(restore.stderr)")
                let save = try ns.exec(["\(prefix)-\(variant)-save"])
                let live = parseSave(save.stdout)
                let ops = plan.operations(for: family)
                #expect(drift(live: live, desired: ops, family: family) == [], "\(name) \(family) \(variant)")
                #expect(reconcile(live: live, desired: ops).isEmpty, "\(name) \(family) \(variant): not converged")
                // And cleanup from that state leaves nothing of ours.
                let clean = reconcile(live: live, desired: []).map(\.block).joined()
                let cleaned = try ns.exec(["\(prefix)-\(variant)-restore", "--noflush"], stdin: clean, check: false)
                #expect(cleaned.status == 0, "\(name) \(family) \(variant) clean: \(cleaned.stderr)")
                let after = try ns.exec(["\(prefix)-\(variant)-save"]).stdout
                #expect(!after.contains("ISTIO"), "\(name) \(family) \(variant): left after cleanup:\n\(after)")
                #expect(reconcile(live: parseSave(after), desired: []).isEmpty)
            }
        }
    }
}
