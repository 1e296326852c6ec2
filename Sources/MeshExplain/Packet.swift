import MeshModel

/// Which way a packet goes through the pod's network namespace.
public enum Direction: String, Sendable, Hashable {
    /// Locally generated (a socket of the pod: app or proxy): OUTPUT hooks, then, when it
    /// stays in the pod (over `lo`), PREROUTING.
    case out
    /// Arriving from outside on an interface: PREROUTING hooks.
    case `in`
}

/// The first packet of a connection (or a UDP datagram) to explain, e.g.
/// `out tcp 10.0.0.5:80 uid=1000` or `in tcp :8080 iface=eth0`.
///
/// Syntax: `DIRECTION PROTOCOL ENDPOINT [KEY=VALUE...]`, words separated by blanks:
/// - DIRECTION: `out` or `in`;
/// - PROTOCOL: `tcp` or `udp`;
/// - ENDPOINT: the destination, `ADDR:PORT` (`10.0.0.5:80`, `[fd00::1]:80`); for `in`,
///   `:PORT` is the pod's own address (IPv4, or IPv6 with `family=ipv6`);
/// - keys, each at most once: `uid=` and `gid=` (out only; the socket's owner, default uid 0
///   and gid = uid), `iface=` (out: the output interface, default `lo` for a loopback
///   destination, else `eth0`; in: the input interface, default `eth0`, never `lo`: a packet
///   arriving on `lo` is the second half of an `out` packet), `src=` (source address; out
///   default: `127.0.0.1`/`::1` for a loopback destination, the destination itself for any
///   other `iface=lo` destination (a local address), else the pod's address; in default: a
///   remote address), `sport=` (source port, default an ephemeral port), `mark=` (the
///   packet mark before the rules, default 0), `family=` (with `:PORT` only).
public struct Packet: Sendable, Hashable, CustomStringConvertible {
    public var direction: Direction
    public var proto: L4Protocol
    public var family: Family
    /// nil: the pod's own address (an `in` packet given as `:PORT`).
    public var destination: IPAddress?
    public var destinationPort: Port
    /// nil: an address no rule names (the pod's own for `out`, a remote one for `in`).
    public var source: IPAddress?
    /// nil: an ephemeral port no rule names.
    public var sourcePort: Port?
    /// The socket's owner (`out` only).
    public var uid: NumericID?
    public var gid: NumericID?
    /// The output (`out`) or input (`in`) interface.
    public var interface: InterfaceName
    /// Whether `interface` is the default (not given): explain may then take the pod's
    /// route instead.
    public var interfaceDefaulted = false
    public var mark: Mark

    /// The packet with every default spelled out, in the input syntax.
    public var description: String {
        var out = ""
        write(to: &out)
        return out
    }

    /// `description`, appended to `out`; `endpoint` is `endpoint(destination,
    /// destinationPort)` when the caller has it already.
    public func write<Out: TextOutput>(to out: inout Out, endpoint given: String? = nil) {
        out += direction == .out ? (proto == .tcp ? "out tcp " : "out udp ") : (proto == .tcp ? "in tcp " : "in udp ")
        out += given ?? endpoint(destination, destinationPort)
        if destination == nil && family == .ipv6 { out += " family=ipv6" }
        if let uid {
            out += " uid="
            out += String(uid.value)
        }
        if let gid {
            out += " gid="
            out += String(gid.value)
        }
        out += " iface="
        out += interface.name
        if let source {
            out += " src="
            out += source.description
        }
        if let sourcePort {
            out += " sport="
            out += String(sourcePort.value)
        }
        if mark.value != 0 {
            out += " mark="
            out += String(mark.value)
        }
    }

    /// `10.0.0.5:80`, `[fd00::1]:80`, `:8080` (the pod's address).
    public func endpoint(_ address: IPAddress?, _ port: Port) -> String {
        var out = ""
        if let address {
            if address.family == .ipv6 {
                out = "["
                out += address.description
                out += "]"
            } else {
                out = address.description
            }
        }
        out += ":"
        out += port.description
        return out
    }

    static let defaultInterface = InterfaceName("eth0")!

    /// Parses one packet (see the type's documentation).
    ///
    /// - Throws: `PacketError` naming the packet and what is wrong with it.
    public static func parse(_ line: Substring) throws(PacketError) -> Packet {
        // On UTF-8 bytes throughout: `explain -` reads thousands of packets.
        let words = Self.words(line)
        func fail(_ reason: String) -> PacketError { PacketError(text: String(line), reason: reason) }
        guard words.count >= 3 else {
            throw fail("expected DIRECTION PROTOCOL ENDPOINT [KEY=VALUE...], e.g. out tcp 10.0.0.5:80 uid=1000")
        }
        guard let direction = keyword(words[0], [("out", Direction.out), ("in", .in)]) else {
            throw fail("direction \(quoted(String(words[0]))): expected out or in")
        }
        guard let proto = keyword(words[1], [("tcp", L4Protocol.tcp), ("udp", .udp)]) else {
            throw fail("protocol \(quoted(String(words[1]))): expected tcp or udp")
        }
        let endpoint = words[2]
        guard let colon = endpoint.utf8.lastIndex(of: UInt8(ascii: ":")),
            let port = Port(parsing: endpoint[endpoint.utf8.index(after: colon)...])
        else {
            throw fail(
                "endpoint \(quoted(String(endpoint))): expected ADDR:PORT, [IPV6]:PORT or :PORT with a port 1-65535")
        }
        var host = endpoint[..<colon]
        var destination: IPAddress?
        if host.utf8.first == UInt8(ascii: "[") && host.utf8.last == UInt8(ascii: "]") {
            host = host.dropFirst().dropLast()
            guard let address = IPAddress(host), address.family == .ipv6 else {
                throw fail("endpoint \(quoted(String(endpoint))): \(quoted(String(host))) is not an IPv6 address")
            }
            destination = address
        } else if !host.isEmpty {
            guard let address = IPAddress(host), address.family == .ipv4 else {
                throw fail(
                    "endpoint \(quoted(String(endpoint))): \(quoted(String(host))) is not an IPv4 address (write IPv6 as [ADDR]:PORT)"
                )
            }
            destination = address
        }

        var given = [Substring?](repeating: nil, count: Key.allCases.count)
        for word in words.dropFirst(3) {
            guard let eq = word.utf8.firstIndex(of: UInt8(ascii: "=")) else {
                throw fail("\(quoted(String(word))): expected KEY=VALUE (uid, gid, iface, src, sport, mark, family)")
            }
            let name = word[..<eq]
            guard let key = keyword(name, Key.choices) else {
                throw fail("unknown key \(quoted(String(name))) (expected uid, gid, iface, src, sport, mark, family)")
            }
            guard given[key.rawValue] == nil else { throw fail("key \(quoted(String(name))) given twice") }
            given[key.rawValue] = word[word.utf8.index(after: eq)...]
        }
        let values = Values(given: given)

        var family = destination?.family ?? .ipv4
        if let text = values[.family] {
            guard destination == nil else { throw fail("family= goes with :PORT only (the address has a family)") }
            guard let given = Family(rawValue: String(text)) else {
                throw fail("family \(quoted(String(text))): expected ipv4 or ipv6")
            }
            family = given
        }
        if direction == .out && destination == nil {
            throw fail("an out packet needs a destination address (ADDR:PORT)")
        }

        var uid: NumericID?
        var gid: NumericID?
        if direction == .in {
            if let key = [Key.uid, .gid].first(where: { values[$0] != nil })?.name {
                throw fail("\(key)= is for out packets only (an arriving packet has no socket owner)")
            }
        } else {
            uid =
                try values[.uid].map { text throws(PacketError) in
                    guard let id = NumericID(parsing: text) else {
                        throw fail("uid \(quoted(String(text))): expected 0-4294967294")
                    }
                    return id
                } ?? NumericID(0)!
            gid =
                try values[.gid].map { text throws(PacketError) in
                    guard let id = NumericID(parsing: text) else {
                        throw fail("gid \(quoted(String(text))): expected 0-4294967294")
                    }
                    return id
                } ?? uid
        }

        let loopback = destination?.isLoopback ?? false
        var interface = direction == .out && loopback ? InterfaceName.loopback : defaultInterface
        let interfaceDefaulted = values[.iface] == nil && !loopback
        if let text = values[.iface] {
            guard let name = InterfaceName(text), text.utf8.last != UInt8(ascii: "+") else {
                throw fail("iface \(quoted(String(text))): not an interface name (1-15 letters, digits, _ . - @)")
            }
            interface = name
        }
        if direction == .in && interface == .loopback {
            throw fail("iface=lo: a packet arriving on lo was sent in the pod; explain it as an out packet")
        }
        if direction == .out && loopback && interface != .loopback {
            throw fail("a loopback destination leaves through lo, not \(interface)")
        }

        var source: IPAddress?
        if let text = values[.src] {
            guard let address = IPAddress(text) else { throw fail("src \(quoted(String(text))): not an IP address") }
            guard address.family == family else {
                throw fail("src \(quoted(String(text))): not an \(family.rawValue) address")
            }
            source = address
        } else if direction == .out && interface == .loopback, let destination {
            source =
                loopback
                ? (family == .ipv4 ? IPAddress(ipv4: 0x7f00_0001) : IPAddress(ipv6: 0, 1)) : destination
        }
        var sourcePort: Port?
        if let text = values[.sport] {
            guard let port = Port(parsing: text) else {
                throw fail("sport \(quoted(String(text))): expected a port 1-65535")
            }
            sourcePort = port
        }
        var mark = Mark(0)
        if let text = values[.mark] {
            guard let value = Mark(parsing: text) else {
                throw fail("mark \(quoted(String(text))): expected 0-4294967295")
            }
            mark = value
        }
        return Packet(
            direction: direction, proto: proto, family: family, destination: destination, destinationPort: port,
            source: source, sourcePort: sourcePort, uid: uid, gid: gid, interface: interface,
            interfaceDefaulted: interfaceDefaulted, mark: mark)
    }

    public static func parse(_ line: String) throws(PacketError) -> Packet { try parse(line[...]) }

    /// The value of the keyword `word` is (compared as bytes), or nil.
    static func keyword<T>(_ word: Substring, _ choices: [(String, T)]) -> T? {
        choices.first { word.utf8.elementsEqual($0.0.utf8) }?.1
    }

    /// The keys of a packet.
    enum Key: Int, CaseIterable {
        case uid, gid, iface, src, sport, mark, family
        var name: String { ["uid", "gid", "iface", "src", "sport", "mark", "family"][rawValue] }
        static let choices = allCases.map { ($0.name, $0) }
    }

    /// The values given, by key.
    struct Values {
        var given: [Substring?]
        subscript(_ key: Key) -> Substring? { given[key.rawValue] }
    }

    /// `text` split at blanks (spaces, tabs, a CR of a CRLF line end), on its bytes.
    static func words(_ text: Substring) -> [Substring] {
        var out: [Substring] = []
        let utf8 = text.utf8
        var start: Substring.UTF8View.Index?
        var i = utf8.startIndex
        while i != utf8.endIndex {
            let b = utf8[i]
            if b == 0x20 || b == 0x09 || b == 0x0D {
                if let s = start { out.append(text[s..<i]) }
                start = nil
            } else if start == nil {
                start = i
            }
            i = utf8.index(after: i)
        }
        if let s = start { out.append(text[s..<utf8.endIndex]) }
        return out
    }

    /// Packets from command-line words: each packet starts at a word `out` or `in`, so
    /// `out tcp 10.0.0.5:80 uid=1000 in tcp :8080` is two packets; a word may also hold a
    /// whole packet (`'out tcp 10.0.0.5:80 uid=1000'`).
    public static func parse(words: [String]) throws(PacketError) -> [Packet] {
        var packets: [Packet] = []
        var current: [Substring] = []
        func flush() throws(PacketError) {
            if !current.isEmpty { packets.append(try parse(current.joined(separator: " ")[...])) }
            current = []
        }
        for argument in words {
            for word in argument.split(whereSeparator: { $0 == " " || $0 == "\t" }) {
                if word == "out" || word == "in" { try flush() }
                current.append(word)
            }
        }
        try flush()
        return packets
    }
}

/// A packet that cannot be explained as written.
public struct PacketError: Error, Sendable, Hashable, CustomStringConvertible {
    public var text: String
    public var reason: String

    public var description: String { "invalid packet \(quoted(text)): \(reason)" }
}
