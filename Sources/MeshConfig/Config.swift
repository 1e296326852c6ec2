import MeshModel

/// `--ipv6`: Istio guesses IPv6 from interface addresses (`auto`); `on`/`off` decide.
public enum IPv6Choice: String, Sendable, Hashable {
    case auto, on, off
}

/// How the run behaves around the plan (not part of the rules).
public struct RunOptions: Sendable, Hashable {
    public var dryRun = false
    public var skipRuleApply = false
    public var runValidation = false
    public var probePort: Port = Port(15002)!
    /// Validation timeout in milliseconds.
    public var probeTimeoutMilliseconds: Int64 = 5000
    public var networkNamespace: String?
    public var cniMode = false
    public var reconcile = false
    public var cleanupOnly = false
    public var forceApply = false
    public var nativeNftables = false
    public var forceIptablesVariant: IptablesVariant?
    public var logLevel: LogLevel = .info
    public var logAsJSON = false
    public var ipv6Choice: IPv6Choice = .auto
    public var resolvConfPath = "/etc/resolv.conf"
    /// `--child-timeout`: how long one iptables-save/-restore may run, in milliseconds.
    public var childTimeoutMilliseconds: Int64 = 30_000

    public init() {}
}

/// The resolved input of one run.
public struct Settings: Sendable, Hashable {
    public var capture: CaptureConfig
    public var run: RunOptions
    /// Things worth a warning in the log (e.g. DNS capture asked for but no servers).
    public var warnings: [String]

    public init(capture: CaptureConfig = CaptureConfig(), run: RunOptions = RunOptions(), warnings: [String] = []) {
        self.capture = capture
        self.run = run
        self.warnings = warnings
    }
}
