import CMeshShims

#if canImport(Glibc)
    import Glibc
#endif

/// A failed system call, with its errno.
public struct SystemCallError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The call and its object, e.g. `socket(NETLINK_ROUTE)`, `open /run/netns/pod`.
    public var call: String
    public var errno: Int32

    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    public var description: String { "\(call): \(errnoText(errno))" }
}

/// One netlink message of a datagram.
public struct NetlinkMessage: Sendable, Hashable {
    public var type: UInt16
    public var flags: UInt16
    public var sequence: UInt32
    /// `nlmsg_pid`: in the kernel's replies, the port id of the socket that asked (or 0).
    public var portID: UInt32
    /// The bytes after the 16-byte header.
    public var payload: [UInt8]
    /// The whole message, header included.
    public var bytes: [UInt8]

    /// The errno of an `NLMSG_ERROR` or `NLMSG_DONE` message (0: an acknowledgement, or a
    /// dump that ended well); nil for other types.
    ///
    /// - Throws: `NetlinkFrameError` when the payload is too short to hold it.
    public func status() throws(NetlinkFrameError) -> Int32? {
        guard type == UInt16(NLMSG_ERROR) || type == UInt16(NLMSG_DONE) else { return nil }
        guard payload.count >= 4 else {
            // A DONE without a payload is an old kernel's "dump finished"; an ERROR must carry one.
            if type == UInt16(NLMSG_DONE) && payload.isEmpty { return 0 }
            throw NetlinkFrameError(
                reason: "\(type == UInt16(NLMSG_ERROR) ? "error" : "done") message of \(payload.count) payload bytes")
        }
        let raw = UInt32(payload[0]) | UInt32(payload[1]) << 8 | UInt32(payload[2]) << 16 | UInt32(payload[3]) << 24
        return -Int32(bitPattern: raw)
    }

    /// Whether the kernel marked this dump reply inconsistent: the objects changed while the
    /// dump ran (`NLM_F_DUMP_INTR`), so the dump must be repeated.
    public var dumpInterrupted: Bool { flags & UInt16(NLM_F_DUMP_INTR) != 0 }
}

/// A datagram that is not a sequence of well-formed netlink messages.
public struct NetlinkFrameError: Error, Sendable, Hashable, CustomStringConvertible {
    public var reason: String
    public var description: String { "malformed netlink reply: \(reason)" }
}

/// Splits datagrams into netlink messages, strictly: a message shorter than its header or
/// longer than what is left is an error, never "the end" (a truncated reply must not read
/// as success).
public enum NetlinkFrames {
    public static let headerSize = 16

    public static func parse(_ datagram: [UInt8]) throws(NetlinkFrameError) -> [NetlinkMessage] {
        var messages: [NetlinkMessage] = []
        var offset = 0
        while offset < datagram.count {
            guard datagram.count - offset >= headerSize else {
                throw NetlinkFrameError(reason: "\(datagram.count - offset) trailing bytes at offset \(offset)")
            }
            let length = Int(le32(datagram, offset))
            guard length >= headerSize, length <= datagram.count - offset else {
                throw NetlinkFrameError(
                    reason: "message length \(length) at offset \(offset) of a \(datagram.count)-byte datagram")
            }
            messages.append(
                NetlinkMessage(
                    type: le16(datagram, offset + 4), flags: le16(datagram, offset + 6),
                    sequence: le32(datagram, offset + 8), portID: le32(datagram, offset + 12),
                    payload: Array(datagram[(offset + headerSize)..<(offset + length)]),
                    bytes: Array(datagram[offset..<(offset + length)])))
            offset += (length + 3) & ~3
        }
        return messages
    }

    static func le16(_ bytes: [UInt8], _ at: Int) -> UInt16 { UInt16(bytes[at]) | UInt16(bytes[at + 1]) << 8 }

    static func le32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }
}

/// Why a netlink exchange failed.
public enum NetlinkExchangeError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A socket call failed.
    case system(SystemCallError)
    /// The kernel answered with an errno.
    case kernel(errno: Int32)
    /// A reply was not well formed.
    case malformed(NetlinkFrameError)
    /// Every attempt of the dump was interrupted by concurrent changes (`NLM_F_DUMP_INTR`).
    case interrupted(attempts: Int)

    public var errno: Int32? {
        switch self {
        case .system(let error): error.errno
        case .kernel(let errno): errno
        case .malformed: EBADMSG
        case .interrupted: EINTR
        }
    }

    public var description: String {
        switch self {
        case .system(let error): error.description
        case .kernel(let errno): errnoText(errno)
        case .malformed(let error): error.description
        case .interrupted(let attempts):
            "the dump was interrupted by concurrent changes \(attempts) times in a row (NLM_F_DUMP_INTR)"
        }
    }
}

/// A netlink socket's datagram I/O: the seam that lets tests script the kernel's replies.
public protocol NetlinkIO: AnyObject {
    /// Sends one datagram to the kernel.
    func send(_ datagram: [UInt8]) throws(SystemCallError)
    /// Receives one datagram (blocking) sent by the kernel: datagrams from any other sender
    /// (another process can unicast to our port id) are dropped, never returned. `ENOBUFS`
    /// (the receive buffer overflowed: replies were lost) is thrown as such.
    func receive() throws(SystemCallError) -> [UInt8]
    /// The socket's netlink port id, once bound (nil: unknown, nothing is checked against it).
    var localPortID: UInt32? { get }
}

extension NetlinkIO {
    public var localPortID: UInt32? { nil }
}

/// Request/acknowledge and dump exchanges over a `NetlinkIO`, with a fresh sequence number
/// for every message sent (a retry never reuses one), and replies taken only when their
/// sequence number is the request's and their `nlmsg_pid` is 0 or our port id: anything else
/// on the socket (a late reply to an abandoned request, a message forged by another process)
/// is skipped.
public final class NetlinkConversation {
    public let io: any NetlinkIO
    private var sequence: UInt32
    /// How many times a dump is repeated when the kernel flags it interrupted, or replies were
    /// lost to a receive-buffer overrun (`ENOBUFS`).
    public let dumpAttempts: Int

    public init(io: any NetlinkIO, firstSequence: UInt32 = 1, dumpAttempts: Int = 5) {
        self.io = io
        sequence = firstSequence
        self.dumpAttempts = max(1, dumpAttempts)
    }

    /// The next sequence number.
    public func nextSequence() -> UInt32 {
        defer { sequence &+= 1 }
        return sequence
    }

    /// Whether `message` may be a reply to a request of ours: sent to our port (or to 0, as
    /// some kernel paths do).
    func addressedToUs(_ message: NetlinkMessage) -> Bool {
        guard message.portID != 0, let own = io.localPortID else { return true }
        return message.portID == own
    }

    /// Sends `request(seq)` (built with `NLM_F_ACK`) and returns the errno of the kernel's
    /// acknowledgement (0: done).
    public func acknowledged(_ request: (UInt32) -> [UInt8]) throws(NetlinkExchangeError) -> Int32 {
        let seq = nextSequence()
        do {
            try io.send(request(seq))
        } catch {
            throw .system(error)
        }
        while true {
            for message in try receiveMessages() where message.sequence == seq && addressedToUs(message) {
                let status: Int32?
                do {
                    status = try message.status()
                } catch {
                    throw .malformed(error)
                }
                if let status { return status }
            }
        }
    }

    /// Sends `request(seq)` (a dump: `NLM_F_REQUEST | NLM_F_DUMP`) and returns every reply
    /// message until `NLMSG_DONE`. A dump the kernel flags `NLM_F_DUMP_INTR`, or whose replies
    /// were lost to `ENOBUFS`, is repeated from the start (with a new sequence number), at most
    /// `dumpAttempts` times in all.
    public func dump(_ request: (UInt32) -> [UInt8]) throws(NetlinkExchangeError) -> [NetlinkMessage] {
        try exchange([request(0)], isDump: [true]).first ?? []
    }

    /// Sends `requests` (complete netlink messages; their sequence numbers are replaced by
    /// fresh ones) in one datagram, and returns each one's replies (without `NLMSG_DONE` and
    /// acknowledgements), in request order. A request with `NLM_F_DUMP` is complete at its
    /// `NLMSG_DONE`; any other at its first reply. At most one dump may be among them (the
    /// kernel runs one dump per socket at a time), e.g. `NFT_MSG_GETGEN` + a dump + `GETGEN`.
    ///
    /// The kernel answers a datagram's messages in order, inside `sendmsg`: a request after a
    /// dump is answered once the dump's first part is made, and a change after that flags the
    /// dump's later parts `NLM_F_DUMP_INTR`. A dump so flagged, or replies lost to `ENOBUFS`,
    /// repeat the whole exchange (fresh sequence numbers: late replies of the abandoned one are
    /// skipped), at most `dumpAttempts` times in all.
    ///
    /// - Throws: `.kernel` with the first errno the kernel answered (after the dump in
    ///   progress has ended, so the socket can dump again), `.interrupted` when every attempt
    ///   was, `.system`, `.malformed`.
    public func exchange(_ requests: [[UInt8]]) throws(NetlinkExchangeError) -> [[NetlinkMessage]] {
        let dumpFlags = UInt16(NLM_F_DUMP)
        return try exchange(
            requests, isDump: requests.map { $0.count >= 8 && (NetlinkFrames.le16($0, 6) & dumpFlags) == dumpFlags })
    }

    private func exchange(_ requests: [[UInt8]], isDump: [Bool]) throws(NetlinkExchangeError) -> [[NetlinkMessage]] {
        for request in requests where request.count < NetlinkFrames.headerSize {
            throw .malformed(NetlinkFrameError(reason: "a \(request.count)-byte request"))
        }
        var overrun = false
        for _ in 0..<dumpAttempts {
            var datagram: [UInt8] = []
            var sequences: [UInt32] = []
            for request in requests {
                let seq = nextSequence()
                sequences.append(seq)
                var patched = request
                withUnsafeBytes(of: seq.littleEndian) { patched.replaceSubrange(8..<12, with: $0) }
                datagram += patched
                while datagram.count % 4 != 0 { datagram.append(0) }
            }
            do {
                try io.send(datagram)
            } catch {
                throw .system(error)
            }
            var replies = [[NetlinkMessage]](repeating: [], count: requests.count)
            var complete = [Bool](repeating: false, count: requests.count)
            var interrupted = false
            var failure: Int32?
            overrun = false
            // After an overrun a lost reply never comes: wait only for the dumps to end (the
            // kernel does not drop a dump's parts; it makes them as room frees up).
            while requests.indices.contains(where: { !complete[$0] && (isDump[$0] || !overrun) }) {
                let messages: [NetlinkMessage]
                do {
                    messages = try receiveMessages()
                } catch {
                    if case .system(let call) = error, call.errno == ENOBUFS {
                        overrun = true
                        continue
                    }
                    throw error
                }
                for message in messages where addressedToUs(message) {
                    guard let index = sequences.firstIndex(of: message.sequence), !complete[index] else { continue }
                    if message.dumpInterrupted { interrupted = true }
                    let status: Int32?
                    do {
                        status = try message.status()
                    } catch {
                        throw .malformed(error)
                    }
                    if let status {
                        // Without the capability nfnetlink refuses the whole datagram: it
                        // answers its first message and drops the rest unanswered.
                        if status == EPERM || status == EACCES { throw .kernel(errno: status) }
                        if status != 0, failure == nil { failure = status }
                        complete[index] = true
                    } else {
                        replies[index].append(message)
                        if !isDump[index] { complete[index] = true }
                    }
                }
            }
            if let failure { throw .kernel(errno: failure) }
            if !interrupted && !overrun { return replies }
        }
        if overrun {
            throw .system(SystemCallError("recv (netlink): replies lost to a receive buffer overrun", errno: ENOBUFS))
        }
        throw .interrupted(attempts: dumpAttempts)
    }

    private func receiveMessages() throws(NetlinkExchangeError) -> [NetlinkMessage] {
        let datagram: [UInt8]
        do {
            datagram = try io.receive()
        } catch {
            throw .system(error)
        }
        do {
            return try NetlinkFrames.parse(datagram)
        } catch {
            throw .malformed(error)
        }
    }
}

/// A netlink socket of one protocol (`NETLINK_ROUTE`, `NETLINK_SOCK_DIAG`, …), closed on deinit.
public final class NetlinkSocket: NetlinkIO {
    let fd: Int32
    private var buffer = [UInt8](repeating: 0, count: 65536)
    private var portID: UInt32?

    public init(protocol number: Int32, name: String) throws(SystemCallError) {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), number)
        guard fd >= 0 else { throw SystemCallError("socket(\(name))", errno: errno) }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Known once the kernel bound the socket (at its first send).
    public var localPortID: UInt32? {
        if let portID { return portID }
        var address = sockaddr_nl()
        var length = socklen_t(MemoryLayout<sockaddr_nl>.size)
        let rc = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard rc == 0, address.nl_pid != 0 else { return nil }
        portID = address.nl_pid
        return portID
    }

    public func send(_ datagram: [UInt8]) throws(SystemCallError) {
        var address = sockaddr_nl()
        address.nl_family = sa_family_t(AF_NETLINK)
        while true {
            let sent = datagram.withUnsafeBytes { raw in
                withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                    }
                }
            }
            if sent < 0 && errno == EINTR { continue }
            guard sent == datagram.count else {
                throw SystemCallError("sendto (netlink)", errno: sent < 0 ? errno : EMSGSIZE)
            }
            return
        }
    }

    public func receive() throws(SystemCallError) -> [UInt8] {
        try NetlinkSocket.receiveFromKernel(fd, into: &buffer)
    }

    /// One datagram from the kernel (source port id 0) on `fd`; datagrams from other senders
    /// are dropped. MSG_TRUNC: the datagram's real length, so a reply larger than the buffer
    /// is an error instead of a silently shortened message.
    public static func receiveFromKernel(_ fd: Int32, into buffer: inout [UInt8], flags: Int32 = 0)
        throws(SystemCallError) -> [UInt8]
    {
        while true {
            var source = sockaddr_nl()
            var length = socklen_t(MemoryLayout<sockaddr_nl>.size)
            let n = buffer.withUnsafeMutableBytes { raw in
                withUnsafeMutablePointer(to: &source) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        recvfrom(fd, raw.baseAddress, raw.count, Int32(MSG_TRUNC) | flags, $0, &length)
                    }
                }
            }
            if n < 0 {
                let code = errno
                if code == EINTR { continue }
                throw SystemCallError("recv (netlink)", errno: code)
            }
            guard n <= buffer.count else {
                throw SystemCallError("recv (netlink): \(n)-byte datagram", errno: EMSGSIZE)
            }
            // Not from the kernel: another process unicast to our port id. Never a reply.
            if source.nl_pid != 0 { continue }
            return Array(buffer[0..<n])
        }
    }
}
