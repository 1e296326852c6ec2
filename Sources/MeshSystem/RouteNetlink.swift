import CMeshShims

#if canImport(Glibc)
    import Glibc
#endif

/// A minimal rtnetlink (NETLINK_ROUTE) client: just what TPROXY routing and the `::6`
/// address need, so no `ip` process is spawned on the install path.
///
/// Message layout (all host byte order, 4-byte aligned):
/// ```
/// nlmsghdr   len:u32 type:u16 flags:u16 seq:u32 pid:u32        (16 bytes)
/// family hdr ifaddrmsg (8) | fib_rule_hdr (12) | rtmsg (12)
/// rtattr*    len:u16 type:u16 payload, padded to 4
/// ```
struct RouteNetlink: ~Copyable {
    let fd: Int32
    var sequence: UInt32 = 1

    struct Failure: Error {
        var errno: Int32
    }

    // Message types and flags (linux/rtnetlink.h, linux/netlink.h).
    static let newAddress: UInt16 = 20
    static let deleteAddress: UInt16 = 21
    static let getAddress: UInt16 = 22
    static let newRoute: UInt16 = 24
    static let deleteRoute: UInt16 = 25
    static let getRoute: UInt16 = 26
    static let newRule: UInt16 = 32
    static let deleteRule: UInt16 = 33
    static let getRule: UInt16 = 34
    static let request: UInt16 = 0x1
    static let ack: UInt16 = 0x4
    static let replace: UInt16 = 0x100
    static let exclusive: UInt16 = 0x200
    static let create: UInt16 = 0x400
    static let dump: UInt16 = 0x300
    static let messageError: UInt16 = 2
    static let messageDone: UInt16 = 3

    init() throws(Failure) {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)  // NETLINK_ROUTE = 0
        guard fd >= 0 else { throw Failure(errno: errno) }
        self.fd = fd
    }

    deinit { close(fd) }

    /// An rtattr with a payload.
    static func attribute(_ type: UInt16, _ payload: [UInt8]) -> [UInt8] {
        var out = le16(UInt16(4 + payload.count)) + le16(type) + payload
        while out.count % 4 != 0 { out.append(0) }
        return out
    }

    static func le16(_ v: UInt16) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    static func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    /// Sends one request with NLM_F_ACK and returns 0 or the kernel's errno.
    mutating func transact(_ type: UInt16, flags: UInt16, body: [UInt8]) throws(Failure) -> Int32 {
        let seq = sequence
        sequence += 1
        try send(type, flags: flags | Self.request | Self.ack, seq: seq, body: body)
        var result: Int32?
        try receive(seq: seq) { type, payload in
            if type == Self.messageError, payload.count >= 4 {
                result = -Int32(bitPattern: Self.u32(payload, 0))
                return false
            }
            return true
        }
        return result ?? 0
    }

    /// A dump request; calls `each(type, payload)` for every reply message.
    mutating func dump(_ type: UInt16, body: [UInt8], _ each: ([UInt8]) -> Void) throws(Failure) {
        let seq = sequence
        sequence += 1
        try send(type, flags: Self.request | Self.dump, seq: seq, body: body)
        var failure: Int32 = 0
        try receive(seq: seq) { type, payload in
            if type == Self.messageDone { return false }
            if type == Self.messageError {
                if payload.count >= 4 { failure = -Int32(bitPattern: Self.u32(payload, 0)) }
                return false
            }
            each(payload)
            return true
        }
        if failure != 0 { throw Failure(errno: failure) }
    }

    func send(_ type: UInt16, flags: UInt16, seq: UInt32, body: [UInt8]) throws(Failure) {
        let message =
            Self.le32(UInt32(16 + body.count)) + Self.le16(type) + Self.le16(flags) + Self.le32(seq) + Self.le32(0)
            + body
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        let sent = message.withUnsafeBytes { raw in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                }
            }
        }
        guard sent == message.count else { throw Failure(errno: errno) }
    }

    /// Reads replies for `seq` until `handle` returns false.
    func receive(seq: UInt32, _ handle: (UInt16, [UInt8]) -> Bool) throws(Failure) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(errno: errno)
            }
            var offset = 0
            while offset + 16 <= n {
                let length = Int(Self.u32(buffer, offset))
                guard length >= 16, offset + length <= n else { return }
                let type = UInt16(buffer[offset + 4]) | UInt16(buffer[offset + 5]) << 8
                let messageSeq = Self.u32(buffer, offset + 8)
                let payload = Array(buffer[(offset + 16)..<(offset + length)])
                if messageSeq == seq, !handle(type, payload) { return }
                offset += (length + 3) & ~3
            }
        }
    }

    static func u32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }

    /// Attributes after a family header of `headerSize` bytes: type → payload.
    static func attributes(_ payload: [UInt8], headerSize: Int) -> [UInt16: [UInt8]] {
        var out: [UInt16: [UInt8]] = [:]
        var offset = headerSize
        while offset + 4 <= payload.count {
            let length = Int(UInt16(payload[offset]) | UInt16(payload[offset + 1]) << 8)
            let type = (UInt16(payload[offset + 2]) | UInt16(payload[offset + 3]) << 8) & 0x3fff
            guard length >= 4, offset + length <= payload.count else { break }
            out[type] = Array(payload[(offset + 4)..<(offset + length)])
            offset += (length + 3) & ~3
        }
        return out
    }
}
