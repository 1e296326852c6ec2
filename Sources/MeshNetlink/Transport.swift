import CNftnl
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// Sends batches and dump requests to nf_tables. The real one is `NetfilterSocket`; tests
/// can record batches with a fake.
public protocol NetlinkTransport {
    /// Sends the batch in one `sendmsg` and reads every acknowledgement.
    ///
    /// - Throws: `NetlinkError` — `.kernel` naming the first message the kernel refused
    ///   (then nothing was applied), `.system` for socket failures.
    func commit(_ batch: Batch) throws(NetlinkError)

    /// Sends one dump request (a complete netlink message with `NLM_F_DUMP`) and returns
    /// every reply message (whole `nlmsghdr`s, without the final `NLMSG_DONE`).
    func dump(_ request: [UInt8]) throws(NetlinkError) -> [[UInt8]]
}

/// A `NETLINK_NETFILTER` socket (libmnl), optionally opened inside another network
/// namespace. Closed when the value goes away.
///
/// Options: `NETLINK_CAP_ACK` (error acks carry only the header, not the whole request:
/// without it a failing large message can overflow the receive buffer) and
/// `NETLINK_EXT_ACK` (the kernel adds the offset of the offending attribute); a 10-second
/// receive timeout, so a reply that never comes is an error (EAGAIN), never a hang.
public final class NetfilterSocket: NetlinkTransport {
    fileprivate let socket: OpaquePointer

    /// Opens the socket in the current network namespace, or — with `networkNamespace`, a
    /// path such as `/var/run/netns/pod` or `/proc/PID/ns/net` — inside that namespace:
    /// the calling thread enters it, creates the socket and returns to its own namespace
    /// (`withNetworkNamespace`; a socket stays bound to the namespace it was created in).
    ///
    /// - Throws: `NetlinkError.system` naming the failing call (`setns`, `socket`, `bind`).
    public init(networkNamespace: String? = nil) throws(NetlinkError) {
        let opened: OpaquePointer
        if let path = networkNamespace {
            do {
                opened = try withNetworkNamespace(path) { () throws(NetlinkError) -> OpaquePointer in
                    try Self.open()
                }
            } catch let error as NamespaceError {
                throw NetlinkError(.system, "\(error.call) \(error.path)", errno: error.errno)
            } catch let error as NetlinkError {
                throw error
            } catch {
                throw NetlinkError(.system, "setns \(path)", errno: EINVAL)
            }
        } else {
            opened = try Self.open()
        }
        socket = opened
        var on: Int32 = 1
        _ = mnl_socket_setsockopt(opened, NETLINK_CAP_ACK, &on, socklen_t(MemoryLayout<Int32>.size))
        _ = mnl_socket_setsockopt(opened, NETLINK_EXT_ACK, &on, socklen_t(MemoryLayout<Int32>.size))
        // The kernel answers inside sendmsg (a dump's later parts as they are read): a reply that
        // never comes is a bug or a refused request, never a wait. Fail, never hang.
        var timeout = timeval(tv_sec: NetfilterSocket.receiveTimeoutSeconds, tv_usec: 0)
        _ = setsockopt(
            mnl_socket_get_fd(opened), SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard mnl_socket_bind(opened, 0, pid_t(MNL_SOCKET_AUTOPID)) == 0 else {
            let code = currentErrno()
            mnl_socket_close(opened)
            throw NetlinkError(.system, "bind(NETLINK_NETFILTER)", errno: code)
        }
    }

    /// How long a blocking read of a reply may wait (`SO_RCVTIMEO`).
    static let receiveTimeoutSeconds = 10

    private static func open() throws(NetlinkError) -> OpaquePointer {
        guard let opened = mnl_socket_open(NETLINK_NETFILTER) else {
            throw NetlinkError(.system, "socket(NETLINK_NETFILTER)", errno: currentErrno())
        }
        return opened
    }

    deinit { mnl_socket_close(socket) }

    private var fd: Int32 { mnl_socket_get_fd(socket) }

    /// The socket's netlink port id (the kernel's replies are addressed to it).
    var portID: UInt32 { UInt32(mnl_socket_get_portid(socket)) }

    /// Sequence numbers: per socket, never reused, starting from the clock (as libmnl users
    /// do), so not even a reply to an earlier socket's request of the same port can match.
    private lazy var sequences = SequenceCounter(seed: SequenceCounter.clockSeed())

    public func commit(_ batch: Batch) throws(NetlinkError) {
        // Room for the request and one ack per message (acks are queued inside sendmsg).
        growBuffer(SO_SNDBUFFORCE, SO_SNDBUF, to: batch.bytes.count + 4096)
        growBuffer(SO_RCVBUFFORCE, SO_RCVBUF, to: max(batch.messages.count * 1024, 256 * 1024))
        try AckReader.commit(batch, over: BatchIO(socket: self), sequences: &sequences)
    }

    /// Sends the request's messages (one dump request, optionally with `NFT_MSG_GETGEN` or
    /// other single-reply requests around it) in one `sendmsg`, with fresh sequence numbers,
    /// and returns every reply message, in request order (see `NetlinkConversation.exchange`:
    /// a dump flagged `NLM_F_DUMP_INTR`, or replies lost to `ENOBUFS`, repeat the whole
    /// exchange; replies are taken only from the kernel, addressed to this socket, with the
    /// request's sequence number).
    public func dump(_ request: [UInt8]) throws(NetlinkError) -> [[UInt8]] {
        let messages: [NetlinkMessage]
        do {
            messages = try NetlinkFrames.parse(request)
        } catch {
            throw NetlinkError(.malformedReply, "dump request")
        }
        guard !messages.isEmpty else { throw NetlinkError(.malformedReply, "dump request") }
        do {
            return try dumps.exchange(messages.map(\.bytes)).flatMap { $0.map(\.bytes) }
        } catch {
            switch error {
            case .system(let call): throw NetlinkError(.system, call.call, errno: call.errno)
            case .kernel(let errno): throw NetlinkError(.kernel, "dump", errno: errno)
            case .malformed: throw NetlinkError(.malformedReply, "dump reply")
            case .interrupted: throw NetlinkError(.system, "dump (\(error))", errno: error.errno)
            }
        }
    }

    private lazy var dumps = NetlinkConversation(
        io: DatagramIO(socket: self), firstSequence: SequenceCounter.clockSeed() &+ 0x8000_0000)

    /// The socket's datagram I/O for `NetlinkConversation`.
    private final class DatagramIO: NetlinkIO {
        unowned let socket: NetfilterSocket
        var buffer = [UInt8](repeating: 0, count: 65536)

        init(socket: NetfilterSocket) { self.socket = socket }

        var localPortID: UInt32? { socket.portID }

        func send(_ datagram: [UInt8]) throws(SystemCallError) {
            let sent = datagram.withUnsafeBytes { mnl_socket_sendto(socket.socket, $0.baseAddress, $0.count) }
            guard sent == datagram.count else {
                throw SystemCallError("sendto (dump request)", errno: sent < 0 ? currentErrno() : EMSGSIZE)
            }
        }

        func receive() throws(SystemCallError) -> [UInt8] {
            try NetlinkSocket.receiveFromKernel(socket.fd, into: &buffer)
        }
    }

    /// The socket as `AckReader` uses it.
    private final class BatchIO: BatchSocket {
        unowned let socket: NetfilterSocket
        var buffer = [UInt8](repeating: 0, count: 65536)

        init(socket: NetfilterSocket) { self.socket = socket }

        var portID: UInt32 { socket.portID }

        func send(_ bytes: [UInt8]) throws(NetlinkError) {
            let sent = bytes.withUnsafeBytes { mnl_socket_sendto(socket.socket, $0.baseAddress, $0.count) }
            guard sent == bytes.count else {
                throw NetlinkError(.system, "sendto (\(bytes.count)-byte batch)", errno: currentErrno())
            }
        }

        func receive(waitMilliseconds: Int32) throws(SystemCallError) -> [UInt8]? {
            while true {
                do {
                    return try NetlinkSocket.receiveFromKernel(
                        socket.fd, into: &buffer, flags: Int32(MSG_DONTWAIT))
                } catch  where error.errno == EAGAIN || error.errno == EWOULDBLOCK {
                    guard waitMilliseconds > 0 else { return nil }
                    var descriptor = pollfd(fd: socket.fd, events: Int16(POLLIN), revents: 0)
                    let ready = poll(&descriptor, 1, waitMilliseconds)
                    if ready < 0, currentErrno() == EINTR { continue }
                    if ready <= 0 { return nil }
                    return try NetlinkSocket.receiveFromKernel(
                        socket.fd, into: &buffer, flags: Int32(MSG_DONTWAIT))
                }
            }
        }
    }

    private func growBuffer(_ force: Int32, _ plain: Int32, to size: Int) {
        var current: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        let option = force == SO_SNDBUFFORCE ? SO_SNDBUF : SO_RCVBUF
        if getsockopt(fd, SOL_SOCKET, option, &current, &length) == 0, Int(current) >= size { return }
        var wanted = Int32(clamping: size)
        if setsockopt(fd, SOL_SOCKET, force, &wanted, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            _ = setsockopt(fd, SOL_SOCKET, plain, &wanted, socklen_t(MemoryLayout<Int32>.size))
        }
    }
}
