import CMeshShims
import MeshModel

#if canImport(Glibc)
    import Glibc
#endif

/// Istio's `--run-validation` probe: listen on 127.0.0.1 (IPv6: ::1) at the outbound and
/// inbound capture ports, connect (every second) from 127.0.0.1 to 127.0.0.6:probePort (IPv6:
/// from ::1 to [::6]:probePort), and succeed when a listener accepts a connection whose
/// SO_ORIGINAL_DST port is the probe port — i.e. the redirect works. The caller must run as
/// the proxy uid for the rules to redirect it.
public struct RedirectProbe {
    public var listenPorts: [Port]
    public var probePort: Port
    public var timeoutMilliseconds: Int64
    public var family: Family

    public init(listenPorts: [Port], probePort: Port, timeoutMilliseconds: Int64, family: Family = .ipv4) {
        self.listenPorts = listenPorts
        self.probePort = probePort
        self.timeoutMilliseconds = timeoutMilliseconds
        self.family = family
    }

    /// `127.0.0.6:15002`, `[::6]:15002`: what the probe connects to.
    public var target: String { family == .ipv4 ? "127.0.0.6:\(probePort)" : "[::6]:\(probePort)" }

    public struct Failure: Error, Sendable, Hashable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    static let soOriginalDst: Int32 = 80

    public func run() throws(Failure) {
        var listeners: [Int32] = []
        defer { for fd in listeners { close(fd) } }
        for port in Set(listenPorts) {
            listeners.append(try listen(on: port))
        }
        let deadline = now() + timeoutMilliseconds
        var nextAttempt: Int64 = 0
        var client: Int32 = -1
        defer { if client >= 0 { close(client) } }
        while now() < deadline {
            if now() >= nextAttempt {
                if client >= 0 { close(client) }
                client = connectProbe()
                nextAttempt = now() + 1000
            }
            var fds = listeners.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            let wait = Int32(max(1, min(nextAttempt, deadline) - now()))
            let ready = poll(&fds, nfds_t(fds.count), wait)
            if ready <= 0 { continue }
            for entry in fds where entry.revents & Int16(POLLIN) != 0 {
                let conn = accept(entry.fd, nil, nil)
                guard conn >= 0 else { continue }
                defer { close(conn) }
                guard let port = originalPort(conn) else { continue }
                var reply = Array("\(port)".utf8)
                _ = write(conn, &reply, reply.count)
                if port == probePort.value { return }
            }
        }
        throw Failure(
            message:
                "validation failed: no connection to \(target) was redirected to ports \(listenPorts.map(\.description).joined(separator: ",")) within \(timeoutMilliseconds) ms (are the rules installed, and is this process running as the proxy uid?)"
        )
    }

    /// The port of a redirected connection's SO_ORIGINAL_DST (IPv6: IP6T_SO_ORIGINAL_DST, the
    /// same option number at SOL_IPV6).
    func originalPort(_ conn: Int32) -> UInt16? {
        if family == .ipv4 {
            var original = sockaddr_in()
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            guard getsockopt(conn, Int32(SOL_IP), Self.soOriginalDst, &original, &length) == 0 else { return nil }
            return UInt16(bigEndian: original.sin_port)
        }
        var original = sockaddr_in6()
        var length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        guard getsockopt(conn, Int32(SOL_IPV6), Self.soOriginalDst, &original, &length) == 0 else { return nil }
        return UInt16(bigEndian: original.sin6_port)
    }

    /// Calls `body` with `address:port` as a sockaddr of the probe's family (IPv6: `::last`).
    func withAddress<T>(ipv4: UInt32, ipv6 last: UInt8, port: UInt16, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T)
        -> T
    {
        if family == .ipv4 {
            var address = sockaddr_in(ipv4: IPAddress(ipv4: ipv4), port: port)
            return withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    body($0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = port.bigEndian
        withUnsafeMutableBytes(of: &address.sin6_addr) { $0[15] = last }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                body($0, socklen_t(MemoryLayout<sockaddr_in6>.size))
            }
        }
    }

    var domain: Int32 { family == .ipv4 ? AF_INET : AF_INET6 }
    var loopbackText: String { family == .ipv4 ? "127.0.0.1" : "[::1]" }

    func listen(on port: Port) throws(Failure) -> Int32 {
        let fd = socket(domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(message: "validation: socket: \(errnoText(errno))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withAddress(ipv4: 0x7f00_0001, ipv6: 1, port: port.value) { bind(fd, $0, $1) }
        guard bound == 0, Glibc.listen(fd, 16) == 0 else {
            let code = errno
            close(fd)
            throw Failure(message: "validation: cannot listen on \(loopbackText):\(port): \(errnoText(code))")
        }
        return fd
    }

    /// Starts a non-blocking connect from 127.0.0.1 to 127.0.0.6:probePort (IPv6: ::1 to ::6).
    func connectProbe() -> Int32 {
        let fd = socket(
            domain, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return -1 }
        _ = withAddress(ipv4: 0x7f00_0001, ipv6: 1, port: 0) { bind(fd, $0, $1) }
        _ = withAddress(ipv4: 0x7f00_0006, ipv6: 6, port: probePort.value) { connect(fd, $0, $1) }
        return fd
    }

    func now() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}

extension sockaddr_in {
    init(ipv4 address: IPAddress, port: UInt16) {
        self.init()
        sin_family = sa_family_t(AF_INET)
        sin_port = port.bigEndian
        sin_addr = in_addr(s_addr: UInt32(truncatingIfNeeded: address.low).bigEndian)
    }
}
