import MeshModel

/// What explain knows of the pod's network: its addresses (a packet to one of them, or to a
/// loopback address, is delivered in the pod; any other destination is routed through it),
/// its routes (through which interface a packet leaves or is forwarded) and whether it
/// forwards. From `--pod-ip` (see `parse`) or, with `--live`, read from the namespace.
public struct PodNetwork: Sendable, Hashable {
    /// One address of an interface of the pod.
    public struct Address: Sendable, Hashable {
        public var interface: InterfaceName
        public var address: IPAddress
        public init(interface: InterfaceName, address: IPAddress) {
            self.interface = interface
            self.address = address
        }
    }

    /// A route: destinations in `destination` leave through `interface`.
    public struct Route: Sendable, Hashable {
        public var destination: CIDR
        public var interface: InterfaceName
        public init(destination: CIDR, interface: InterfaceName) {
            self.destination = destination
            self.interface = interface
        }
    }

    /// In `getifaddrs` (or `--pod-ip`) order: the first of a family on an interface is the
    /// one nat REDIRECT rewrites to for a packet arriving there.
    public var addresses: [Address]
    public var routes: [Route]
    /// Whether the pod forwards each family; a family not here is assumed to forward (a pod
    /// with VMs behind `-k` interfaces does).
    public var forwarding: [Family: Bool]

    public init(addresses: [Address], routes: [Route] = [], forwarding: [Family: Bool] = [:]) {
        self.addresses = addresses
        self.routes = routes
        self.forwarding = forwarding
    }

    /// Whether a packet to `address` is for the pod itself (its own address or loopback).
    public func isLocal(_ address: IPAddress) -> Bool {
        address.isLoopback || addresses.contains { $0.address == address }
    }

    /// The address nat REDIRECT gives a packet arriving on `interface` (its first address of
    /// the family), else the pod's first address of the family.
    public func address(on interface: InterfaceName?, _ family: Family) -> IPAddress? {
        let own = addresses.filter { $0.address.family == family && !$0.address.isLoopback }
        return (own.first { $0.interface == interface } ?? own.first)?.address
    }

    /// The interface of the longest route that holds `destination`, nil when none does.
    public func route(_ destination: IPAddress) -> InterfaceName? {
        var best: Route?
        for route in routes where route.destination.family == destination.family {
            guard route.destination.contains(destination) else { continue }
            if best.map({ route.destination.prefixLength > $0.destination.prefixLength }) ?? true { best = route }
        }
        return best?.interface
    }

    /// `--pod-ip`'s value: items separated by commas, each `[IFACE=]ADDR[/LEN]` (IFACE
    /// default `eth0`). `/LEN` adds the connected route of that subnet on IFACE; the first
    /// address of each family also stands for the default route (through its interface).
    ///
    /// - Throws: a message naming the bad item.
    public static func parse(_ values: [String]) throws(PodNetworkError) -> PodNetwork {
        var network = PodNetwork(addresses: [])
        var defaults: [Family: InterfaceName] = [:]
        for value in values {
            for item in value.split(separator: ",", omittingEmptySubsequences: false) {
                var text = item[...]
                var interface = InterfaceName("eth0")!
                if let eq = text.firstIndex(of: "=") {
                    guard let name = InterfaceName(text[..<eq]), !text[..<eq].hasSuffix("+") else {
                        throw PodNetworkError(item: String(item), reason: "not an interface name before =")
                    }
                    interface = name
                    text = text[text.index(after: eq)...]
                }
                var prefix: Int?
                if let slash = text.firstIndex(of: "/") {
                    guard let cidr = CIDR(text) else {
                        throw PodNetworkError(item: String(item), reason: "expected ADDR/LEN")
                    }
                    prefix = cidr.prefixLength
                    text = text[..<slash]
                }
                guard let address = IPAddress(text) else {
                    throw PodNetworkError(item: String(item), reason: "expected [IFACE=]ADDR[/LEN]")
                }
                network.addresses.append(Address(interface: interface, address: address))
                if let prefix, let subnet = CIDR(address: address, prefixLength: prefix) {
                    network.routes.append(Route(destination: subnet, interface: interface))
                }
                if defaults[address.family] == nil { defaults[address.family] = interface }
            }
        }
        for (family, interface) in defaults.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            let any = family == .ipv4 ? CIDR("0.0.0.0/0")! : CIDR("::/0")!
            network.routes.append(Route(destination: any, interface: interface))
        }
        return network
    }

    /// Routes from `/proc/net/route` (IPv4, the main table) and `/proc/net/ipv6_route`
    /// (local and unreachable entries skipped), as the kernel prints them.
    public static func routes(procRoute: String, procIPv6Route: String) -> [Route] {
        var out: [Route] = []
        for line in procRoute.split(separator: "\n").dropFirst() {
            let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard f.count >= 8, let name = InterfaceName(f[0]), let dst = UInt32(f[1], radix: 16),
                let mask = UInt32(f[7], radix: 16)
            else { continue }
            // Little-endian hex of network-order words.
            let address = IPAddress(ipv4: dst.byteSwapped)
            let length = mask.nonzeroBitCount
            if let cidr = CIDR(address: address, prefixLength: length) {
                out.append(Route(destination: cidr, interface: name))
            }
        }
        for line in procIPv6Route.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count >= 10, f[0].count == 32, let length = Int(f[1], radix: 16), let name = InterfaceName(f[9]),
                name != .loopback, let flags = UInt32(f[8], radix: 16), flags & 0x0200 == 0  // RTF_REJECT
            else { continue }
            let hex = f[0]
            guard let high = UInt64(hex.prefix(16), radix: 16), let low = UInt64(hex.suffix(16), radix: 16),
                let cidr = CIDR(address: IPAddress(ipv6: high, low), prefixLength: length)
            else { continue }
            out.append(Route(destination: cidr, interface: name))
        }
        return out
    }
}

/// A bad `--pod-ip` item.
public struct PodNetworkError: Error, Sendable, Hashable, CustomStringConvertible {
    public var item: String
    public var reason: String
    public var description: String { "--pod-ip \(quoted(item)): \(reason)" }
}
