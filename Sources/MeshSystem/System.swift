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
    /// A byte scan, not `split`: this runs on every install (the default proxy uid is
    /// `istio-proxy`'s), and generic `split` costs more than the rest of the lookup.
    func idFromDatabase(_ path: String, name: String) -> UInt32? {
        guard let bytes = try? Files.read(path, limit: Files.defaultLimit) else { return nil }
        return Self.id(in: bytes, name: Array(name.utf8))
    }

    /// The third `:`-separated field of the line whose first field is `name`, if it is a
    /// decimal `UInt32`.
    static func id(in database: [UInt8], name: [UInt8]) -> UInt32? {
        let colon = UInt8(ascii: ":")
        let newline = UInt8(ascii: "\n")
        var start = 0
        while start < database.count {
            var end = start
            while end < database.count, database[end] != newline { end += 1 }
            defer { start = end + 1 }
            let nameEnd = start + name.count
            guard nameEnd < end, database[nameEnd] == colon, database[start..<nameEnd].elementsEqual(name)
            else { continue }
            // Skip the password field, then read the id up to the next colon.
            var i = nameEnd + 1
            while i < end, database[i] != colon { i += 1 }
            i += 1
            guard i < end else { continue }
            var id: UInt32 = 0
            var digits = 0
            var valid = true
            while i < end, database[i] != colon {
                let d = database[i] &- UInt8(ascii: "0")
                let (m, o1) = id.multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(UInt32(truncatingIfNeeded: d))
                if d >= 10 || o1 || o2 { valid = false }
                id = a
                digits += 1
                i += 1
            }
            // As `UInt32(field)` did: a line with a bad id is passed over, not an answer.
            if valid, digits > 0 { return id }
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
    text.withUTF8 { writeAll($0, to: fd) }
}

/// Writes all of `bytes` to a file descriptor, retrying on EINTR and short writes.
public func writeAll(_ bytes: [UInt8], to fd: Int32) {
    bytes.withUnsafeBufferPointer { writeAll($0, to: fd) }
}

private func writeAll(_ buffer: UnsafeBufferPointer<UInt8>, to fd: Int32) {
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

/// Writes to standard error, unbuffered.
public func writeStandardError(_ text: String) { writeAll(text, to: 2) }

/// Writes to standard output, unbuffered.
public func writeStandardOutput(_ text: String) { writeAll(text, to: 1) }

/// Writes bytes to standard output, unbuffered.
public func writeStandardOutput(_ bytes: [UInt8]) { writeAll(bytes, to: 1) }
