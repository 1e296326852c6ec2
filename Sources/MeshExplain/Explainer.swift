import MeshModel

/// One rule a packet matched on its way.
public struct Step: Sendable, Hashable {
    public var hook: Hook
    public var table: Table
    public var chain: Chain
    /// The rule's id in the ruleset.
    public var entry: Int
    /// For a rule with a list, the iptables line of the item that matched.
    public var item: String?
}

/// Where the packet ends up.
public enum Verdict: Sendable, Hashable {
    /// nat REDIRECT to a local port; the original destination stays readable
    /// (`SO_ORIGINAL_DST`). `listener` is the setting that port comes from
    /// (`.proxyPort`, `.inboundCapturePort`, `.dns`), nil when unknown.
    case redirected(port: Port, listener: CaptureSetting?)
    /// mangle TPROXY to a local port with a mark; addresses stay as they are.
    case tproxied(port: Port, mark: Mark)
    case dropped
    /// Not captured: an `out` packet goes to its destination (through `lo` when local), an
    /// `in` packet to the app listening on its port.
    case notCaptured
    /// A live rule on the path that explain does not understand.
    case uncertain

    /// `redirect`, `tproxy`, `drop`, `pass`, `uncertain`.
    public var kind: String {
        switch self {
        case .redirected: "redirect"
        case .tproxied: "tproxy"
        case .dropped: "drop"
        case .notCaptured: "pass"
        case .uncertain: "uncertain"
        }
    }
}

/// Where a packet that is not dropped goes after the rules.
public enum Delivery: Sendable, Hashable {
    /// To a socket of the pod (the app, or the listener of a redirect or TPROXY).
    case local
    /// An `out` packet leaves the pod through this interface.
    case leaves(InterfaceName)
    /// An `in` packet whose destination is not the pod's: the kernel routes it on, through
    /// this interface (nil when explain does not know the pod's routes).
    case forwarded(InterfaceName?)
    /// Dropped, or uncertain.
    case none

    /// `local`, `leaves`, `forwarded`, or nil.
    public var kind: String? {
        switch self {
        case .local: "local"
        case .leaves: "leaves"
        case .forwarded: "forwarded"
        case .none: nil
        }
    }
}

/// A packet's path through the rules and its verdict.
public struct Explanation: Sendable {
    public var packet: Packet
    public var backend: Backend
    /// Every rule that matched, in order.
    public var steps: [Step]
    public var verdict: Verdict
    /// Index in `steps` of the rule that decided the verdict: the capturing rule, the drop,
    /// the rule that let the packet go (a RETURN of the capture chains), the rule explain
    /// cannot evaluate; nil when the packet went through without meeting such a rule.
    public var decisive: Int?
    /// Facts of the path that no rule shows (the lo re-entry, missing IPv6 rules).
    public var notes: [String]
    /// Where it goes: in the pod, out of it, or forwarded through it.
    public var delivery: Delivery = .none
    /// Its destination after the rules (nat's rewrite, if any): the local address of the
    /// socket that gets it when it is delivered in the pod; nil when unknown (the pod's
    /// address, or the address of the interface a REDIRECT used, without `--pod-ip`).
    public var destination: IPAddress?
    public var destinationPort: Port
    /// Whether nat rewrote the destination (the receiving socket reads the packet's own
    /// destination as `SO_ORIGINAL_DST`).
    public var rewritten: Bool = false

    public init(
        packet: Packet, backend: Backend, steps: [Step], verdict: Verdict, decisive: Int?, notes: [String]
    ) {
        self.packet = packet
        self.backend = backend
        self.steps = steps
        self.verdict = verdict
        self.decisive = decisive
        self.notes = notes
        destination = packet.destination
        destinationPort = packet.destinationPort
    }
}

/// Walks packets through a `Ruleset` the way netfilter does for a connection's first
/// packet: every hook the packet passes, in order, and each hook's tables in priority order
/// (raw, mangle, nat, filter), each from its built-in chain, with jumps, returns and marks.
///
/// - `in`: PREROUTING (raw, mangle, nat); then the routing decision: to the pod (its own
///   address, loopback, a redirect, or a mark the TPROXY route sends to `lo`) INPUT (mangle,
///   filter, nat), else FORWARD (mangle, filter) and POSTROUTING (mangle, nat), or a drop
///   when the pod does not forward.
/// - `out`: OUTPUT (raw, mangle, nat, filter), POSTROUTING (mangle, nat); a packet routed
///   to `lo` (a local destination, a redirect, a mark the TPROXY route takes) comes back in:
///   PREROUTING raw and mangle (not nat: its NAT was decided in OUTPUT), INPUT mangle and
///   filter (not nat: decided in POSTROUTING).
///
/// Targets: ACCEPT ends the table's traversal for this hook, DROP the packet; REDIRECT ends
/// the nat table and rewrites the destination (to loopback in OUTPUT and on `lo`, to the
/// input interface's address in PREROUTING); TPROXY ends the mangle table only: it assigns
/// the listener's socket and sets the mark, nat still runs (a later REDIRECT rewrites the
/// destination, and the TPROXY socket still gets the packet, at the rewritten address);
/// marks are visible to later rules and to routing.
public struct Explainer: Sendable {
    public let ruleset: Ruleset
    /// The pod's addresses and routes, when known: the local/forwarded decision and the
    /// address of `:PORT` and of a REDIRECT depend on them.
    public let pod: PodNetwork?
    /// By rule id, what the walk reads of each rule (copying whole `RuleEntry` values, with
    /// their texts, would cost more than the walk).
    let matchesByID: [[Match]?]
    let targetsByID: [Target?]
    /// Whether the rule has a list (its iptables line is the matching item's).
    let listByID: [Bool]
    /// Per family, the rule ids of each (table, chain) at `slot(table, chain)`.
    let views: [Family: [[Int]]]
    static let empty = [[Int]](repeating: [], count: Table.allCases.count * chainCount)

    public init(ruleset: Ruleset, pod: PodNetwork? = nil) {
        self.ruleset = ruleset
        self.pod = pod
        matchesByID = ruleset.entries.map(\.matches)
        targetsByID = ruleset.entries.map(\.target)
        listByID = ruleset.entries.map { $0.iptables == nil }
        views = ruleset.chains.mapValues { chains in
            var dense = Self.empty
            for (key, ids) in chains { dense[Self.slot(key.table, key.chain)] = ids }
            return dense
        }
    }

    static let chainCount = Hook.allCases.count + OwnChain.allCases.count

    /// A (table, chain) pair as an index (array lookups instead of hashing in the walk).
    static func slot(_ table: Table, _ chain: Chain) -> Int {
        let c =
            switch chain {
            case .builtin(let hook): Hook.allCases.firstIndex(of: hook)!
            case .own(let own): Hook.allCases.count + OwnChain.allCases.firstIndex(of: own)!
            }
        return Table.allCases.firstIndex(of: table)! * chainCount + c
    }

    /// The packet as it changes on its way.
    struct Flow {
        var destination: IPAddress?
        var destinationPort: Port
        var source: IPAddress?
        var mark: UInt32
        var connmark: UInt32 = 0
        var inInterface: InterfaceName?
        var outInterface: InterfaceName?
        /// Whether the packet still carries its socket (OUTPUT hooks): owner matches need one.
        var socket: Bool
    }

    /// How a hook's traversal of one table ended.
    enum Outcome {
        case policy
        case accepted
        case dropped(Int)
        case redirected(Int, Port)
        case tproxied(Int, Port, Mark)
        case uncertain(Int)
    }

    /// The state of one packet's walk (nothing of it outlives the packet).
    struct Walk {
        var result: Explanation
        var flow: Flow
        var redirectedAt: (step: Int, port: Port)?
        var tproxiedAt: (step: Int, port: Port, mark: Mark)?
        var lastLetGo: Int?
        /// Set when the packet's fate is sealed (dropped, uncertain).
        var done = false
    }

    public func explain(_ packet: Packet) -> Explanation {
        let view = views[packet.family] ?? Self.empty
        var walk = Walk(
            result: Explanation(
                packet: packet, backend: ruleset.backend, steps: [], verdict: .notCaptured, decisive: nil, notes: []),
            flow: Flow(
                destination: packet.destination, destinationPort: packet.destinationPort, source: packet.source,
                mark: packet.mark.value, socket: packet.direction == .out))
        walk.result.steps.reserveCapacity(8)
        if views[packet.family] == nil {
            walk.result.notes.append(
                "no \(packet.family.rawValue) rules are installed (\(ruleset.backend == .iptables ? "ip6tables gets rules only with IPv6 on" : "no table")): nothing captures it"
            )
        }
        if packet.destination == nil {
            if let own = pod?.address(on: packet.interface, packet.family) {
                walk.flow.destination = own
            } else {
                walk.result.notes.append(
                    "the pod's address is not known (give --pod-ip, or use --live): rules naming addresses are taken not to match it"
                )
            }
        }
        switch packet.direction {
        case .out: walkOut(packet, view, &walk)
        case .in: walkIn(packet, view, &walk)
        }
        var result = walk.result
        result.destination = walk.flow.destination
        result.destinationPort = walk.flow.destinationPort
        result.rewritten = walk.redirectedAt != nil
        if walk.done {
            result.delivery = .none
            return result
        }
        if let t = walk.tproxiedAt {
            result.verdict = .tproxied(port: t.port, mark: t.mark)
            result.decisive = t.step
        } else if let r = walk.redirectedAt {
            let listener = ruleset.entries[result.steps[r.step].entry].origin.first {
                [.proxyPort, .inboundCapturePort, .dns].contains($0)
            }
            result.verdict = .redirected(port: r.port, listener: listener)
            result.decisive = r.step
        } else {
            result.verdict = .notCaptured
            result.decisive = walk.lastLetGo
        }
        return result
    }

    /// Whether routing sends an arriving packet to the pod itself: a mark the TPROXY route
    /// sends to `lo`, the pod's own address (or loopback), or, when the pod's addresses
    /// are not known, any address (explain cannot tell).
    func routedLocally(_ flow: Flow, _ family: Family) -> Bool {
        if routesToLoopback(flow.mark, family) { return true }  // local default dev lo
        guard let destination = flow.destination, let pod else { return true }
        return pod.isLocal(destination)
    }

    /// Whether the TPROXY route (`fwmark M lookup T`: `local default dev lo`) takes a packet
    /// with this mark.
    func routesToLoopback(_ mark: UInt32, _ family: Family) -> Bool {
        guard let route = ruleset.tproxyRoute else { return false }
        return route.mark.value == mark && ruleset.tproxyRouteFamilies.contains(family)
    }

    func walkOut(_ packet: Packet, _ view: [[Int]], _ walk: inout Walk) {
        // The route of the socket's packet: its own addresses and a mark the TPROXY route
        // takes go through lo.
        let local = packet.destination.map { pod?.isLocal($0) ?? false } ?? false
        let marked = routesToLoopback(packet.mark.value, packet.family)
        if marked && !local && packet.proto == .tcp && packet.family == .ipv4 && packet.source == nil
            && packet.destination.map({ !$0.isLoopback }) ?? false
        {
            // connect's second route lookup, from the source the first gave (the destination
            // itself: the route is `local`), finds no interface with that address.
            walk.result.verdict = .dropped
            walk.done = true
            walk.result.notes.append(
                "its mark selects the TPROXY route (local default dev lo): connect takes the destination as its source, which is no address of the pod, and fails (ENETUNREACH); no packet is sent"
            )
            return
        }
        if packet.interface == .loopback || local || marked {
            walk.flow.outInterface = .loopback
            if walk.flow.source == nil, let destination = packet.destination {
                // The kernel's source for a `local` route: IPv4 the destination itself; IPv6
                // the address its source selection prefers on lo (meshinit's ::6, when the
                // plan has IPv6), else one of the pod's.
                walk.flow.source =
                    local || packet.family == .ipv4
                    ? destination : ruleset.loopbackSource ?? pod?.address(on: nil, .ipv6)
            }
        } else if packet.interfaceDefaulted, let destination = packet.destination, let via = pod?.route(destination) {
            walk.flow.outInterface = via
        } else {
            walk.flow.outInterface = packet.interface
        }
        let mark = walk.flow.mark
        guard traverse(.output, Self.rawMangle, capturing: Self.none, view, packet, &walk) else { return }
        // mangle OUTPUT reroutes a packet whose mark it changed (nft: a `type route` chain).
        if walk.flow.mark != mark, routesToLoopback(walk.flow.mark, packet.family) {
            walk.flow.outInterface = .loopback
        }
        guard traverse(.output, Self.natFilter, capturing: Self.natOnly, view, packet, &walk) else { return }
        if walk.redirectedAt != nil { walk.flow.outInterface = .loopback }
        guard traverse(.postrouting, Self.mangleNat, capturing: Self.none, view, packet, &walk) else { return }
        guard walk.flow.outInterface == .loopback else {
            walk.result.delivery = .leaves(walk.flow.outInterface ?? packet.interface)
            return
        }
        // The packet stays in the pod: it comes back in on lo. Its conntrack entry already
        // has its NAT (DST decided in OUTPUT, SRC in POSTROUTING): nat does not see it again.
        walk.flow.outInterface = nil
        walk.flow.inInterface = .loopback
        walk.flow.socket = false
        let before = walk.result.steps.count
        let going = traverse(.prerouting, Self.rawMangle, capturing: Self.none, view, packet, &walk)
        if walk.result.steps.count > before {
            walk.result.notes.append(
                "it stays in the pod and comes back in on lo: raw and mangle PREROUTING see it again, nat PREROUTING does not (its NAT was decided in OUTPUT)"
            )
        }
        guard going, traverse(.input, Self.mangleFilter, capturing: Self.none, view, packet, &walk) else { return }
        walk.result.delivery = .local
    }

    func walkIn(_ packet: Packet, _ view: [[Int]], _ walk: inout Walk) {
        walk.flow.inInterface = packet.interface
        guard traverse(.prerouting, Self.rawMangleNat, capturing: Self.mangleNat, view, packet, &walk) else {
            return
        }
        let local = walk.redirectedAt != nil || routedLocally(walk.flow, packet.family)
        if !local, let t = walk.tproxiedAt {
            // ip_forward drops a packet that already has a socket (TPROXY's).
            walk.result.verdict = .dropped
            walk.result.decisive = t.step
            walk.done = true
            walk.result.notes.append(
                "TPROXY gave it a socket, but no TPROXY route takes its mark for \(packet.family.rawValue) and its destination is not the pod's: routed on, the kernel drops a packet that has a socket"
            )
            return
        }
        if local {
            guard traverse(.input, Self.mangleFilterNat, capturing: Self.none, view, packet, &walk) else { return }
            walk.result.delivery = .local
            return
        }
        let destination = walk.flow.destination!
        if pod?.forwarding[packet.family] == false {
            walk.result.verdict = .dropped
            walk.result.decisive = nil
            walk.done = true
            walk.result.notes.append(
                "\(destination) is not the pod's address and the pod does not forward \(packet.family.rawValue): the kernel drops it"
            )
            return
        }
        let via = pod?.route(destination)
        walk.flow.outInterface = via
        guard traverse(.forward, Self.mangleFilter, capturing: Self.none, view, packet, &walk),
            traverse(.postrouting, Self.mangleNat, capturing: Self.none, view, packet, &walk)
        else { return }
        walk.result.delivery = .forwarded(via)
    }

    // The tables of each hook, in priority order (constants: no array per packet).
    static let rawMangleNat: [Table] = [.raw, .mangle, .nat]
    static let mangleFilterNat: [Table] = [.mangle, .filter, .nat]
    static let rawMangle: [Table] = [.raw, .mangle]
    static let natFilter: [Table] = [.nat, .filter]
    static let mangleNat: [Table] = [.mangle, .nat]
    static let mangleFilter: [Table] = [.mangle, .filter]
    static let natOnly: [Table] = [.nat]
    static let none: [Table] = []

    /// Runs the hook's tables in order; false when the packet's fate is sealed. A RETURN
    /// or ACCEPT in one of the `capturing` tables is a rule that let the packet go.
    func traverse(
        _ hook: Hook, _ tables: [Table], capturing: [Table], _ view: [[Int]], _ packet: Packet, _ walk: inout Walk
    ) -> Bool {
        for table in tables {
            let before = walk.result.steps.count
            let outcome = run(table, hook, view, packet, &walk.flow, &walk.result.steps)
            switch outcome {
            case .policy, .accepted:
                if capturing.contains(table), let i = lastReturn(walk.result.steps, from: before) { walk.lastLetGo = i }
            case .dropped(let i):
                walk.result.verdict = .dropped
                walk.result.decisive = i
                walk.done = true
                return false
            case .redirected(let i, let port):
                walk.redirectedAt = (i, port)
            case .tproxied(let i, let port, let mark):
                // TPROXY ends mangle only: the packet goes on to nat with its socket and mark.
                walk.tproxiedAt = (i, port, mark)
            case .uncertain(let i):
                walk.result.verdict = .uncertain
                walk.result.decisive = i
                walk.done = true
                return false
            }
        }
        return true
    }

    /// The last step from `start` on that returned or accepted (a rule that let the packet go).
    func lastReturn(_ steps: [Step], from start: Int) -> Int? {
        var i = steps.count - 1
        while i >= start {
            switch targetsByID[steps[i].entry] {
            case .return?, .accept?: return i
            default: i -= 1
            }
        }
        return nil
    }

    /// One table's chain for `hook`, from the built-in chain down its jumps.
    func run(
        _ table: Table, _ hook: Hook, _ view: [[Int]], _ packet: Packet, _ flow: inout Flow,
        _ steps: inout [Step]
    ) -> Outcome {
        var chain = Chain.builtin(hook)
        var rules = view[Self.slot(table, chain)]
        var index = 0
        var stack: [(chain: Chain, rules: [Int], index: Int)] = []
        var budget = 1_000_000  // netfilter refuses loops; a bound all the same
        while budget > 0 {
            budget -= 1
            guard index < rules.count else {
                guard let caller = stack.popLast() else { return .policy }
                (chain, rules, index) = caller
                continue
            }
            let id = rules[index]
            index += 1
            guard let matches = matchesByID[id] else {
                steps.append(Step(hook: hook, table: table, chain: chain, entry: id, item: nil))
                return .uncertain(steps.count - 1)
            }
            guard let item = self.matches(matches, id, chain, packet, flow) else { continue }
            steps.append(Step(hook: hook, table: table, chain: chain, entry: id, item: item))
            guard let target = targetsByID[id] else { return .uncertain(steps.count - 1) }
            switch target {
            case .jump(let own):
                stack.append((chain, rules, index))
                chain = .own(own)
                rules = view[Self.slot(table, chain)]
                index = 0
            case .return:
                guard let caller = stack.popLast() else { return .policy }
                (chain, rules, index) = caller
            case .accept:
                return .accepted
            case .drop:
                return .dropped(steps.count - 1)
            case .redirect(let port):
                // REDIRECT: to the loopback address in OUTPUT, to the input interface's own
                // address in PREROUTING (lo's is the loopback address).
                if hook == .output || flow.inInterface == .loopback {
                    flow.destination = packet.family == .ipv4 ? IPAddress(ipv4: 0x7f00_0001) : IPAddress(ipv6: 0, 1)
                } else {
                    flow.destination = pod?.address(on: flow.inInterface, packet.family)
                }
                flow.destinationPort = port
                return .redirected(steps.count - 1, port)
            case .tproxy(let port, let mark):
                flow.mark = mark.value
                return .tproxied(steps.count - 1, port, mark)
            case .setMark(let mark):
                flow.mark = mark.value
            case .saveMarkToConnmark:
                flow.connmark = flow.mark
            case .restoreMarkFromConnmark:
                flow.mark = flow.connmark
            case .conntrackZone:
                break
            }
        }
        return .uncertain(max(steps.count - 1, 0))
    }

    /// Nil if the rule does not match the packet; else the iptables line of the item that
    /// matched for a rule with a list, or nil inside (the rule's own line stands).
    func matches(_ matches: [Match], _ id: Int, _ chain: Chain, _ packet: Packet, _ flow: Flow) -> String?? {
        var item: Rule?
        for (i, match) in matches.enumerated() {
            switch match {
            case .inInterface(let name):
                guard let iface = flow.inInterface, Self.interface(iface, matches: name) else { return nil }
            case .outInterface(let name):
                guard let iface = flow.outInterface, Self.interface(iface, matches: name) else { return nil }
            case .source(let cidr, let negated):
                guard cidr.family == packet.family else { return nil }
                guard (flow.source.map(cidr.contains) ?? false) != negated else { return nil }
            case .destination(let cidr, let negated):
                guard cidr.family == packet.family else { return nil }
                guard (flow.destination.map(cidr.contains) ?? false) != negated else { return nil }
            case .destinations(let list):
                guard let destination = flow.destination, let hit = list.first(where: { $0.contains(destination) })
                else { return nil }
                if listByID[id], let target = targetsByID[id] {
                    var rule = Rule(matches, target)
                    rule.matches[i] = .destination(hit, negated: false)
                    item = rule
                }
            case .l4proto(let proto, let scope):
                if scope == .nftOnly && ruleset.backend == .iptables { continue }
                guard packet.proto == proto else { return nil }
            case .destinationPorts(let proto, let ranges, let negated):
                guard packet.proto == proto else { return nil }
                let port = flow.destinationPort.value
                let hit = ranges.firstIndex { $0.first.value <= port && port <= $0.last.value }
                guard (hit != nil) != negated else { return nil }
                if let hit, !negated, ranges.count > 1, listByID[id], let target = targetsByID[id] {
                    var rule = item ?? Rule(matches, target)
                    rule.matches[i] = .destinationPorts(proto, [ranges[hit]], negated: false)
                    item = rule
                }
            case .sourcePort(let proto, let range):
                guard packet.proto == proto, let port = packet.sourcePort,
                    range.first.value <= port.value && port.value <= range.last.value
                else { return nil }
            case .owner(let owner, let negated):
                // Only a packet that still has its socket (OUTPUT) has an owner.
                guard flow.socket else { return nil }
                let equal: Bool =
                    switch owner {
                    case .uid(let id): packet.uid == id
                    case .gid(let id): packet.gid == id
                    }
                guard equal != negated else { return nil }
            case .mark(let mark, let negated):
                guard (flow.mark == mark.value) != negated else { return nil }
            case .connmark(let mark):
                guard flow.connmark == mark.value else { return nil }
            case .conntrackState(let states):
                // A connection's first packet is NEW: none of INVALID, RELATED, ESTABLISHED.
                _ = states
                return nil
            }
        }
        if !listByID[id] { return .some(nil) }
        return .some(item.map { RuleEntry.iptablesLine($0, chain: chain) })
    }

    /// `eth+` is a prefix (iptables' spelling of nft's `"eth*"`); any other name is exact.
    static func interface(_ iface: InterfaceName, matches pattern: InterfaceName) -> Bool {
        if pattern.name.hasSuffix("+") { return iface.name.hasPrefix(pattern.name.dropLast()) }
        return iface == pattern
    }
}
