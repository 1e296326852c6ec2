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
/// `NETLINK_EXT_ACK` (the kernel adds the offset of the offending attribute).
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
        guard mnl_socket_bind(opened, 0, pid_t(MNL_SOCKET_AUTOPID)) == 0 else {
            let code = currentErrno()
            mnl_socket_close(opened)
            throw NetlinkError(.system, "bind(NETLINK_NETFILTER)", errno: code)
        }
    }

    private static func open() throws(NetlinkError) -> OpaquePointer {
        guard let opened = mnl_socket_open(NETLINK_NETFILTER) else {
            throw NetlinkError(.system, "socket(NETLINK_NETFILTER)", errno: currentErrno())
        }
        return opened
    }

    deinit { mnl_socket_close(socket) }

    private var fd: Int32 { mnl_socket_get_fd(socket) }

    public func commit(_ batch: Batch) throws(NetlinkError) {
        // Room for the request and one ack per message (acks are queued inside sendmsg).
        growBuffer(SO_SNDBUFFORCE, SO_SNDBUF, to: batch.bytes.count + 4096)
        growBuffer(SO_RCVBUFFORCE, SO_RCVBUF, to: max(batch.messages.count * 1024, 256 * 1024))
        let sent = batch.bytes.withUnsafeBytes { mnl_socket_sendto(socket, $0.baseAddress, $0.count) }
        guard sent == batch.bytes.count else {
            throw NetlinkError(.system, "sendto (\(batch.bytes.count)-byte batch)", errno: currentErrno())
        }
        var pending = Set(batch.messages.map(\.sequence))
        var failure: NetlinkError?
        var buffer = [UInt8](repeating: 0, count: 65536)
        var waited = false
        while !pending.isEmpty {
            let received = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if received < 0 {
                let code = currentErrno()
                if code == EINTR { continue }
                if code == EAGAIN || code == EWOULDBLOCK {
                    // nfnetlink answers inside sendmsg; wait briefly once in case it did not.
                    if waited || failure != nil { break }
                    waited = true
                    var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                    _ = poll(&descriptor, 1, 1000)
                    continue
                }
                throw NetlinkError(.system, "recv (acknowledgements)", errno: code)
            }
            try parseAcks(buffer, count: received, batch: batch, pending: &pending, failure: &failure)
        }
        if let failure { throw failure }
        if !pending.isEmpty {
            let first = batch.messages.first { pending.contains($0.sequence) }
            throw NetlinkError(.missingAcknowledgement, first?.subject ?? "batch")
        }
    }

    private func parseAcks(
        _ buffer: [UInt8], count: Int, batch: Batch, pending: inout Set<UInt32>, failure: inout NetlinkError?
    ) throws(NetlinkError) {
        var offset = 0
        while offset + MemoryLayout<nlmsghdr>.size <= count {
            let header = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: nlmsghdr.self) }
            let length = Int(header.nlmsg_len)
            guard length >= MemoryLayout<nlmsghdr>.size, offset + length <= count else {
                throw NetlinkError(.malformedReply, "acknowledgement")
            }
            if header.nlmsg_type == UInt16(NLMSG_ERROR) {
                let error = buffer.withUnsafeBytes {
                    $0.loadUnaligned(fromByteOffset: offset + MemoryLayout<nlmsghdr>.size, as: Int32.self)
                }
                let sequence = header.nlmsg_seq
                pending.remove(sequence)
                if error != 0, failure == nil {
                    let subject = batch.subject(ofSequence: sequence) ?? "message \(sequence)"
                    failure = NetlinkError(
                        .kernel, subject, errno: -error,
                        attributeOffset: extAckOffset(buffer, offset: offset, length: length, flags: header.nlmsg_flags)
                    )
                }
                if sequence == batch.beginSequence, error != 0 { pending.removeAll() }
            }
            offset += (length + 3) & ~3
        }
    }

    /// `NLMSGERR_ATTR_OFFS` from an extended ack (`NLM_F_ACK_TLVS`): with `NETLINK_CAP_ACK`
    /// the TLVs follow `nlmsgerr` (error i32 + the 16-byte request header).
    private func extAckOffset(_ buffer: [UInt8], offset: Int, length: Int, flags: UInt16) -> UInt32? {
        guard flags & UInt16(NLM_F_ACK_TLVS) != 0 else { return nil }
        var position = offset + MemoryLayout<nlmsghdr>.size + 4 + MemoryLayout<nlmsghdr>.size
        let end = offset + length
        while position + 4 <= end {
            let (attributeLength, type) = buffer.withUnsafeBytes {
                (
                    $0.loadUnaligned(fromByteOffset: position, as: UInt16.self),
                    $0.loadUnaligned(fromByteOffset: position + 2, as: UInt16.self)
                )
            }
            guard attributeLength >= 4 else { return nil }
            if type & 0x3fff == UInt16(NLMSGERR_ATTR_OFFS.rawValue), attributeLength >= 8, position + 8 <= end {
                return buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: position + 4, as: UInt32.self) }
            }
            position += (Int(attributeLength) + 3) & ~3
        }
        return nil
    }

    /// Sends the dump request and collects the replies; a dump the kernel flags
    /// `NLM_F_DUMP_INTR` (the ruleset changed while it ran) is repeated, with a new sequence
    /// number (see `NetlinkConversation.dump`).
    public func dump(_ request: [UInt8]) throws(NetlinkError) -> [[UInt8]] {
        guard request.count >= NetlinkFrames.headerSize else { throw NetlinkError(.malformedReply, "dump request") }
        do {
            return try dumps.dump { seq in
                var patched = request
                withUnsafeBytes(of: seq.littleEndian) { patched.replaceSubrange(8..<12, with: $0) }
                return patched
            }.map(\.bytes)
        } catch {
            switch error {
            case .system(let call): throw NetlinkError(.system, call.call, errno: call.errno)
            case .kernel(let errno): throw NetlinkError(.kernel, "dump", errno: errno)
            case .malformed: throw NetlinkError(.malformedReply, "dump reply")
            case .interrupted: throw NetlinkError(.system, "dump (\(error))", errno: error.errno)
            }
        }
    }

    private lazy var dumps = NetlinkConversation(io: DatagramIO(socket: self), firstSequence: 0x4d53_8000)

    /// The socket's datagram I/O for `NetlinkConversation`.
    private final class DatagramIO: NetlinkIO {
        unowned let socket: NetfilterSocket
        var buffer = [UInt8](repeating: 0, count: 65536)

        init(socket: NetfilterSocket) { self.socket = socket }

        func send(_ datagram: [UInt8]) throws(SystemCallError) {
            let sent = datagram.withUnsafeBytes { mnl_socket_sendto(socket.socket, $0.baseAddress, $0.count) }
            guard sent == datagram.count else {
                throw SystemCallError("sendto (dump request)", errno: sent < 0 ? currentErrno() : EMSGSIZE)
            }
        }

        func receive() throws(SystemCallError) -> [UInt8] {
            let fd = mnl_socket_get_fd(socket.socket)
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_TRUNC)) }
                if n < 0 {
                    let code = currentErrno()
                    if code == EINTR { continue }
                    throw SystemCallError("recv (dump)", errno: code)
                }
                guard n <= buffer.count else {
                    throw SystemCallError("recv (dump): \(n)-byte datagram", errno: EMSGSIZE)
                }
                return Array(buffer[0..<n])
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
