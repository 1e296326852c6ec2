import MeshConfig

/// A `SystemLookup` from tables: users, groups, canned IPv6 detection, in-memory files.
struct FakeSystem: SystemLookup {
    var users: [String: UInt32] = ["istio-proxy": 1337, "envoy": 101, "root": 0]
    var groups: [String: UInt32] = ["java": 30000, "istio-proxy": 1337, "wheel": 10]
    /// `detectIPv6(dualStack:)` answer; called with the resolved dual-stack flag.
    var detect: @Sendable (Bool) -> Bool? = { _ in false }
    var loopbackIPv6 = true
    var files: [String: String] = [:]

    func userID(named name: String) -> UInt32? { users[name] }
    func groupID(named name: String) -> UInt32? { groups[name] }
    func detectIPv6(dualStack: Bool) -> Bool? { detect(dualStack) }
    func loopbackHasIPv6() -> Bool { loopbackIPv6 }
    func readFile(_ path: String) -> String? { files[path] }
}
