import MeshModel

func portRanges(_ text: String, source: ValueSource) throws(ConfigError) -> [PortRange] {
    var out: [PortRange] = []
    for item in splitList(text) {
        guard let range = PortRange(parsing: item) else {
            throw ConfigError(source, String(item), "expected a port 1-65535 or a range A-B with A < B")
        }
        out.append(range)
    }
    return out
}

func cidrs(_ text: String, source: ValueSource) throws(ConfigError) -> [CIDR] {
    switch CIDR.parseList(text) {
    case .success(let list): return list
    case .failure(let bad):
        throw ConfigError(source, bad.text, "expected an IPv4 or IPv6 CIDR such as 10.0.0.0/8")
    }
}

/// Istio's list split: comma separated, empty items dropped, no trimming.
public func splitList(_ text: String) -> [Substring] {
    // On UTF-8 bytes (a comma is never part of a multi-byte character): fast for long lists.
    var items: [Substring] = []
    var start = text.utf8.startIndex
    var index = start
    while index != text.utf8.endIndex {
        if text.utf8[index] == UInt8(ascii: ",") {
            if start != index { items.append(text[start..<index]) }
            start = text.utf8.index(after: index)
        }
        index = text.utf8.index(after: index)
    }
    if start != text.utf8.endIndex { items.append(text[start...]) }
    return items
}

/// Go's `strconv.ParseBool`.
public func parseGoBool(_ text: String) -> Bool? {
    switch text {
    case "1", "t", "T", "TRUE", "true", "True": true
    case "0", "f", "F", "FALSE", "false", "False": false
    default: nil
    }
}

/// Go's `time.ParseDuration`, in milliseconds (a sub-millisecond rest rounds up).
public func parseGoDuration(_ text: String) -> Int64? {
    var chars = Substring(text)
    if chars == "0" { return 0 }
    guard !chars.isEmpty else { return nil }
    var totalNanos: Double = 0
    while !chars.isEmpty {
        let number = chars.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
        guard !number.isEmpty, number != ".", let value = Double(number) else { return nil }
        chars = chars.dropFirst(number.count)
        let unit = chars.prefix { !($0.isASCII && ($0.isNumber || $0 == ".")) }
        chars = chars.dropFirst(unit.count)
        let scale: Double
        switch unit {
        case "ns": scale = 1
        case "us", "µs", "μs": scale = 1e3
        case "ms": scale = 1e6
        case "s": scale = 1e9
        case "m": scale = 60e9
        case "h": scale = 3600e9
        default: return nil
        }
        totalNanos += value * scale
    }
    guard totalNanos < 1e18 else { return nil }
    return Int64((totalNanos / 1e6).rounded(.up))
}

/// `nameserver` lines of a resolv.conf, split by family (as Istio's DNS capture reads them).
public func parseResolvConf(_ text: String, path: String) throws(ConfigError) -> (ipv4: [IPAddress], ipv6: [IPAddress])
{
    var v4: [IPAddress] = []
    var v6: [IPAddress] = []
    for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard fields.first == "nameserver" else { continue }
        guard fields.count >= 2 else { throw ConfigError(.file(path), String(line), "nameserver without an address") }
        // A zone suffix (fe80::1%eth0) cannot be matched by an address rule; keep the address.
        let addressText = fields[1].split(separator: "%", maxSplits: 1).first ?? fields[1]
        guard let address = IPAddress(addressText) else {
            throw ConfigError(.file(path), String(fields[1]), "nameserver is not an IP address")
        }
        if address.family == .ipv4 { v4.append(address) } else { v6.append(address) }
    }
    return (v4, v6)
}

/// POSIX-ish account names: letters, digits, `_ . -`, not starting with `-`, ≤ 32 bytes.
func isValidAccountName(_ text: Substring) -> Bool {
    guard !text.isEmpty, text.utf8.count <= 32, text.first != "-" else { return false }
    return text.utf8.allSatisfy { b in
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
            || b == UInt8(ascii: "_") || b == UInt8(ascii: ".") || b == UInt8(ascii: "-")
    }
}
