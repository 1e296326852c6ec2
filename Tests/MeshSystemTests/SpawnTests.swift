import Testing

@testable import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

@Suite("SpawnRunner")
struct SpawnTests {
    /// iptables' messages are what errors are classified by: the children must always speak C.
    @Test("children run with LC_ALL=C and no other locale variable, whatever the caller's locale")
    func cLocale() throws {
        let caller = ["LANG=de_DE.UTF-8", "LC_MESSAGES=fr_FR.UTF-8", "LC_ALL=de_DE.UTF-8", "PATH=/usr/bin:/bin"]
        let result = try SpawnRunner(path: "/usr/bin:/bin", environment: { caller }).run("/usr/bin/env", [], stdin: "")
        #expect(result.status == 0)
        let lines = result.stdout.split(separator: "\n")
        #expect(lines.filter { $0.hasPrefix("LC_ALL=") } == ["LC_ALL=C"])
        #expect(!lines.contains { $0.hasPrefix("LANG=") || $0.hasPrefix("LC_MESSAGES=") })
        #expect(lines.contains { $0.hasPrefix("PATH=") }, "the rest of the environment is kept")
    }

    @Test("stdin is fed and stdout, stderr and the exit status come back")
    func roundTrip() throws {
        let result = try SpawnRunner(path: "/bin", environment: { [] }).run(
            "/bin/sh", ["-c", "cat; echo oops >&2; exit 3"], stdin: "hello\n")
        #expect(result.stdout == "hello\n")
        #expect(result.stderr == "oops\n")
        #expect(result.status == 3)
    }
}
