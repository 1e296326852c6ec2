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
        try networkNamespace(ConfigInput(flags: flags, environment: environment))
    }

    /// Just the network namespace of gathered values (see above).
    public static func networkNamespace(_ input: ConfigInput) throws(ConfigError) -> String? {
        try networkNamespace(input.text(.networkNamespace))
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

    /// Every value, in the order their errors are reported (the first bad one is named):
    /// the proxy's ports and identity, what is captured, TPROXY's mark and table, the run's
    /// options, the environment-only knobs, then IPv6 and DNS (which read the system).
    func settings(_ input: ConfigInput) throws(ConfigError) -> Settings {
        var settings = Settings()
        var c = CaptureConfig()
        try proxy(input, &c)
        try traffic(input, &c)
        try tproxy(input, &c)
        let r = try runOptions(input)
        try knobs(input, &c)
        try ipv6(input, r.ipv6Choice, &c, warnings: &settings.warnings)
        try dns(input, resolvConf: (r.resolvConfPath, input.text(.resolvConf).1), &c, warnings: &settings.warnings)
        settings.capture = c
        settings.run = r
        return settings
    }

    /// The proxy's ports, and the uids and gids its traffic is recognised by.
    func proxy(_ input: ConfigInput, _ c: inout CaptureConfig) throws(ConfigError) {
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
    }

    /// What is captured: the interception mode, inbound ports, interfaces, outbound CIDRs and ports.
    func traffic(_ input: ConfigInput, _ c: inout CaptureConfig) throws(ConfigError) {
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
    }

    /// TPROXY's mark and routing table, and whether invalid packets are dropped.
    func tproxy(_ input: ConfigInput, _ c: inout CaptureConfig) throws(ConfigError) {
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
