/// Which iptables variant to use (`--force-iptables-binary`).
public enum IptablesVariant: String, Sendable, Hashable {
    case legacy
    case nft
}

/// Log verbosity (`--log_output_level`, Istio's scope:level syntax; the `default` scope or a
/// bare level decides).
public enum LogLevel: String, Sendable, Hashable, Comparable, CaseIterable {
    case debug, info, warn, error, fatal, none

    public static func < (a: LogLevel, b: LogLevel) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}
