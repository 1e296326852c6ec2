import MeshIptables
import MeshModel
import MeshNetlink
import MeshSystem

/// The differences between the installed rules and `plan` (empty: they match), in the
/// backends `Context.installedBackends` picks: the forced one, else the one holding our rules
/// (each line prefixed with its backend when both do). Shared by `verify` and CNI CHECK.
public func verifyPlan(_ plan: Plan, _ context: Context, backend request: BackendRequest) throws(CommandFailure)
    -> [String]
{
    let backends = try context.installedBackends(request)
    var differences: [String] = []
    for backend in backends {
        let prefix = backends.count > 1 ? "\(backend.name): " : ""
        let lines: [String]
        switch backend {
        case .netlink:
            let nl = try context.netlink()
            let comparison: NftComparison
            do {
                comparison = try nl.compare(plan)
            } catch {
                throw failure(error)
            }
            for note in comparison.notes { context.log.warn(note) }
            lines = comparison.differences
        case .iptables:
            lines = try verifyIptables(plan, context)
        }
        differences += lines.map { prefix + $0 }
    }
    return differences
}

/// The iptables backend's differences, IPv6 left out (said so) where it cannot be read.
func verifyIptables(_ plan: Plan, _ context: Context) throws(CommandFailure) -> [String] {
    do throws(IptablesError) {
        let ipv6 = context.boundary.ipv6()
        var found = try context.iptables.verify(plan, families: [.ipv4])
        if ipv6 == .unsupported {
            context.log.info("\(ipv6.reason ?? ""): IPv6 rules not compared")
            return found
        }
        switch Result(catching: { () throws(IptablesError) in
            try context.iptables.verify(plan, families: [.ipv6])
        }) {
        case .success(let lines):
            found += lines
        case .failure(let error) where ipv6 == .disabled && error.kind == .unavailable:
            // Where IPv6 is off ip6tables may not work at all: nothing to compare.
            context.log.info("\(ipv6.reason ?? ""), and \(error.message): IPv6 rules not compared")
        case .failure(let error):
            throw error
        }
        return found
    } catch {
        throw failure(error)
    }
}
