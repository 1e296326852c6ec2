import CMeshShims
import CRtnetlink

#if canImport(Glibc)
    import Glibc
#endif

/// A minimal rtnetlink (NETLINK_ROUTE) client: just what TPROXY routing and the `::6`
/// address need, so no `ip` process is spawned on the install path. Messages are built with
/// the kernel's own constants (linux/rtnetlink.h, fib_rules.h, if_addr.h).
///
/// Message layout (all host byte order, 4-byte aligned):
/// ```
/// nlmsghdr   len:u32 type:u16 flags:u16 seq:u32 pid:u32        (16 bytes)
/// family hdr ifaddrmsg (8) | fib_rule_hdr (12) | rtmsg (12)
/// rtattr*    len:u16 type:u16 payload, padded to 4
/// ```
struct RouteNetlink {
    let conversation: NetlinkConversation

    init(io: any NetlinkIO) {
        conversation = NetlinkConversation(io: io)
    }

    // Message types (linux/rtnetlink.h).
    static let newAddress = UInt16(RTM_NEWADDR)
    static let deleteAddress = UInt16(RTM_DELADDR)
    static let getAddress = UInt16(RTM_GETADDR)
    static let newRoute = UInt16(RTM_NEWROUTE)
    static let deleteRoute = UInt16(RTM_DELROUTE)
    static let getRoute = UInt16(RTM_GETROUTE)
    static let newRule = UInt16(RTM_NEWRULE)
    static let deleteRule = UInt16(RTM_DELRULE)
    static let getRule = UInt16(RTM_GETRULE)
    // Flags (linux/netlink.h).
    static let request = UInt16(NLM_F_REQUEST)
    static let ack = UInt16(NLM_F_ACK)
    static let replace = UInt16(NLM_F_REPLACE)
    static let exclusive = UInt16(NLM_F_EXCL)
    static let create = UInt16(NLM_F_CREATE)
    static let dumpFlags = UInt16(NLM_F_DUMP)

    /// An rtattr with a payload.
    static func attribute(_ type: Int, _ payload: [UInt8]) -> [UInt8] {
        var out = le16(UInt16(4 + payload.count)) + le16(UInt16(type)) + payload
        while out.count % 4 != 0 { out.append(0) }
        return out
    }

    static func le16(_ v: UInt16) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
    static func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    static func message(_ type: UInt16, flags: UInt16, seq: UInt32, body: [UInt8]) -> [UInt8] {
        le32(UInt32(NetlinkFrames.headerSize + body.count)) + le16(type) + le16(flags) + le32(seq) + le32(0) + body
    }

    /// Sends one request with NLM_F_ACK and returns 0 or the kernel's errno.
    func transact(_ type: UInt16, flags: UInt16, body: [UInt8]) throws(NetlinkExchangeError) -> Int32 {
        try conversation.acknowledged { seq in
            Self.message(type, flags: flags | Self.request | Self.ack, seq: seq, body: body)
        }
    }

    /// A dump request; the payload (after the netlink header) of every reply.
    func dump(_ type: UInt16, body: [UInt8]) throws(NetlinkExchangeError) -> [[UInt8]] {
        try conversation.dump { seq in Self.message(type, flags: Self.request | Self.dumpFlags, seq: seq, body: body) }
            .map(\.payload)
    }

    static func u32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }

    /// Attributes after a family header of `headerSize` bytes: type → payload.
    ///
    /// - Throws: `NetlinkFrameError` for a header or attribute that does not fit.
    static func attributes(_ payload: [UInt8], headerSize: Int) throws(NetlinkFrameError) -> [UInt16: [UInt8]] {
        guard payload.count >= headerSize else {
            throw NetlinkFrameError(reason: "\(payload.count)-byte payload, header is \(headerSize)")
        }
        var out: [UInt16: [UInt8]] = [:]
        var offset = headerSize
        while offset < payload.count {
            guard payload.count - offset >= 4 else {
                throw NetlinkFrameError(reason: "\(payload.count - offset) trailing attribute bytes")
            }
            let length = Int(UInt16(payload[offset]) | UInt16(payload[offset + 1]) << 8)
            let type =
                (UInt16(payload[offset + 2]) | UInt16(payload[offset + 3]) << 8)
                & ~(UInt16(NLA_F_NESTED) | UInt16(NLA_F_NET_BYTEORDER))
            guard length >= 4, offset + length <= payload.count else {
                throw NetlinkFrameError(reason: "attribute \(type) of length \(length) at offset \(offset)")
            }
            out[type] = Array(payload[(offset + 4)..<(offset + length)])
            offset += (length + 3) & ~3
        }
        return out
    }
}
