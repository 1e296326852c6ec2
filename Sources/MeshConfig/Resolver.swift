import MeshModel

/// Where a value came from, for messages.
public enum ValueSource: Sendable, Hashable, CustomStringConvertible {
    case flag(IstioFlag)
    case environment(String)
    case file(String)
    /// A key of a JSON configuration (the CNI plugin's network configuration).
    case configKey(String)
    /// A pod annotation.
    case annotation(String)
    /// The CNI plugin's default for a flag (Istio's injected `istio-init` arguments).
    case pluginDefault(IstioFlag)

    public var description: String {
        switch self {
        case .flag(let flag): flag.displayName
        case .environment(let name): "environment variable \(name)"
        case .file(let path): path
        case .configKey(let key): "config key \(quoted(key))"
        case .annotation(let name): "annotation \(name)"
        case .pluginDefault(let flag): "the CNI plugin's default for \(flag.displayName)"
        }
    }
}

/// A bad input value. Always names the flag or variable and the value; one line.
public struct ConfigError: Error, Sendable, Hashable, CustomStringConvertible {
    public var source: ValueSource
    public var value: String
    public var reason: String

    public init(_ source: ValueSource, _ value: String, _ reason: String) {
        self.source = source
        self.value = value
        self.reason = reason
    }

    public var description: String {
        "invalid value \(quoted(value)) for \(source): \(reason)"
    }
}

/// What the resolver needs from the system. `MeshSystem` implements it with libc; tests
/// pass a table.
public protocol SystemLookup {
    /// The uid of a user name (passwd database).
    func userID(named: String) -> UInt32?
    /// The gid of a group name (group database).
    func groupID(named: String) -> UInt32?
    /// Istio's IPv6 guess from interface addresses; nil when no usable address was found.
    func detectIPv6(dualStack: Bool) -> Bool?
    /// Whether the loopback interface has `::1` (IPv6 is enabled in this namespace).
    func loopbackHasIPv6() -> Bool
    /// A file's contents, or nil if it cannot be read.
    func readFile(_ path: String) -> String?
    /// A file's contents, at most `limit` bytes.
    func readFile(_ path: String, limit: Int) -> FileRead
}

/// What reading a bounded file gave.
public enum FileRead: Sendable, Hashable {
    case text(String)
    case unreadable
    /// More than the limit.
    case tooLarge
}

extension SystemLookup {
    /// From `readFile(_:)`: for lookups that hold their files in memory.
    public func readFile(_ path: String, limit: Int) -> FileRead {
        guard let text = readFile(path) else { return .unreadable }
        return text.utf8.count > limit ? .tooLarge : .text(text)
    }
}

/// Turns command-line flags and environment into typed `Settings`, once.
public struct ConfigResolver {
    public var system: any SystemLookup

    public init(system: any SystemLookup) {
        self.system = system
    }

    /// The most of a resolv.conf read (glibc's own are a few hundred bytes).
    public static let resolvConfLimit = 1 << 20

    /// Just `--network-namespace` / `NETWORK_NAMESPACE`: it must be entered before anything
    /// else is resolved (IPv6 detection reads the interfaces of that namespace).
    public static func networkNamespace(flags: FlagMap<String>, environment: [String: String]) throws(ConfigError)
        -> String?
    {
        try networkNamespace(ConfigInput(flags: flags, environment: environment).text(.networkNamespace))
    }

    static func networkNamespace(_ value: (String, ValueSource)) throws(ConfigError) -> String? {
        let (netns, source) = value
        if netns.isEmpty { return nil }
        guard !netns.utf8.contains(0), netns.utf8.first == UInt8(ascii: "/") else {
            throw ConfigError(source, netns, "expected an absolute path such as /var/run/netns/NAME")
        }
        return netns
    }

    /// Resolves `flags` (long name → text as given on the command line; booleans as
    /// "true"/"false") over `environment`.
    ///
    /// - Throws: `ConfigError` naming the first bad value.
    public func resolve(flags: FlagMap<String>, environment: [String: String]) throws(ConfigError) -> Settings {
        try resolve(ConfigInput(flags: flags, environment: environment))
    }

    /// Resolves values from any source (Istio's flags and environment, a CNI configuration
    /// and pod annotations).
    ///
    /// - Throws: `ConfigError` naming the first bad value and where it came from.
    public func resolve(_ input: ConfigInput) throws(ConfigError) -> Settings {
        // Every value given must be valid, even one that a higher-precedence source overrides
        // (Istio drops bad environment values silently; a wrong capture config is a hole).
        for flag in IstioFlag.allCases {
            for (text, source) in input.shadowed(flag) {
                var probe = input
                probe.forced = (flag, text, source)
                _ = try settings(probe)
            }
        }
        return try settings(input)
    }

    func settings(_ input: ConfigInput) throws(ConfigError) -> Settings {
        var settings = Settings()
        var c = CaptureConfig()
        var r = RunOptions()

        c.proxyPort = try input.port(.envoyPort)
        c.inboundCapturePort = try input.port(.inboundCapturePort)
        c.inboundTunnelPort = try input.port(.inboundTunnelPort)

        // -u: "" → uid of $ENVOY_USER if it exists, else 1337. -g: "" → the uid *text*.
        let (uidText, uidSource) = input.text(.proxyUID)
        let resolvedUIDText: String
        if uidText.isEmpty {
            let user = input.knob(.envoyUser).text
            resolvedUIDText = system.userID(named: user).map { String($0) } ?? "1337"
        } else {
            resolvedUIDText = uidText
        }
        c.proxyUIDs = try ids(resolvedUIDText, source: uidSource, kind: .user)
        let (gidText, gidSource) = input.text(.proxyGID)
        c.proxyGIDs = try ids(gidText.isEmpty ? resolvedUIDText : gidText, source: gidSource, kind: .group)

        let (mode, modeSource) = input.text(.interceptionMode)
        switch mode {
        case "TPROXY": c.interceptionMode = .tproxy
        case "REDIRECT", "NONE", "": c.interceptionMode = .redirect
        default: throw ConfigError(modeSource, mode, "expected REDIRECT, TPROXY or NONE")
        }

        let (inbound, inboundSource) = input.text(.inboundPorts)
        let excludeInbound = try input.portList(.localExcludePorts)
        switch inbound {
        case "": c.inboundPorts = .none
        case "*": c.inboundPorts = .all(except: excludeInbound)
        default: c.inboundPorts = .only(try portRanges(inbound, source: inboundSource))
        }

        c.excludeInterfaces = try input.interfaces(.excludeInterfaces)
        c.kubeVirtInterfaces = try input.interfaces(.kubeVirtInterfaces)

        let (include, includeSource) = input.text(.serviceCIDR)
        switch include {
        case "": c.outboundInclude = .none
        case "*": c.outboundInclude = .all
        default: c.outboundInclude = .only(try cidrs(include, source: includeSource))
        }
        let (exclude, excludeSource) = input.text(.serviceExcludeCIDR)
        if exclude == "*" {
            throw ConfigError(excludeSource, exclude, "'*' would exclude every destination; list CIDRs instead")
        }
        c.outboundExclude = try cidrs(exclude, source: excludeSource)
        c.outboundPorts = try input.portList(.outboundPorts)
        c.outboundExcludePorts = try input.portList(.localOutboundPortsExclude)

        let (markText, markSource) = input.text(.tproxyMark)
        guard let mark = Mark(parsing: markText) else {
            throw ConfigError(markSource, markText, "expected a mark, an integer 0-4294967295")
        }
        c.tproxyMark = mark
        let (tableText, tableSource) = input.text(.tproxyRouteTable)
        guard let table = parseDecimal(tableText, maxDigits: 10), table >= 1, table <= Int(UInt32.max),
            ![253, 254, 255].contains(table)
        else {
            throw ConfigError(
                tableSource, tableText,
                "expected a routing table number 1-4294967295 other than 253-255 (default, main, local)")
        }
        c.tproxyRouteTable = UInt32(table)

        c.dropInvalid = try input.bool(.dropInvalid)

        // Run options.
        r.dryRun = try input.bool(.dryRun)
        r.skipRuleApply = try input.bool(.skipRuleApply)
        r.runValidation = try input.bool(.runValidation)
        r.probePort = try input.port(.iptablesProbePort)
        let (timeoutText, timeoutSource) = input.text(.probeTimeout)
        guard let timeout = parseGoDuration(timeoutText), timeout > 0 else {
            throw ConfigError(timeoutSource, timeoutText, "expected a positive duration such as 5s or 500ms")
        }
        r.probeTimeoutMilliseconds = timeout
        r.networkNamespace = try Self.networkNamespace(input.text(.networkNamespace))
        r.cniMode = try input.bool(.cniMode)
        r.reconcile = try input.bool(.reconcile)
        r.cleanupOnly = try input.bool(.cleanupOnly)
        r.forceApply = try input.bool(.forceApply)
        r.nativeNftables = try input.bool(.nativeNftables)
        let (variant, variantSource) = input.text(.forceIptablesBinary)
        if !variant.isEmpty {
            guard let v = IptablesVariant(rawValue: variant) else {
                throw ConfigError(variantSource, variant, "expected legacy or nft")
            }
            r.forceIptablesVariant = v
        }
        let (levelText, levelSource) = input.text(.logOutputLevel)
        r.logLevel = try logLevel(levelText, source: levelSource)
        r.logAsJSON = try input.bool(.logAsJSON)
        let (ipv6Text, ipv6Source) = input.text(.ipv6)
        guard let ipv6Choice = IPv6Choice(rawValue: ipv6Text) else {
            throw ConfigError(ipv6Source, ipv6Text, "expected auto, on or off")
        }
        r.ipv6Choice = ipv6Choice
        let (resolvPath, resolvSource) = input.text(.resolvConf)
        guard !resolvPath.isEmpty else { throw ConfigError(resolvSource, resolvPath, "expected a file path") }
        r.resolvConfPath = resolvPath
        let (childText, childSource) = input.text(.childTimeout)
        guard let childTimeout = parseGoDuration(childText), childTimeout > 0, childTimeout <= 3_600_000 else {
            throw ConfigError(childSource, childText, "expected a duration from 1ms to 1h such as 30s or 500ms")
        }
        r.childTimeoutMilliseconds = childTimeout

        // Environment-only knobs.
        let loopback = input.knob(.ipv4LoopbackCIDR)
        guard let loopbackCIDR = CIDR(loopback.text), loopbackCIDR.family == .ipv4,
            loopbackCIDR.address.isLoopback, loopbackCIDR.prefixLength >= 8
        else {
            throw ConfigError(loopback.source, loopback.text, "expected an IPv4 loopback CIDR with prefix 8-32")
        }
        c.ipv4LoopbackCIDR = loopbackCIDR

        let groups = input.knob(.ownerGroups)
        let groupsExclude = input.knob(.ownerGroupsExclude)
        if groups.text == "*" {
            c.ownerGroups = .allExcept(try ownerGroups(groupsExclude.text, source: groupsExclude.source))
        } else {
            if !groupsExclude.text.isEmpty {
                throw ConfigError(
                    groupsExclude.source, groupsExclude.text,
                    "only allowed when \(EnvironmentKnob.ownerGroups.rawValue) is '*'")
            }
            c.ownerGroups = .only(try ownerGroups(groups.text, source: groups.source))
        }

        // IPv6: meshinit's --ipv6 decides; auto is Istio's guess from interface addresses,
        // falling back to "on if lo has ::1" where Istio would fail (a namespace with only lo).
        let dualStack = try input.bool(.dualStack)
        switch ipv6Choice {
        case .on: c.ipv6 = true
        case .off: c.ipv6 = false
        case .auto:
            if let detected = system.detectIPv6(dualStack: dualStack) {
                c.ipv6 = detected
            } else {
                c.ipv6 = system.loopbackHasIPv6()
                settings.warnings.append(
                    "no non-loopback address found; IPv6 rules \(c.ipv6 ? "on" : "off") (lo \(c.ipv6 ? "has" : "lacks") ::1)"
                )
            }
        }

        // DNS capture.
        let captureAllDNS = try input.bool(.captureAllDNS)
        if try input.bool(.redirectDNS) {
            if captureAllDNS {
                c.dns = .all
            } else {
                let text: String
                switch system.readFile(resolvPath, limit: Self.resolvConfLimit) {
                case .text(let contents): text = contents
                case .unreadable:
                    throw ConfigError(resolvSource, resolvPath, "cannot read the file (needed for --redirect-dns)")
                case .tooLarge:
                    throw ConfigError(
                        resolvSource, resolvPath, "larger than 1 MiB, not a resolv.conf (needed for --redirect-dns)")
                }
                let servers = try parseResolvConf(text, path: resolvPath)
                if servers.ipv4.isEmpty && servers.ipv6.isEmpty {
                    settings.warnings.append(
                        "--redirect-dns is set, --capture-all-dns is not, and \(resolvPath) lists no nameserver: DNS capture disabled"
                    )
                } else {
                    c.dns = .servers(ipv4: servers.ipv4, ipv6: servers.ipv6)
                }
            }
        }

        settings.capture = c
        settings.run = r
        return settings
    }

    enum IDKind { case user, group }

    func ids(_ text: String, source: ValueSource, kind: IDKind) throws(ConfigError) -> [NumericID] {
        var out: [NumericID] = []
        for item in splitList(text) {
            out.append(try id(item, source: source, kind: kind))
        }
        if out.isEmpty { throw ConfigError(source, text, "expected at least one \(kind == .user ? "uid" : "gid")") }
        return out
    }

    func id(_ item: Substring, source: ValueSource, kind: IDKind) throws(ConfigError) -> NumericID {
        if item.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
            guard let n = NumericID(parsing: item) else {
                throw ConfigError(source, String(item), "expected an id 0-4294967294 without leading zeros")
            }
            return n
        }
        guard isValidAccountName(item) else {
            throw ConfigError(source, String(item), "not a valid \(kind == .user ? "user" : "group") name")
        }
        let found = kind == .user ? system.userID(named: String(item)) : system.groupID(named: String(item))
        guard let found, let n = NumericID(UInt64(found)) else {
            throw ConfigError(source, String(item), "no such \(kind == .user ? "user" : "group")")
        }
        return n
    }

    func ownerGroups(_ text: String, source: ValueSource) throws(ConfigError) -> [NumericID] {
        let items = splitList(text)
        guard items.count <= 64 else {
            throw ConfigError(source, text, "at most 64 groups (got \(items.count))")
        }
        var out: [NumericID] = []
        for item in items { out.append(try id(item, source: source, kind: .group)) }
        return out
    }

    func logLevel(_ text: String, source: ValueSource) throws(ConfigError) -> LogLevel {
        // "default:info,grpc:none" or "info".
        var level = LogLevel.info
        for item in splitList(text) {
            let parts = item.split(separator: ":", omittingEmptySubsequences: false)
            let (scope, name) = parts.count == 2 ? (String(parts[0]), String(parts[1])) : ("default", String(item))
            guard parts.count <= 2, !scope.isEmpty, let parsed = LogLevel(rawValue: name) else {
                throw ConfigError(
                    source, text, "expected scope:level items, level one of debug, info, warn, error, fatal, none")
            }
            if scope == "default" { level = parsed }
        }
        return level
    }
}

/// Values with their precedence, remembering where each came from: layers, lowest first (the
/// last layer that holds a flag wins), over the table's defaults; and the environment-only
/// knobs. Istio's order is environment < alias environment < command line; a CNI
/// configuration's is Istio's injected defaults < config keys < pod annotations.
public struct ConfigInput: Sendable {
    public typealias Layer = FlagMap<Value>

    public struct Value: Sendable, Hashable {
        public var text: String
        public var source: ValueSource

        public init(_ text: String, _ source: ValueSource) {
            self.text = text
            self.source = source
        }
    }

    public var layers: [Layer]
    public var knobs: [EnvironmentKnob: Value]
    /// A value to use for one flag instead of the winner (to validate overridden values).
    var forced: (flag: IstioFlag, text: String, source: ValueSource)?

    public init(layers: [Layer], knobs: [EnvironmentKnob: Value] = [:]) {
        self.layers = layers
        self.knobs = knobs
    }

    /// Istio's: command-line flags over alias environment variables over environment variables.
    /// An empty boolean variable counts as unset (as Go's flag package leaves it).
    public init(flags: FlagMap<String>, environment: [String: String]) {
        var primary: Layer = [:]
        var alias: Layer = [:]
        var given: Layer = [:]
        for spec in IstioFlag.table {
            let boolean = spec.value == .boolean
            if let name = spec.environment, let v = environment[name], !(boolean && v.isEmpty) {
                primary[spec.flag] = Value(v, .environment(name))
            }
            if let name = spec.aliasEnvironment, let v = environment[name], !(boolean && v.isEmpty) {
                alias[spec.flag] = Value(v, .environment(name))
            }
            if let v = flags[spec.flag] { given[spec.flag] = Value(v, .flag(spec.flag)) }
        }
        var knobs: [EnvironmentKnob: Value] = [:]
        for knob in EnvironmentKnob.allCases {
            if let v = environment[knob.rawValue] { knobs[knob] = Value(v, .environment(knob.rawValue)) }
        }
        self.init(layers: [primary, alias, given], knobs: knobs)
    }

    /// The values of `flag` that lose to a higher-precedence source.
    func shadowed(_ flag: IstioFlag) -> [(String, ValueSource)] {
        Array(layers.compactMap { $0[flag] }.map { ($0.text, $0.source) }.dropLast())
    }

    func text(_ flag: IstioFlag) -> (String, ValueSource) {
        if let forced, forced.flag == flag { return (forced.text, forced.source) }
        if let value = layers.last(where: { $0[flag] != nil })?[flag] { return (value.text, value.source) }
        return (flag.defaultValue, .flag(flag))
    }

    func knob(_ knob: EnvironmentKnob) -> (text: String, source: ValueSource) {
        if let value = knobs[knob] { return (value.text, value.source) }
        return (knob.defaultValue, .environment(knob.rawValue))
    }

    func bool(_ flag: IstioFlag) throws(ConfigError) -> Bool {
        let (text, source) = self.text(flag)
        guard let value = parseGoBool(text) else {
            throw ConfigError(source, text, "expected a boolean (true/false, 1/0, t/f)")
        }
        return value
    }

    func port(_ flag: IstioFlag) throws(ConfigError) -> Port {
        let (text, source) = self.text(flag)
        guard let port = Port(parsing: text) else { throw ConfigError(source, text, "expected a port 1-65535") }
        return port
    }

    func portList(_ flag: IstioFlag) throws(ConfigError) -> [PortRange] {
        let (text, source) = self.text(flag)
        return try portRanges(text, source: source)
    }

    func interfaces(_ flag: IstioFlag) throws(ConfigError) -> [InterfaceName] {
        let (text, source) = self.text(flag)
        var out: [InterfaceName] = []
        for item in splitList(text) {
            guard let name = InterfaceName(item) else {
                throw ConfigError(
                    source, String(item),
                    "not an interface name (1-15 bytes of letters, digits, _ . - @, optional trailing + after a prefix)"
                )
            }
            out.append(name)
        }
        return out
    }
}

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

/// Where a capture setting's value came from: a flag, variable, file, config key or
/// annotation, with the text it gave (or the default it fell back to).
public struct ValueOrigin: Sendable, Hashable, CustomStringConvertible {
    public var source: ValueSource
    public var text: String
    public var isDefault: Bool

    public init(source: ValueSource, text: String, isDefault: Bool) {
        self.source = source
        self.text = text
        self.isDefault = isDefault
    }

    /// `-x/--istio-service-exclude-cidr "10.0.0.0/8"`, `-p/--envoy-port (default "15001")`.
    public var description: String {
        isDefault ? "\(source) (default \(quoted(text)))" : "\(source) \(quoted(text))"
    }
}

extension ConfigInput {
    /// Where each capture setting of `settings` (resolved from this input) took its value.
    /// Computed on demand (`explain` asks; installs never pay for it).
    public func origins(of settings: Settings) -> [CaptureSetting: [ValueOrigin]] {
        func flag(_ flag: IstioFlag) -> ValueOrigin {
            if let value = layers.last(where: { $0[flag] != nil })?[flag] {
                return ValueOrigin(source: value.source, text: value.text, isDefault: false)
            }
            return ValueOrigin(source: .flag(flag), text: flag.defaultValue, isDefault: true)
        }
        func knob(_ knob: EnvironmentKnob) -> ValueOrigin {
            if let value = knobs[knob] { return ValueOrigin(source: value.source, text: value.text, isDefault: false) }
            return ValueOrigin(source: .environment(knob.rawValue), text: knob.defaultValue, isDefault: true)
        }
        let uid = flag(.proxyUID)
        let gid = flag(.proxyGID)
        var dns = [flag(.redirectDNS), flag(.captureAllDNS)]
        if case .servers = settings.capture.dns { dns.append(flag(.resolvConf)) }
        let groups = knob(.ownerGroups)
        return [
            .proxyPort: [flag(.envoyPort)],
            .inboundCapturePort: [flag(.inboundCapturePort)],
            .inboundTunnelPort: [flag(.inboundTunnelPort)],
            .proxyUIDs: uid.text.isEmpty ? [uid, knob(.envoyUser)] : [uid],
            .proxyGIDs: gid.text.isEmpty ? [gid, uid] : [gid],
            .interceptionMode: [flag(.interceptionMode)],
            .inboundPorts: [flag(.inboundPorts)],
            .inboundExcludePorts: [flag(.localExcludePorts)],
            .excludeInterfaces: [flag(.excludeInterfaces)],
            .outboundInclude: [flag(.serviceCIDR)],
            .outboundExclude: [flag(.serviceExcludeCIDR)],
            .outboundPorts: [flag(.outboundPorts)],
            .outboundExcludePorts: [flag(.localOutboundPortsExclude)],
            .kubeVirtInterfaces: [flag(.kubeVirtInterfaces)],
            .tproxyMark: [flag(.tproxyMark)],
            .dns: dns,
            .dropInvalid: [flag(.dropInvalid)],
            .ownerGroups: groups.text == "*" ? [groups, knob(.ownerGroupsExclude)] : [groups],
            .ipv4LoopbackCIDR: [knob(.ipv4LoopbackCIDR)],
            .ipv6: [flag(.ipv6), flag(.dualStack)],
        ]
    }
}
