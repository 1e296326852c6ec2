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
}

/// Parses `iptables-save` output (comments ignored, counters irrelevant).
public func parseSave(_ text: String) -> [SavedTable] {
    var tables: [SavedTable] = []
    var current: SavedTable?
    for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
        let line = String(rawLine)
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
                table.rules.append(SavedRule(chain: chain, spec: spec, tokens: Array(tokens.dropFirst(2))))
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
/// and nft variants): `-s -d -i -o -p` first, the implicit `-m tcp/udp` spelled out, marks in
/// hex, targets with the defaults the kernel reports. Used to decide "already installed" and
/// for `verify`; proven against the kernel by the real-kernel tests.
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
            case .source(let cidr, let negated): src = not(negated) + ["-s", networkText(cidr)]
            case .destination(let cidr, let negated): dst = not(negated) + ["-d", networkText(cidr)]
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

    static func networkText(_ cidr: CIDR) -> String { "\(cidr.network)/\(cidr.prefixLength)" }

    static func hex(_ value: UInt32) -> String { "0x" + String(value, radix: 16) }
}
