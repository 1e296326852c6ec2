import MeshModel

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
