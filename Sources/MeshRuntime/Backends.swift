import MeshCNI
import MeshIptables
import MeshModel
import MeshNetlink
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The two ways rules are installed.
public enum RulesBackend: Sendable, Hashable {
    case iptables
    /// nftables through netlink (`--native-nftables`).
    case netlink

    public var name: String { self == .netlink ? "nftables (netlink)" : "iptables" }
}

/// What the flags (or the CNI configuration) ask for.
public enum BackendRequest: Sendable, Hashable {
    /// `--native-nftables`, a forced iptables binary, `"backend": "nftables"|"iptables"`.
    case forced(RulesBackend)
    /// Nothing forced: the backend that already holds our rules, else `fallback`.
    case auto(fallback: RulesBackend)
}

extension PluginConfig {
    /// The plugin's `backend` key: `auto` converges on the backend holding our rules, and
    /// installs through netlink where there are none.
    public var backendRequest: BackendRequest {
        switch backend {
        case .auto: .auto(fallback: .netlink)
        case .nftables: .forced(.netlink)
        case .iptables: .forced(.iptables)
        }
    }
}

/// Which backends hold rules of ours in this namespace.
public struct Holdings: Sendable, Hashable {
    /// Our nft tables (`inet istio-proxy-*`).
    public var nftTables: [String]
    /// Whether iptables (legacy or nft) holds chains or rules of ours.
    public var iptables: Bool

    public var backends: [RulesBackend] { (iptables ? [.iptables] : []) + (nftTables.isEmpty ? [] : [.netlink]) }
}

extension Context {
    /// `--native-nftables` → netlink; a forced iptables binary (`--iptables-version`,
    /// `FORCE_IPTABLES_BINARY`) → iptables; otherwise auto, falling back to iptables where an
    /// iptables-restore exists and to netlink where none does.
    public var backendRequest: BackendRequest {
        if settings.run.nativeNftables { return .forced(.netlink) }
        if settings.run.forceIptablesVariant != nil { return .forced(.iptables) }
        return .auto(fallback: hasIptablesBinary ? .iptables : .netlink)
    }

    public var hasIptablesBinary: Bool { (try? iptables.tools(for: .ipv4)) != nil }

    /// The kernel's nft table list, read once per run until something is written (see
    /// `RunCache`); nil where the kernel has no nf_tables.
    public func nftInventory() throws(CommandFailure) -> NftTables? {
        if let known = cache.inventory { return known }
        do {
            let inventory = try NftablesBackend(transport: try sockets.get()).inventory()
            cache.inventory = inventory
            return inventory
        } catch {
            if error.errno == EPROTONOSUPPORT || error.errno == EAFNOSUPPORT { return nil }
            throw failure(error)
        }
    }

    /// Whether iptables holds rules of ours: `ISTIO_*` chains in iptables-nft's `ip`/`ip6`
    /// tables (one netlink dump, only where such tables exist), or in legacy tables (their
    /// `*-save`, only where legacy tables are loaded). Unreadable counts as none.
    public func iptablesHoldsOurs(_ inventory: NftTables?) -> Bool {
        if let inventory, inventory.hasIptablesNftTables(ipv6: false) || inventory.hasIptablesNftTables(ipv6: true),
            let socket = try? sockets.get(),
            let chains = try? NftablesBackend(transport: socket).iptablesNftChains(), !chains.isEmpty
        {
            return true
        }
        let families = Family.allCases.filter(boundary.legacyTablesLoaded)
        guard !families.isEmpty else { return false }
        var legacy = iptables
        legacy.forced = .legacy
        for family in families {
            if let steps = try? legacy.cleanupPlan(families: [family]), !steps.isEmpty { return true }
        }
        return false
    }

    /// Which backends hold rules of ours.
    public func holdings() throws(CommandFailure) -> Holdings {
        let inventory = try nftInventory()
        return Holdings(nftTables: inventory?.ours ?? [], iptables: iptablesHoldsOurs(inventory))
    }

    /// The backend an install uses (call it holding the namespace lock). Auto converges: where
    /// only one backend holds our rules it is that one (so a re-run, a CNI ADD after an init
    /// container or the other way round never adds a second copy through the other backend);
    /// otherwise the fallback. Costs nothing on a first install: the one table dump it reads
    /// is the one the install reads anyway.
    public func installBackend(_ request: BackendRequest) throws(CommandFailure) -> RulesBackend {
        let fallback: RulesBackend
        switch request {
        case .forced(let chosen): return chosen
        case .auto(let otherwise): fallback = otherwise
        }
        let inventory = try nftInventory()
        let nft = !(inventory?.ours.isEmpty ?? true)
        switch fallback {
        case .iptables:
            guard nft else { return .iptables }
            if iptablesHoldsOurs(inventory) {
                log.warn(
                    "rules of ours are installed through both iptables and nftables (netlink): updating the iptables ones; `meshinit clean` removes both"
                )
                return .iptables
            }
            log.info(
                "our rules are installed through nftables (netlink) here (\(inventory?.ours.joined(separator: ", ") ?? "")): updating them there, not adding a copy through iptables"
            )
            return .netlink
        case .netlink:
            let ipt = iptablesHoldsOurs(inventory)
            if nft {
                if ipt {
                    log.warn(
                        "rules of ours are installed through both nftables (netlink) and iptables: updating the nftables ones; `meshinit clean` removes both"
                    )
                }
                return .netlink
            }
            guard ipt else { return .netlink }
            guard hasIptablesBinary else {
                log.warn(
                    "iptables rules of ours are installed here but no iptables-restore is available to update them: installing through nftables (netlink)"
                )
                return .netlink
            }
            log.info(
                "our rules are installed through iptables here: updating them there, not adding a copy through nftables"
            )
            return .iptables
        }
    }

    /// The backends `verify`, `explain --live` and CNI CHECK compare: the forced one; else
    /// those that hold our rules (both, said so, when both do); else the fallback.
    public func installedBackends(_ request: BackendRequest) throws(CommandFailure) -> [RulesBackend] {
        switch request {
        case .forced(let chosen):
            return [chosen]
        case .auto(let fallback):
            let found = try holdings()
            switch found.backends {
            case []:
                log.info("no rules of ours in either backend: comparing with \(fallback.name)")
                return [fallback]
            case [.netlink]:
                log.info(
                    "comparing the nftables (netlink) rules: the backend that holds ours here (\(found.nftTables.joined(separator: ", ")))"
                )
                return [.netlink]
            case [.iptables]:
                log.info("comparing the iptables rules: the backend that holds ours here")
                return [.iptables]
            default:
                log.warn(
                    "rules of ours are installed through both iptables and nftables (\(found.nftTables.joined(separator: ", "))): comparing both"
                )
                return found.backends
            }
        }
    }
}
