import CNftnl
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// Sequence numbers of one socket: never reused while it lives, so a late reply to an
/// earlier send (a retried batch, an abandoned dump) cannot pass for a reply to this one.
struct SequenceCounter {
    private var next: UInt32

    init(seed: UInt32) { next = seed }

    /// Reserves `count` consecutive numbers; returns the first.
    mutating func take(_ count: Int) -> UInt32 {
        defer { next &+= UInt32(truncatingIfNeeded: count) }
        return next
    }

    /// A start from the clock (milliseconds), as libmnl's users seed theirs.
    static func clockSeed() -> UInt32 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return UInt32(truncatingIfNeeded: now.tv_sec) &* 1000 &+ UInt32(truncatingIfNeeded: now.tv_nsec / 1_000_000)
    }
}

/// What committing a batch needs of a socket: the seam that lets tests script the kernel.
protocol BatchSocket: AnyObject {
    /// The socket's netlink port id: the kernel addresses its acknowledgements to it.
    var portID: UInt32 { get }
    func send(_ bytes: [UInt8]) throws(NetlinkError)
    /// One datagram from the kernel (never one another process sent), or nil when none came
    /// within `waitMilliseconds`. `ENOBUFS` (acknowledgements were lost) is thrown.
    func receive(waitMilliseconds: Int32) throws(SystemCallError) -> [UInt8]?
}

extension Batch {
    /// The same batch with sequence numbers `firstSequence`, `firstSequence + 1`, … in place
    /// of its own (which are fixed, so that a batch's bytes are deterministic): every send
    /// gets numbers of its own.
    ///
    /// With `acknowledgeLastOnly`, `NLM_F_ACK` stays on the last object message only. The
    /// kernel reports every refused message whether it asked for an ack or not, collects its
    /// reports in message order and sends them after the whole batch ran (a failed commit's
    /// report, on the begin message, first): the last message's ack therefore comes after
    /// every error, and one ack instead of one per message is one `recvfrom` instead of ~30
    /// on an install (issue 20).
    func resequenced(firstSequence: UInt32, acknowledgeLastOnly: Bool = false) -> Batch {
        var bytes = self.bytes
        let shift = firstSequence &- beginSequence
        let lastObject = messages.last?.sequence
        var offset = 0
        while offset + NetlinkFrames.headerSize <= bytes.count {
            let length = bytes.withUnsafeBytes { Int($0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
            guard length >= NetlinkFrames.headerSize else { break }
            let old = UInt32(
                littleEndian: bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self) })
            withUnsafeBytes(of: (old &+ shift).littleEndian) {
                bytes.replaceSubrange((offset + 8)..<(offset + 12), with: $0)
            }
            if acknowledgeLastOnly, old != lastObject {
                // nlmsg_flags, little-endian u16 at 6: NLM_F_ACK (4) is in the low byte.
                bytes[offset + 6] &= ~UInt8(NLM_F_ACK)
            }
            offset += (length + 3) & ~3
        }
        let messages = self.messages.map { Message(sequence: $0.sequence &+ shift, label: $0.label) }
        return Batch(bytes: bytes, messages: messages, beginSequence: firstSequence)
    }
}

/// Sends a batch and reads its acknowledgements.
enum AckReader {
    /// Sends `template` with fresh sequence numbers and reads an acknowledgement for each of
    /// its messages. Only `NLMSG_ERROR` replies with one of this send's sequence numbers,
    /// addressed to our port (or 0), count; anything else on the socket is skipped.
    ///
    /// - Throws: `.kernel` naming the first refused message (nothing was applied);
    ///   `.system` with `ENOBUFS` when acknowledgements were lost to a receive-buffer overrun
    ///   and none of those read was an error (the outcome is unknown: a transient error, the
    ///   caller resends the whole, idempotent, batch); `.missingAcknowledgement`.
    static func commit(_ template: Batch, over socket: any BatchSocket, sequences: inout SequenceCounter)
        throws(NetlinkError)
    {
        let batch = template.resequenced(
            firstSequence: sequences.take(template.messages.count + 2), acknowledgeLastOnly: true)
        try socket.send(batch.bytes)
        // Only the last object message asks for an ack; refused ones are reported anyway,
        // before it (see `resequenced`).
        var awaiting = batch.messages.last?.sequence
        let portID = socket.portID
        var failure: NetlinkError?
        var overrun = false
        while awaiting != nil {
            let datagram: [UInt8]?
            do {
                // nfnetlink answers inside sendmsg; wait (once, briefly) only if it did not.
                datagram = try socket.receive(waitMilliseconds: failure != nil || overrun ? 0 : 1000)
            } catch {
                if error.errno == ENOBUFS {
                    overrun = true
                    continue
                }
                throw NetlinkError(.system, "recv (acknowledgements)", errno: error.errno)
            }
            guard let datagram else { break }
            try parse(datagram, batch: batch, portID: portID, awaiting: &awaiting, failure: &failure)
        }
        if let failure { throw failure }
        if overrun {
            throw NetlinkError(
                .system, "recv (acknowledgements): some were lost to a receive buffer overrun", errno: ENOBUFS)
        }
        if awaiting != nil {
            throw NetlinkError(.missingAcknowledgement, batch.messages.last?.subject ?? "batch")
        }
    }

    /// Reads the acks in `buffer`: an error names its message (the first one is kept); the ack
    /// of `awaiting`, or a failed commit, ends the wait (`awaiting` becomes nil).
    static func parse(
        _ buffer: [UInt8], batch: Batch, portID: UInt32, awaiting: inout UInt32?, failure: inout NetlinkError?
    ) throws(NetlinkError) {
        var offset = 0
        let count = buffer.count
        while offset + MemoryLayout<nlmsghdr>.size <= count {
            let header = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: nlmsghdr.self) }
            let length = Int(header.nlmsg_len)
            guard length >= MemoryLayout<nlmsghdr>.size, offset + length <= count else {
                throw NetlinkError(.malformedReply, "acknowledgement")
            }
            defer { offset += (length + 3) & ~3 }
            let sequence = header.nlmsg_seq
            // One of this send's numbers: begin, the objects, end (contiguous).
            let ours = sequence &- batch.beginSequence <= UInt32(truncatingIfNeeded: batch.messages.count + 1)
            guard header.nlmsg_type == UInt16(NLMSG_ERROR), ours,
                header.nlmsg_pid == 0 || header.nlmsg_pid == portID
            else { continue }
            guard length >= MemoryLayout<nlmsghdr>.size + 4 else {
                throw NetlinkError(.malformedReply, "acknowledgement")
            }
            let error = buffer.withUnsafeBytes {
                $0.loadUnaligned(fromByteOffset: offset + MemoryLayout<nlmsghdr>.size, as: Int32.self)
            }
            if sequence == awaiting { awaiting = nil }
            if error != 0, failure == nil {
                let subject = batch.subject(ofSequence: sequence) ?? "message \(sequence)"
                failure = NetlinkError(
                    .kernel, subject, errno: -error,
                    attributeOffset: extAckOffset(buffer, offset: offset, length: length, flags: header.nlmsg_flags))
            }
            // The commit itself failed: the kernel says so on the begin message.
            if sequence == batch.beginSequence, error != 0 { awaiting = nil }
        }
    }

    /// `NLMSGERR_ATTR_OFFS` from an extended ack (`NLM_F_ACK_TLVS`): with `NETLINK_CAP_ACK`
    /// the TLVs follow `nlmsgerr` (error i32 + the 16-byte request header).
    static func extAckOffset(_ buffer: [UInt8], offset: Int, length: Int, flags: UInt16) -> UInt32? {
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
}
