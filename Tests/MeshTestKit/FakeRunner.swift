import MeshSystem

/// A recording command runner: binaries exist if listed; `*-save` returns the current
/// simulated dump; `*-restore` calls are recorded and answered by `restoreResult`.
public final class FakeRunner: CommandRunner, @unchecked Sendable {
    public var binaries: Set<String>
    public var dumps: [String: String] = [:]
    public var restoreResult: (String, [String], String) throws(CommandError) -> CommandResult = { _, _, _ in
        CommandResult(status: 0)
    }
    /// What `*-save` answers, when set (a dump cut at the runner's limit, a failing save).
    public var saveResult: ((String) -> CommandResult)?
    public var calls: [(path: String, args: [String], stdin: String)] = []

    public init(binaries: Set<String>) { self.binaries = binaries }

    public func which(_ name: String) -> String? { binaries.contains(name) ? "/sbin/\(name)" : nil }

    public func run(_ path: String, _ arguments: [String], stdin: String) throws(CommandError) -> CommandResult {
        calls.append((path, arguments, stdin))
        let name = String(path.split(separator: "/").last ?? "")
        if name.hasSuffix("-save") { return saveResult?(name) ?? CommandResult(status: 0, stdout: dumps[name] ?? "") }
        return try restoreResult(name, arguments, stdin)
    }

    public var restores: [(path: String, args: [String], stdin: String)] {
        calls.filter { $0.path.hasSuffix("-restore") }
    }
}
