import MeshIptables
import MeshModel
import MeshNetlink
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// What removing everything of ours from a pod's namespace did: the CNI plugin's DEL, and the
/// rollback after a failed ADD. Unlike `clean` (which stops at the first failure and says so),
/// every part is tried, whatever failed before it, and each failure is kept: the runtime is
/// told exactly what stayed behind.
public struct CNIRemoval: Sendable {
    public var removed: [String] = []
    public var failures: [CommandFailure] = []
    public var notes: [String] = []

    public var summary: String {
        var parts: [String] = []
        if !removed.isEmpty { parts.append("removed \(removed.joined(separator: "; "))") }
        if !failures.isEmpty { parts.append("could not remove: \(failures.map(\.message).joined(separator: "; "))") }
        return parts.isEmpty ? "nothing of ours was installed" : parts.joined(separator: "; ")
    }

    /// Removes our iptables rules (each family and variant on its own), our nft tables and our
    /// TPROXY routes from the current network namespace; the caller holds the namespace lock.
    public static func run(_ context: Context) -> CNIRemoval {
        var r = CNIRemoval()
        let ipv6 = context.boundary.ipv6()
        var families = Family.allCases
        if ipv6 == .unsupported, let reason = ipv6.reason {
            families = [.ipv4]
            r.notes.append("\(reason): IPv6 rules and routes skipped")
        }
        var unreadable: [Family] = []
        for family in families {
            let steps: [IptablesBackend.CleanupStep]
            do {
                steps = try context.iptables.cleanupPlan(families: [family])
            } catch {
                if family == .ipv6, ipv6 == .disabled, error.kind == .unavailable {
                    // ip6tables may not work at all where IPv6 is off; what it cannot read, it
                    // cannot have installed since.
                    unreadable.append(.ipv6)
                    r.notes.append("\(ipv6.reason ?? "IPv6 is off"), and \(error.message): ip6tables rules skipped")
                } else {
                    unreadable.append(family)
                    r.failures.append(failure(error))
                }
                continue
            }
            for step in steps {
                do {
                    r.removed += try context.iptables.clean([step])
                } catch {
                    r.failures.append(failure(error))
                }
            }
        }
        do {
            let nl = NftablesBackend(transport: try context.sockets.get())
            let tables = try nl.installedTables()
            if !tables.isEmpty {
                try nl.clean()
                r.removed += tables.map { "nft table inet \($0)" }
            }
            // iptables-nft rules of ours that no iptables binary here could remove: say so.
            let cleaned = families.filter { !unreadable.contains($0) }
            let left = try nl.iptablesNftChains().filter { cleaned.contains($0.hasPrefix("ip6 ") ? .ipv6 : .ipv4) }
            if !left.isEmpty {
                r.failures.append(
                    CommandFailure(
                        status: .unavailable,
                        message:
                            "iptables rules of ours remain (\(left.joined(separator: ", "))) and no iptables-restore is available to remove them"
                    ))
            }
        } catch {
            // A kernel without nf_tables cannot hold our tables: nothing to remove there.
            if error.errno != EPROTONOSUPPORT && error.errno != EAFNOSUPPORT { r.failures.append(failure(error)) }
        }
        do {
            for removal in try context.routing.removals(families: families, ipv6Disabled: ipv6 == .disabled) {
                do {
                    r.removed += try context.routing.remove([removal])
                } catch {
                    r.failures.append(failure(error))
                }
            }
        } catch {
            r.failures.append(failure(error))
        }
        return r
    }
}
