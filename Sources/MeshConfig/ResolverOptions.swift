import MeshModel

extension ConfigResolver {
    /// How the run goes (not what the rules are): dry run, validation, backends, logging,
    /// deadlines, the IPv6 choice and the resolv.conf path.
    func runOptions(_ input: ConfigInput) throws(ConfigError) -> RunOptions {
        var r = RunOptions()
        r.dryRun = try input.bool(.dryRun)
        r.skipRuleApply = try input.bool(.skipRuleApply)
        r.runValidation = try input.bool(.runValidation)
        r.probePort = try input.port(.iptablesProbePort)
        let (timeoutText, timeoutSource) = input.text(.probeTimeout)
        guard let timeout = parseGoDuration(timeoutText), timeout > 0 else {
            throw ConfigError(timeoutSource, timeoutText, "expected a positive duration such as 5s or 500ms")
        }
        r.probeTimeoutMilliseconds = timeout
        r.networkNamespace = try Self.networkNamespace(input.text(.networkNamespace))
        r.cniMode = try input.bool(.cniMode)
        r.reconcile = try input.bool(.reconcile)
        r.cleanupOnly = try input.bool(.cleanupOnly)
        r.forceApply = try input.bool(.forceApply)
        r.nativeNftables = try input.bool(.nativeNftables)
        let (variant, variantSource) = input.text(.forceIptablesBinary)
        if !variant.isEmpty {
            guard let v = IptablesVariant(rawValue: variant) else {
                throw ConfigError(variantSource, variant, "expected legacy or nft")
            }
            r.forceIptablesVariant = v
        }
        let (levelText, levelSource) = input.text(.logOutputLevel)
        r.logLevel = try logLevel(levelText, source: levelSource)
        r.logAsJSON = try input.bool(.logAsJSON)
        let (ipv6Text, ipv6Source) = input.text(.ipv6)
        guard let ipv6Choice = IPv6Choice(rawValue: ipv6Text) else {
            throw ConfigError(ipv6Source, ipv6Text, "expected auto, on or off")
        }
        r.ipv6Choice = ipv6Choice
        let (resolvPath, resolvSource) = input.text(.resolvConf)
        guard !resolvPath.isEmpty else { throw ConfigError(resolvSource, resolvPath, "expected a file path") }
        r.resolvConfPath = resolvPath
        let (childText, childSource) = input.text(.childTimeout)
        guard let childTimeout = parseGoDuration(childText), childTimeout > 0, childTimeout <= 3_600_000 else {
            throw ConfigError(childSource, childText, "expected a duration from 1ms to 1h such as 30s or 500ms")
        }
        r.childTimeoutMilliseconds = childTimeout
        return r
    }

    /// The environment-only knobs: the IPv4 loopback CIDR and the owner-group filter.
    func knobs(_ input: ConfigInput, _ c: inout CaptureConfig) throws(ConfigError) {
        let loopback = input.knob(.ipv4LoopbackCIDR)
        guard let loopbackCIDR = CIDR(loopback.text), loopbackCIDR.family == .ipv4,
            loopbackCIDR.address.isLoopback, loopbackCIDR.prefixLength >= 8
        else {
            throw ConfigError(loopback.source, loopback.text, "expected an IPv4 loopback CIDR with prefix 8-32")
        }
        c.ipv4LoopbackCIDR = loopbackCIDR

        let groups = input.knob(.ownerGroups)
        let groupsExclude = input.knob(.ownerGroupsExclude)
        if groups.text == "*" {
            c.ownerGroups = .allExcept(try ownerGroups(groupsExclude.text, source: groupsExclude.source))
        } else {
            if !groupsExclude.text.isEmpty {
                throw ConfigError(
                    groupsExclude.source, groupsExclude.text,
                    "only allowed when \(EnvironmentKnob.ownerGroups.rawValue) is '*'")
            }
            c.ownerGroups = .only(try ownerGroups(groups.text, source: groups.source))
        }
    }

    /// IPv6: meshinit's --ipv6 decides; auto is Istio's guess from interface addresses,
    /// falling back to "on if lo has ::1" where Istio would fail (a namespace with only lo).
    func ipv6(_ input: ConfigInput, _ choice: IPv6Choice, _ c: inout CaptureConfig, warnings: inout [String])
        throws(ConfigError)
    {
        let dualStack = try input.bool(.dualStack)
        switch choice {
        case .on: c.ipv6 = true
        case .off: c.ipv6 = false
        case .auto:
            if let detected = system.detectIPv6(dualStack: dualStack) {
                c.ipv6 = detected
            } else {
                c.ipv6 = system.loopbackHasIPv6()
                warnings.append(
                    "no non-loopback address found; IPv6 rules \(c.ipv6 ? "on" : "off") (lo \(c.ipv6 ? "has" : "lacks") ::1)"
                )
            }
        }
    }

    /// DNS capture: every DNS packet, or the resolv.conf's nameservers.
    func dns(
        _ input: ConfigInput, resolvConf: (path: String, source: ValueSource), _ c: inout CaptureConfig,
        warnings: inout [String]
    ) throws(ConfigError) {
        let (resolvPath, resolvSource) = resolvConf
        let captureAllDNS = try input.bool(.captureAllDNS)
        if try input.bool(.redirectDNS) {
            if captureAllDNS {
                c.dns = .all
            } else {
                let text: String
                switch system.readFile(resolvPath, limit: Self.resolvConfLimit) {
                case .text(let contents): text = contents
                case .unreadable:
                    throw ConfigError(resolvSource, resolvPath, "cannot read the file (needed for --redirect-dns)")
                case .tooLarge:
                    throw ConfigError(
                        resolvSource, resolvPath, "larger than 1 MiB, not a resolv.conf (needed for --redirect-dns)")
                }
                let servers = try parseResolvConf(text, path: resolvPath)
                if servers.ipv4.isEmpty && servers.ipv6.isEmpty {
                    warnings.append(
                        "--redirect-dns is set, --capture-all-dns is not, and \(resolvPath) lists no nameserver: DNS capture disabled"
                    )
                } else {
                    c.dns = .servers(ipv4: servers.ipv4, ipv6: servers.ipv6)
                }
            }
        }
    }
}
