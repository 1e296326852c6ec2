import Testing

@testable import MeshSystem

/// The `/etc/passwd` / `/etc/group` scan of the fully static build, against the `split`
/// reading it replaced: same answers, including the lines that must be passed over.
@Suite("Account databases")
struct AccountDatabaseTests {
    static let passwd = """
        root:x:0:0:root:/root:/bin/bash
        istio:x:77:77::/:/bin/false
        bad:x:12a:1::/:/bin/false
        bad:x:13:1::/:/bin/false
        istio-proxy:x:1337:1337::/home/istio-proxy:/bin/false
        short:x:42
        huge:x:4294967296:0::/:/bin/false
        empty:x::0::/:/bin/false

        nouid:x
        """

    /// What the `split` version answered.
    static func reference(_ text: String, _ name: String) -> UInt32? {
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 3, omittingEmptySubsequences: false)
            if fields.count >= 3, fields[0] == name, let id = UInt32(fields[2]) { return id }
        }
        return nil
    }

    @Test(arguments: ["root", "istio", "istio-proxy", "bad", "short", "huge", "empty", "nouid", "istio-", "", "x"])
    func sameAsSplit(name: String) {
        let got = LiveSystem.id(in: Array(Self.passwd.utf8), name: Array(name.utf8))
        #expect(got == Self.reference(Self.passwd, name))
    }

    @Test func answers() {
        let db = Array(Self.passwd.utf8)
        #expect(LiveSystem.id(in: db, name: Array("istio-proxy".utf8)) == 1337)
        #expect(LiveSystem.id(in: db, name: Array("istio".utf8)) == 77)
        #expect(LiveSystem.id(in: db, name: Array("bad".utf8)) == 13)
        #expect(LiveSystem.id(in: db, name: Array("short".utf8)) == 42)
        #expect(LiveSystem.id(in: db, name: Array("huge".utf8)) == nil)
        #expect(LiveSystem.id(in: [], name: Array("root".utf8)) == nil)
    }
}
