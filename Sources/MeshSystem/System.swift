import MeshModel

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The live system, through libc (no Foundation): account databases, interface addresses,
/// files.
public struct LiveSystem: Sendable {
    public init() {}

    public func userID(named name: String) -> UInt32? {
        #if MESHINIT_FULLY_STATIC
            // A fully static glibc cannot load NSS modules (getpwnam_r crashes): read the file.
            return idFromDatabase("/etc/passwd", name: name)
        #else
            return userIDThroughNSS(named: name)
        #endif
    }

    public func groupID(named name: String) -> UInt32? {
        #if MESHINIT_FULLY_STATIC
            return idFromDatabase("/etc/group", name: name)
        #else
            return groupIDThroughNSS(named: name)
        #endif
    }

    /// `name:x:ID:…` lines of /etc/passwd or /etc/group (the files NSS source).
    func idFromDatabase(_ path: String, name: String) -> UInt32? {
        guard let text = readFile(path, limit: Files.defaultLimit) else { return nil }
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 3, omittingEmptySubsequences: false)
            if fields.count >= 3, fields[0] == name, let id = UInt32(fields[2]) { return id }
        }
        return nil
    }

    func userIDThroughNSS(named name: String) -> UInt32? {
        var pwd = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 4096)
        let rc = getpwnam_r(name, &pwd, &buffer, buffer.count, &result)
        guard rc == 0, result != nil else { return nil }
        return pwd.pw_uid
    }

    func groupIDThroughNSS(named name: String) -> UInt32? {
        var grp = group()
        var result: UnsafeMutablePointer<group>?
        var buffer = [CChar](repeating: 0, count: 16384)
        let rc = getgrnam_r(name, &grp, &buffer, buffer.count, &result)
        guard rc == 0, result != nil else { return nil }
        return grp.gr_gid
    }

    /// Istio's guess (`EnableIPv6`): interface addresses, skipping loopback and link-local.
    /// Go lists IPv4 addresses before IPv6 ones, and without `--dual-stack` the first usable
    /// address decides; so IPv6 is on when there is a usable IPv6 address and no usable IPv4
    /// one, or, with `--dual-stack`, when there is any usable IPv6 address.
    public func detectIPv6(dualStack: Bool) -> Bool? {
        let addresses = interfaceAddresses()
        let usable = addresses.filter { !$0.address.isLoopback && !isLinkLocal($0.address) }
        let hasV4 = usable.contains { $0.address.family == .ipv4 }
        let hasV6 = usable.contains { $0.address.family == .ipv6 }
        if !hasV4 && !hasV6 { return nil }
        return dualStack ? hasV6 : (hasV6 && !hasV4)
    }

    public func loopbackHasIPv6() -> Bool {
        interfaceAddresses().contains { $0.address.family == .ipv6 && $0.address.isLoopback }
    }

    /// A file's text, or nil if it cannot be read or holds more than `limit` bytes (use
    /// `Files.read` to tell the two apart).
    public func readFile(_ path: String, limit: Int = 1 << 20) -> String? {
        (try? Files.read(path, limit: limit)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// Addresses of all interfaces (name, address), in `getifaddrs` order.
    public func interfaceAddresses() -> [(interface: String, address: IPAddress)] {
        var head: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&head) == 0 else { return [] }
        defer { freeifaddrs(head) }
        var out: [(String, IPAddress)] = []
        var cursor = head
        while let entry = cursor {
            defer { cursor = entry.pointee.ifa_next }
            guard let sa = entry.pointee.ifa_addr else { continue }
            let name = String(cString: entry.pointee.ifa_name)
            switch Int32(sa.pointee.sa_family) {
            case AF_INET:
                let v = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr.s_addr }
                out.append((name, IPAddress(ipv4: UInt32(bigEndian: v))))
            case AF_INET6:
                let bytes = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { p in
                    withUnsafeBytes(of: p.pointee.sin6_addr) { Array($0) }
                }
                var high: UInt64 = 0
                var low: UInt64 = 0
                for b in bytes[0..<8] { high = high << 8 | UInt64(b) }
                for b in bytes[8..<16] { low = low << 8 | UInt64(b) }
                out.append((name, IPAddress(ipv6: high, low)))
            default:
                continue
            }
        }
        return out
    }

    func isLinkLocal(_ address: IPAddress) -> Bool {
        switch address.family {
        case .ipv4: (address.low >> 16) == 0xa9fe  // 169.254/16
        case .ipv6: (address.high >> 54) == 0x3fa  // fe80::/10
        }
    }
}

/// Writes all of `text` to a file descriptor, retrying on EINTR and short writes.
public func writeAll(_ text: String, to fd: Int32) {
    var text = text
    text.withUTF8 { buffer in
        guard let base = buffer.baseAddress else { return }
        var offset = 0
        while offset < buffer.count {
            let n = write(fd, base + offset, buffer.count - offset)
            if n <= 0 {
                if n < 0 && errno == EINTR { continue }
                return
            }
            offset += n
        }
    }
}

/// Writes to standard error, unbuffered.
public func writeStandardError(_ text: String) { writeAll(text, to: 2) }

/// Writes to standard output, unbuffered.
public func writeStandardOutput(_ text: String) { writeAll(text, to: 1) }
