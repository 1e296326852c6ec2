import MeshModel

#if canImport(Glibc)
    import Glibc
#endif

/// Istio-style log lines on stdout (`2026-11-26T15:04:05.123456Z\tinfo\tmessage`), or JSON
/// lines with `--log_as_json`. Errors go to stderr separately, as one line. (The CNI plugin,
/// whose stdout is the result, logs to another descriptor.)
public struct Logger: Sendable {
    public var level: LogLevel
    public var json: Bool
    /// Where the lines go (1: stdout).
    public var descriptor: Int32

    public init(level: LogLevel, json: Bool, descriptor: Int32 = 1) {
        self.level = level
        self.json = json
        self.descriptor = descriptor
    }

    public func info(_ message: String) { log(.info, message) }
    public func warn(_ message: String) { log(.warn, message) }
    public func debug(_ message: String) { log(.debug, message) }

    public func log(_ at: LogLevel, _ message: String) {
        guard at >= level, level != .none else { return }
        let time = Logger.timestamp()
        if json {
            let fields: [(String, JSONValue)] = [
                ("time", .string(time)), ("level", .string(at.rawValue)), ("scope", .string("meshinit")),
                ("msg", .string(message)),
            ]
            let text = JSONValue.object(fields).serialized + "\n"
            writeAll(text, to: descriptor)
        } else {
            writeAll("\(time)\t\(at.rawValue)\t\(message)\n", to: descriptor)
        }
    }

    /// Now, as RFC 3339 UTC with microseconds.
    public static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var parts = tm()
        gmtime_r(&t, &parts)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(ts.tv_nsec / 1000), 6))Z"
    }
}
