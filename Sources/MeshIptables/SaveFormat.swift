import MeshModel
import MeshRender

/// One table of an `iptables-save` dump.
public struct SavedTable: Sendable, Hashable {
    public var name: String
    /// Chain declarations in dump order (`:NAME POLICY [p:b]` → NAME).
    public var chains: [String]
    /// `-A CHAIN SPEC` lines in dump order.
    public var rules: [SavedRule]
    /// The table's block exactly as dumped (for a byte-exact rollback).
    public var block: String

    /// Rules of `chain`, in order.
    public func rules(in chain: String) -> [SavedRule] { rules.filter { $0.chain == chain } }
}

/// One rule line of a dump.
public struct SavedRule: Sendable, Hashable {
    public var chain: String
    /// Everything after `-A CHAIN `, as dumped (a valid spec for `-D CHAIN SPEC`).
    public var spec: String
    public var tokens: [String]
    /// `[packets:bytes]` before the rule in a dump made with `-c` (nil in one without).
    public var counter: (packets: UInt64, bytes: UInt64)? {
        counterValues.map { (packets: $0[0], bytes: $0[1]) }
    }
    var counterValues: [UInt64]? = nil
}

/// Parses `iptables-save` output (comments ignored; a rule's `[packets:bytes]`, in a dump
/// made with `-c`, kept apart from its spec).
public func parseSave(_ text: String) -> [SavedTable] {
    var tables: [SavedTable] = []
    var current: SavedTable?
    for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
        var line = String(rawLine)
        var counter: [UInt64]?
        if line.hasPrefix("["), let close = line.firstIndex(of: "]") {
            let values = line[line.index(after: line.startIndex)..<close].split(separator: ":").compactMap {
                UInt64($0)
            }
            if values.count == 2 { counter = values }
            line = String(line[line.index(after: close)...].drop { $0 == " " })
        }
        if line.hasPrefix("#") || line.isEmpty { continue }
        if line.hasPrefix("*") {
            current = SavedTable(name: String(line.dropFirst()), chains: [], rules: [], block: line + "\n")
            continue
        }
        guard var table = current else { continue }
        table.block += line + "\n"
        if line == "COMMIT" {
            tables.append(table)
            current = nil
            continue
        }
        if line.hasPrefix(":") {
            let name = line.dropFirst().split(separator: " ").first.map(String.init) ?? ""
            table.chains.append(name)
        } else if line.hasPrefix("-A ") {
            let tokens = tokenize(line)
            if tokens.count >= 2 {
                let chain = tokens[1]
                let specStart = line.index(
                    line.startIndex, offsetBy: 3 + chain.utf8.count + 1, limitedBy: line.endIndex)
                let spec = specStart.map { String(line[$0...]) } ?? ""
                table.rules.append(
                    SavedRule(chain: chain, spec: spec, tokens: Array(tokens.dropFirst(2)), counterValues: counter))
            }
        }
        current = table
    }
    return tables
}

/// Splits a dump line into words; `"..."` groups (comments) are one word, quotes kept out.
func tokenize(_ line: String) -> [String] {
    var tokens: [String] = []
    var word = ""
    var inQuotes = false
    var hasWord = false
    var escaped = false
    for ch in line {
        if escaped {
            word.append(ch)
            escaped = false
            continue
        }
        if ch == "\\" && inQuotes {
            escaped = true
            continue
        }
        if ch == "\"" {
            inQuotes.toggle()
            hasWord = true
            continue
        }
        if ch == " " && !inQuotes {
            if hasWord { tokens.append(word) }
            word = ""
            hasWord = false
            continue
        }
        word.append(ch)
        hasWord = true
    }
    if hasWord { tokens.append(word) }
    return tokens
}

/// The spec of a planned rule exactly as `iptables-save` prints it back (iptables 1.8, legacy
/// and nft variants): `-s -d -i -o -p` first, an address match of prefix 0 (`-d 0.0.0.0/0`,
/// `-d ::/0`: it matches everything) left out, networks masked, IPv6 as glibc's
/// `inet_ntop` writes it (`::10.0.0.1` for an IPv4-compatible address), the implicit
/// `-m tcp/udp` spelled out, marks in hex, targets with the defaults the kernel reports. Used
/// to decide "already installed" and for `verify`; proven against the kernel, for every rule
/// shape the planner makes, by the real-kernel tests (`KernelCanonicalTests`).
public enum SaveCanonical {
    /// The specs `iptables-save` prints for `rule` (several for a list; see `Rule.expanded`).
    public static func specs(_ rule: Rule) -> [String] { rule.expanded.map(spec) }

    public static func spec(_ rule: Rule) -> String {
        var src: [String] = []
        var dst: [String] = []
        var inIf: [String] = []
        var outIf: [String] = []
        var proto: L4Protocol?
        var ports: [String] = []
        var extensions: [String] = []
        func not(_ negated: Bool) -> [String] { negated ? ["!"] : [] }
        for match in rule.matches {
            switch match {
            case .inInterface(let name): inIf = ["-i", name.name]
            case .outInterface(let name): outIf = ["-o", name.name]
            case .source(let cidr, let negated):
                if negated || cidr.prefixLength > 0 { src = not(negated) + ["-s", networkText(cidr)] }
            case .destination(let cidr, let negated):
                if negated || cidr.prefixLength > 0 { dst = not(negated) + ["-d", networkText(cidr)] }
            case .destinations(let list): dst = ["-d", list.map(networkText).joined(separator: ",")]  // expand first
            case .l4proto(let p, let scope): if scope == .all { proto = p }
            case .destinationPorts(let p, let ranges, let negated):
                proto = p
                if ranges.count == 1 {
                    ports += ["-m", p.rawValue] + not(negated) + ["--dport", ranges[0].iptablesText]
                } else {
                    ports +=
                        ["-m", "multiport"] + not(negated) + [
                            "--dports", ranges.map(\.iptablesText).joined(separator: ","),
                        ]
                }
            case .sourcePort(let p, let range):
                proto = p
                ports += ["-m", p.rawValue, "--sport", range.iptablesText]
            case .owner(.uid(let id), let negated):
                extensions += ["-m", "owner"] + not(negated) + ["--uid-owner", "\(id)"]
            case .owner(.gid(let id), let negated):
                extensions += ["-m", "owner"] + not(negated) + ["--gid-owner", "\(id)"]
            case .mark(let mark, let negated):
                extensions += ["-m", "mark"] + not(negated) + ["--mark", hex(mark.value)]
            case .connmark(let mark): extensions += ["-m", "connmark", "--mark", hex(mark.value)]
            case .conntrackState(let states):
                let order: [ConntrackState] = [.invalid, .related, .established]
                let names = order.filter(states.contains).map { $0.rawValue.uppercased() }
                extensions += ["-m", "conntrack", "--ctstate", names.joined(separator: ",")]
            }
        }
        let protoWords = proto.map { ["-p", $0.rawValue] } ?? []
        let family = rule.family ?? .ipv4
        return (src + dst + inIf + outIf + protoWords + ports + extensions + target(rule.target, family: family))
            .joined(separator: " ")
    }

    static func target(_ target: Target, family: Family) -> [String] {
        let fullMask = "0xffffffff"
        switch target {
        case .jump(let chain): return ["-j", chain.iptablesName]
        case .return: return ["-j", "RETURN"]
        case .accept: return ["-j", "ACCEPT"]
        case .drop: return ["-j", "DROP"]
        case .redirect(let port): return ["-j", "REDIRECT", "--to-ports", "\(port)"]
        case .tproxy(let port, let mark):
            return [
                "-j", "TPROXY", "--on-port", "\(port)", "--on-ip", family == .ipv4 ? "0.0.0.0" : "::",
                "--tproxy-mark", "\(hex(mark.value))/\(fullMask)",
            ]
        case .setMark(let mark): return ["-j", "MARK", "--set-xmark", "\(hex(mark.value))/\(fullMask)"]
        case .saveMarkToConnmark: return ["-j", "CONNMARK", "--save-mark", "--nfmask", fullMask, "--ctmask", fullMask]
        case .restoreMarkFromConnmark:
            return ["-j", "CONNMARK", "--restore-mark", "--nfmask", fullMask, "--ctmask", fullMask]
        case .conntrackZone(let zone): return ["-j", "CT", "--zone", "\(zone)"]
        }
    }

    static func networkText(_ cidr: CIDR) -> String { "\(addressText(cidr.network))/\(cidr.prefixLength)" }

    /// An address as iptables-save prints it (glibc's `inet_ntop`): like RFC 5952, except
    /// that an IPv6 address whose first 96 bits are zero and whose next group is not (an
    /// IPv4-compatible address) ends in dotted quad, `::10.0.0.1`, as `::ffff:10.0.0.1` does.
    static func addressText(_ address: IPAddress) -> String {
        guard address.family == .ipv6, address.high == 0, address.low >> 32 == 0, address.low >> 16 != 0 else {
            return address.description
        }
        return "::" + IPAddress(ipv4: UInt32(truncatingIfNeeded: address.low)).description
    }

    static func hex(_ value: UInt32) -> String { "0x" + String(value, radix: 16) }
}

/// The inverse of `SaveCanonical`: a dumped rule spec back to typed matches and a target,
/// for the vocabulary meshinit's rules use (and `-m comment`, which matches everything).
/// `matches` is nil when any word is not understood; `target` is nil for a target meshinit
/// never writes (a jump to a foreign chain, DNAT, …) or a rule without one.
public enum SaveParser {
    public static func parse(_ tokens: [String]) -> (matches: [Match]?, target: Target?) {
        var words = tokens[...]
        var matches: [Match] = []
        var proto: L4Protocol?
        var module: String?
        var target: Target?
        var understood = true
        func next() -> String? { words.popFirst() }
        func cidr(_ text: String?) -> CIDR? {
            guard let text else { return nil }
            return CIDR(text) ?? IPAddress(text).map(CIDR.init(host:))
        }
        func ranges(_ text: String?) -> [PortRange]? {
            guard let text, !text.isEmpty else { return nil }
            var out: [PortRange] = []
            for item in text.split(separator: ",", omittingEmptySubsequences: false) {
                let bounds = item.split(separator: ":", omittingEmptySubsequences: false)
                if bounds.count == 1, let port = Port(parsing: bounds[0]) {
                    out.append(PortRange(port))
                } else if bounds.count == 2, let a = Port(parsing: bounds[0]), let b = Port(parsing: bounds[1]),
                    let range = PortRange(first: a, last: b)
                {
                    out.append(range)
                } else {
                    return nil
                }
            }
            return out
        }
        func mark(_ text: String?) -> Mark? {
            guard let text, text.hasPrefix("0x"), !text.contains("/"), let v = UInt32(text.dropFirst(2), radix: 16)
            else { return nil }
            return Mark(v)
        }
        while understood, let word = next() {
            var negated = false
            var current = word
            if current == "!" {
                negated = true
                guard let following = next() else {
                    understood = false
                    break
                }
                current = following
            }
            switch current {
            case "-s", "-d":
                guard let c = cidr(next()) else {
                    understood = false
                    break
                }
                matches.append(current == "-s" ? .source(c, negated: negated) : .destination(c, negated: negated))
            case "-i", "-o":
                guard !negated, let text = next(), let name = InterfaceName(text) else {
                    understood = false
                    break
                }
                matches.append(current == "-i" ? .inInterface(name) : .outInterface(name))
            case "-p":
                guard !negated, let text = next(), let p = L4Protocol(rawValue: text) else {
                    understood = false
                    break
                }
                proto = p
                matches.append(.l4proto(p, scope: .all))
            case "-m":
                guard !negated, let name = next() else {
                    understood = false
                    break
                }
                module = name
            case "--dport", "--sport":
                guard module == proto?.rawValue, let p = proto, let r = ranges(next()), r.count == 1 else {
                    understood = false
                    break
                }
                if current == "--dport" {
                    matches.append(.destinationPorts(p, r, negated: negated))
                } else if !negated {
                    matches.append(.sourcePort(p, r[0]))
                } else {
                    understood = false
                }
            case "--dports":
                guard module == "multiport", let p = proto, let r = ranges(next()) else {
                    understood = false
                    break
                }
                matches.append(.destinationPorts(p, r, negated: negated))
            case "--uid-owner", "--gid-owner":
                guard module == "owner", let text = next(), let id = NumericID(parsing: text) else {
                    understood = false
                    break
                }
                matches.append(.owner(current == "--uid-owner" ? .uid(id) : .gid(id), negated: negated))
            case "--mark":
                guard let m = mark(next()) else {
                    understood = false
                    break
                }
                if module == "mark" {
                    matches.append(.mark(m, negated: negated))
                } else if module == "connmark" && !negated {
                    matches.append(.connmark(m))
                } else {
                    understood = false
                }
            case "--ctstate":
                guard !negated, module == "conntrack", let text = next() else {
                    understood = false
                    break
                }
                var states: [ConntrackState] = []
                for name in text.split(separator: ",") {
                    guard let state = ConntrackState(rawValue: name.lowercased()) else {
                        understood = false
                        break
                    }
                    states.append(state)
                }
                matches.append(.conntrackState(states))
            case "--comment":
                guard module == "comment", next() != nil else {
                    understood = false
                    break
                }
            case "-j":
                target = parseTarget(&words)
                if !words.isEmpty { target = nil }
                words = []
            default:
                understood = false
            }
        }
        return (understood ? matches : nil, target)
    }

    /// The target after `-j`, consuming its options; nil for one meshinit never writes.
    static func parseTarget(_ words: inout ArraySlice<String>) -> Target? {
        guard let name = words.popFirst() else { return nil }
        var options: [String: String] = [:]
        var flags: Set<String> = []
        while let word = words.first, word.hasPrefix("--") {
            words.removeFirst()
            if ["--save-mark", "--restore-mark"].contains(word) {
                flags.insert(word)
            } else if let value = words.popFirst() {
                options[word] = value
            } else {
                return nil
            }
        }
        func port(_ key: String) -> Port? { options[key].flatMap { Port(parsing: $0) } }
        func mark(_ key: String) -> Mark? {
            guard let text = options[key], text.hasSuffix("/0xffffffff"),
                let v = UInt32(text.dropFirst(2).dropLast("/0xffffffff".count), radix: 16), text.hasPrefix("0x")
            else { return nil }
            return Mark(v)
        }
        let masks = options["--nfmask"] == "0xffffffff" && options["--ctmask"] == "0xffffffff"
        switch name {
        case "RETURN" where options.isEmpty && flags.isEmpty: return .return
        case "ACCEPT" where options.isEmpty && flags.isEmpty: return .accept
        case "DROP" where options.isEmpty && flags.isEmpty: return .drop
        case "REDIRECT" where options.count == 1: return port("--to-ports").map { .redirect(toPort: $0) }
        case "TPROXY" where options.count == 3 && ["0.0.0.0", "::"].contains(options["--on-ip"] ?? ""):
            guard let p = port("--on-port"), let m = mark("--tproxy-mark") else { return nil }
            return .tproxy(toPort: p, mark: m)
        case "MARK" where options.count == 1: return mark("--set-xmark").map { .setMark($0) }
        case "CONNMARK" where flags == ["--save-mark"] && options.count == 2 && masks: return .saveMarkToConnmark
        case "CONNMARK" where flags == ["--restore-mark"] && options.count == 2 && masks:
            return .restoreMarkFromConnmark
        case "CT" where options.count == 1: return options["--zone"].flatMap { UInt16($0) }.map { .conntrackZone($0) }
        default:
            guard options.isEmpty, flags.isEmpty, name.hasPrefix("ISTIO_"),
                let own = OwnChain(rawValue: name)
            else { return nil }
            return .jump(own)
        }
    }
}
