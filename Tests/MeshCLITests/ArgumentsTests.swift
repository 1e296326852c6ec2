import ArgumentParser
import Foundation
import MeshConfig
import PropertyBased
import Testing

@testable import meshinit

/// The flag table is the one declaration of every flag: the parser, the environment names and
/// the help all come from it.
@Suite("Flag table")
struct FlagTableTests {
    @Test("every flag has exactly one entry; spellings and variables are unique")
    func coverage() {
        let table = IstioFlag.table
        #expect(table.count == IstioFlag.allCases.count)
        #expect(Set(table.map(\.flag)) == Set(IstioFlag.allCases))
        #expect(Set(table.map(\.long)).count == table.count)
        let shorts = table.compactMap(\.short)
        #expect(Set(shorts).count == shorts.count)
        let names = IstioFlag.environmentNames
        #expect(Set(names).count == names.count)
        for spec in table {
            #expect(IstioFlag(long: spec.long) == spec.flag)
            if let short = spec.short { #expect(IstioFlag(short: short) == spec.flag) }
            #expect(!spec.help.isEmpty)
        }
    }

    /// Istio's spellings (istio-iptables' flag set), which callers pass unchanged.
    @Test("Istio's spellings and variables")
    func istio() {
        #expect(IstioFlag.envoyPort.displayName == "-p/--envoy-port")
        #expect(IstioFlag.envoyPort.environment == nil)
        #expect(IstioFlag.redirectDNS.aliasEnvironment == "ISTIO_META_DNS_CAPTURE")
        #expect(IstioFlag.logOutputLevel.long == "log_output_level")
        #expect(IstioFlag.table.filter { !$0.meshinitOwn }.count == 34)
    }

    /// The help every command prints lists every flag from the table: spelling, value,
    /// environment variables and default.
    @Test("help text is the table", arguments: ["install", "plan", "explain", "clean", "verify", "stats"])
    func help(command: String) throws {
        let text = Meshinit.helpMessage(for: try #require(Self.command(command)), columns: 200)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        for spec in IstioFlag.table {
            // The flag's entry: its usage line and the indented lines under it.
            let start = try #require(lines.firstIndex(of: Substring("  " + IstioFlagHelp.usage(spec))), "\(spec.long)")
            let body = lines[(start + 1)...].prefix { $0.hasPrefix("        ") }
            let words = body.flatMap { $0.split(separator: " ") }.joined(separator: " ")
            #expect(words.hasPrefix(spec.help.split(separator: " ").joined(separator: " ")), "\(spec.long): \(words)")
            if let env = spec.environment { #expect(words.contains("env \(env)"), "\(spec.long): \(words)") }
            if let alias = spec.aliasEnvironment { #expect(words.contains("or \(alias)"), "\(spec.long)") }
            if spec.value != .boolean, !spec.defaultValue.isEmpty {
                #expect(words.contains("default \(spec.defaultValue)"), "\(spec.long): \(words)")
            }
        }
        for knob in EnvironmentKnob.allCases { #expect(text.contains("  \(knob.rawValue)\n")) }
    }

    static func command(_ name: String) -> ParsableCommand.Type? {
        Meshinit.configuration.subcommands.first { $0.configuration.commandName == name }
    }
}

@Suite("Istio's argv (pflag rules)")
struct ArgumentsTests {
    static let seed = [
        "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d",
        "15090,15021,15020",
    ]

    @Test("Istio's injected arguments")
    func seedArguments() throws {
        let flags = try IstioArguments.parse(Self.seed + ["--log_output_level=default:info"])
        #expect(
            flags == [
                .envoyPort: "15001", .inboundCapturePort: "15006", .proxyUID: "1337", .interceptionMode: "REDIRECT",
                .serviceCIDR: "*", .serviceExcludeCIDR: "", .inboundPorts: "*", .localExcludePorts: "15090,15021,15020",
                .logOutputLevel: "default:info",
            ])
    }

    static let spellingCases: [([String], FlagMap<String>)] = [

        (
            ["--envoy-port=15001", "--inbound-capture-port", "15006", "--istio-inbound-ports="],
            [.envoyPort: "15001", .inboundCapturePort: "15006", .inboundPorts: ""]
        ),
        (
            ["--redirect-dns=false", "--drop-invalid=1", "--dual-stack=T", "-n", "--log_as_json=false"],
            [.redirectDNS: "false", .dropInvalid: "true", .dualStack: "true", .dryRun: "true", .logAsJSON: "false"]
        ),
        (
            ["-p=15001", "-n=false", "-x=", "-i=10.0.0.0/8"],
            [.envoyPort: "15001", .dryRun: "false", .serviceExcludeCIDR: "", .serviceCIDR: "10.0.0.0/8"]
        ),
        (["-p", "1", "-p", "2", "--envoy-port", "3"], [.envoyPort: "3"]),
        (["-p15001", "-x10.0.0.0/8"], [.envoyPort: "15001", .serviceExcludeCIDR: "10.0.0.0/8"]),
        (["--no-redirect-dns", "--no_log_as_json"], [.redirectDNS: "false", .logAsJSON: "false"]),
        // A value-taking flag takes the next argument whatever it looks like (pflag).
        (["-x", "-1", "-p", "--envoy-port"], [.serviceExcludeCIDR: "-1", .envoyPort: "--envoy-port"]),
        ([], [:]),
    ]

    @Test("every spelling", arguments: spellingCases)
    func spellings(argv: [String], want: FlagMap<String>) throws {
        #expect(try IstioArguments.parse(argv) == want)
    }

    @Test(
        "refused, with one line naming the problem",
        arguments: [
            (["--unknown"], "unknown flag: --unknown"), (["-Z", "1"], "unknown shorthand flag: \"Z\" in -Z"),
            (["-p"], "flag needs an argument: -p/--envoy-port"),
            (["--redirect-dns=yes"], "invalid value \"yes\" for --redirect-dns: expected a boolean"),
            (["positional"], "unexpected argument \"positional\""), (["--", "-p", "1"], "unexpected argument \"-p\""),
            (["-n1"], "unknown shorthand flag: \"1\" in -n1"), (["--no-envoy-port"], "unknown flag: --no-envoy-port"),
        ])
    func refused(argv: [String], message: String) {
        #expect {
            try IstioArguments.parse(argv)
        } throws: { error in
            let text = (error as? ArgumentError)?.message ?? ""
            return text.hasPrefix(message) && !text.contains("\n")
        }
    }

    @Test("plan's own options")
    func planOptions() throws {
        var options: [String: String] = [:]
        let flags = try IstioArguments.parse(
            ["--format", "nft", "-i", "*", "--family=ipv4"], options: ["format", "family"], into: &options)
        #expect(options == ["format": "nft", "family": "ipv4"])
        #expect(flags == [.serviceCIDR: "*"])
        #expect(PlanCommand.fastPath(["--format", "bogus"]) == nil, "a bad format goes to the full CLI's message")
    }

    /// The full CLI (sub-commands, help) hands Istio's flags to the same parser: swift-argument-
    /// parser must pass every one of them through untouched and in order, whatever the values.
    @Test func fullCLIPassesFlagsThrough() async throws {
        let flags = IstioFlag.allCases
        let values = ["", "15001", "*", "a,b", "-", "x=y", "true", "false", "0", "5s", "-5", "eth0 x", "--all"]
        func token(_ code: Int) -> [String] {
            let flag = flags[code % flags.count]
            let value = values[(code / flags.count) % values.count]
            switch code / (flags.count * values.count) {
            case 0: return flag.isBoolean ? ["--\(flag.long)"] : ["--\(flag.long)", value]
            case 1: return ["--\(flag.long)=\(value)"]
            case 2: return flag.short.map { flag.isBoolean ? ["-\($0)"] : ["-\($0)", value] } ?? ["--\(flag.long)"]
            default: return flag.short.map { ["-\($0)=\(value)"] } ?? ["--\(flag.long)"]
            }
        }
        let codes = Gen.int(in: 0..<(flags.count * values.count * 4)).array(of: 0...8)
        await propertyCheck(count: 300, input: codes) { codes in
            let argv = codes.flatMap(token)
            for (name, prefix) in [
                ("install", [String]()), ("verify", []), ("clean", ["--all-namespaces"]), ("stats", ["--format=json"]),
                ("stats", ["--all-namespaces"]),
            ] {
                guard let command = try? Meshinit.parseAsRoot([name] + prefix + argv) else {
                    Issue.record("\(name) refused \(argv)")
                    continue
                }
                let passed: [String]? =
                    switch command {
                    case let c as Install: c.istio.arguments
                    case let c as Verify: c.istio.arguments
                    case let c as Clean: c.istio.arguments
                    case let c as StatsCommand: c.istio.arguments
                    default: nil
                    }
                #expect(passed == argv, "\(name) \(argv)")
            }
            // explain: flags, then packets; the fast path reads them as the full CLI does.
            let packets = ["out", "tcp", "10.0.0.5:80", "uid=1000", "in tcp :8080", "-"]
            guard let full = try? Meshinit.parseAsRoot(["explain"] + argv + packets) as? ExplainCommand else {
                Issue.record("explain refused \(argv)")
                return
            }
            #expect(full.arguments == argv + packets, "explain \(argv)")
            var operands: [String]? = []
            var extra: [String: String] = [:]
            let given = try? IstioArguments.parse(full.arguments, options: [], into: &extra, operands: &operands)
            let fast = ExplainCommand.fastPath(ArraySlice(argv + packets))
            if let given {
                #expect(fast?.given == given && fast?.operands == operands, "explain \(argv)")
            } else {
                #expect(fast == nil, "explain \(argv): a refused flag goes to the full CLI's message")
            }
        }
    }
}

@Suite("Version")
struct VersionTests {
    /// `--version` names the commit the binary was built from (the GitRevision plugin).
    @Test("--version carries the git revision of the source it was built from")
    func revision() throws {
        #expect(meshinitVersionLine == "\(meshinitVersion) (git \(meshinitRevision))")
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let git = Process()
        git.executableURL = URL(fileURLWithPath: "/usr/bin/git")
        git.arguments = ["-C", root.path, "rev-parse", "--short=12", "HEAD"]
        let out = Pipe()
        git.standardOutput = out
        try git.run()
        git.waitUntilExit()
        let head = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(head.count == 12)
        #expect(
            meshinitRevision == head || meshinitRevision == head + "-dirty",
            "built from \(meshinitRevision), HEAD is \(head)")
    }
}
