import CNftnl
import MeshModel
import MeshSystem
import Testing

@testable import MeshNetlink

#if canImport(Glibc)
    import Glibc
#endif

/// A scripted socket for `AckReader`: each send is answered by `answer` (given the sent
/// batch's sequence numbers: begin, then each message).
final class FakeBatchSocket: BatchSocket {
    enum Item {
        case datagram([UInt8])
        case error(Int32)
    }

    let portID: UInt32 = 4242
    var answer: ([UInt32]) -> [Item]
    private(set) var sent: [[UInt8]] = []
    private var pending: [Item] = []

    init(_ answer: @escaping ([UInt32]) -> [Item]) { self.answer = answer }

    func send(_ bytes: [UInt8]) throws(NetlinkError) {
        sent.append(bytes)
        pending += answer(Self.sequences(bytes))
    }

    func receive(waitMilliseconds: Int32) throws(SystemCallError) -> [UInt8]? {
        guard !pending.isEmpty else { return nil }
        switch pending.removeFirst() {
        case .datagram(let bytes): return bytes
        case .error(let code): throw SystemCallError("recv (fake)", errno: code)
        }
    }

    /// The sequence numbers of a datagram's messages, in order.
    static func sequences(_ bytes: [UInt8]) -> [UInt32] {
        var out: [UInt32] = []
        var offset = 0
        while offset + 16 <= bytes.count {
            let length = Int(bytes[offset]) | Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2]) << 16
            out.append((8..<12).reversed().reduce(0) { $0 << 8 | UInt32(bytes[offset + $1]) })
            offset += (length + 3) & ~3
        }
        return out
    }

    /// An NLMSG_ERROR acknowledgement.
    static func ack(seq: UInt32, port: UInt32 = 4242, errno: Int32 = 0) -> [UInt8] {
        var out: [UInt8] = []
        for value in [UInt32(36)] { withUnsafeBytes(of: value.littleEndian) { out += $0 } }
        withUnsafeBytes(of: UInt16(NLMSG_ERROR).littleEndian) { out += $0 }
        withUnsafeBytes(of: UInt16(0x100).littleEndian) { out += $0 }  // NLM_F_CAPPED
        withUnsafeBytes(of: seq.littleEndian) { out += $0 }
        withUnsafeBytes(of: port.littleEndian) { out += $0 }
        withUnsafeBytes(of: (-errno).littleEndian) { out += $0 }
        return out + [UInt8](repeating: 0, count: 16)
    }

    /// What nfnetlink answers a batch that asks for an ack on its last object message only:
    /// a report for the refused message (`failing`, an index among the object messages), then
    /// the last message's ack, in message order, all in one datagram.
    static func acks(_ sequences: [UInt32], failing: Int? = nil) -> Item {
        let objects = Array(sequences.dropFirst().dropLast())
        return .datagram(
            objects.enumerated().flatMap { index, seq in
                index == failing || index == objects.count - 1
                    ? ack(seq: seq, errno: index == failing ? ENOENT : 0) : []
            })
    }

    /// The nlmsg_flags of a datagram's messages, in order.
    static func flags(_ bytes: [UInt8]) -> [UInt16] {
        var out: [UInt16] = []
        var offset = 0
        while offset + 16 <= bytes.count {
            let length = Int(bytes[offset]) | Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2]) << 16
            out.append(UInt16(bytes[offset + 6]) | UInt16(bytes[offset + 7]) << 8)
            offset += (length + 3) & ~3
        }
        return out
    }
}

@Suite("Batch acknowledgements: only this send's, from the kernel to us")
struct AckTests {
    static func batch() throws -> Batch { try NftBatchBuilder.applyBatch(try Conformance.plan(Conformance.seedArgs)) }

    @Test("every send of a batch (a retry too) gets sequence numbers of its own, in its bytes and its acks")
    func freshSequences() throws {
        let template = try Self.batch()
        let socket = FakeBatchSocket { [FakeBatchSocket.acks($0)] }
        var counter = SequenceCounter(seed: 1000)
        try AckReader.commit(template, over: socket, sequences: &counter)
        try AckReader.commit(template, over: socket, sequences: &counter)
        let first = FakeBatchSocket.sequences(socket.sent[0])
        let second = FakeBatchSocket.sequences(socket.sent[1])
        #expect(first.count == template.messages.count + 2)
        #expect(Set(first).isDisjoint(with: second), "a resend reused sequence numbers")
        #expect(first == (0..<first.count).map { 1000 + UInt32($0) })
        // Everything but the sequence numbers and the ack flags is the builder's bytes.
        var masked = socket.sent[1]
        var offset = 0
        while offset + 16 <= masked.count {
            let length = Int(masked[offset]) | Int(masked[offset + 1]) << 8
            for i in 6..<12 { masked[offset + i] = template.bytes[offset + i] }
            offset += (length + 3) & ~3
        }
        #expect(masked == template.bytes)
    }

    @Test("one ack asked for: NLM_F_ACK on the last object message only (issue 20: ~30 recvfrom per install)")
    func lastOnlyAsks() throws {
        let template = try Self.batch()
        let socket = FakeBatchSocket { [FakeBatchSocket.acks($0)] }
        var counter = SequenceCounter(seed: 90)
        try AckReader.commit(template, over: socket, sequences: &counter)
        let flags = FakeBatchSocket.flags(socket.sent[0])
        let built = FakeBatchSocket.flags(template.bytes)
        #expect(flags.count == template.messages.count + 2)
        let asking = flags.indices.filter { flags[$0] & UInt16(NLM_F_ACK) != 0 }
        #expect(asking == [flags.count - 2], "messages asking for an ack: \(asking)")
        // Nothing else of the flags changed.
        #expect(zip(flags, built).allSatisfy { $0 | UInt16(NLM_F_ACK) == $1 | UInt16(NLM_F_ACK) })
    }

    @Test("a refused message in the middle is named, though it did not ask for an ack")
    func refusedMiddle() throws {
        let template = try Self.batch()
        #expect(template.messages.count > 3)
        let socket = FakeBatchSocket { [FakeBatchSocket.acks($0, failing: 2)] }
        var counter = SequenceCounter(seed: 7)
        #expect {
            try AckReader.commit(template, over: socket, sequences: &counter)
        } throws: { error in
            let failure = error as? NetlinkError
            return failure?.errno == ENOENT && failure?.subject == template.messages[2].subject
        }
    }

    @Test("an earlier send's error ack, and one addressed to another port, are skipped")
    func foreignAcks() throws {
        let socket = FakeBatchSocket { sequences in
            [
                // Late from an earlier attempt (its numbers are below this send's).
                .datagram(FakeBatchSocket.ack(seq: sequences[1] &- 100, errno: ENOENT)),
                // This send's number, but not to us.
                .datagram(FakeBatchSocket.ack(seq: sequences[1], port: 1, errno: EPERM)),
                FakeBatchSocket.acks(sequences),
            ]
        }
        var counter = SequenceCounter(seed: 500)
        try AckReader.commit(try Self.batch(), over: socket, sequences: &counter)
    }

    @Test("a refused message is named")
    func refused() throws {
        let template = try Self.batch()
        let socket = FakeBatchSocket { [FakeBatchSocket.acks($0, failing: 0)] }
        var counter = SequenceCounter(seed: 7)
        #expect {
            try AckReader.commit(template, over: socket, sequences: &counter)
        } throws: { error in
            let failure = error as? NetlinkError
            return failure?.errno == ENOENT && failure?.subject == template.messages[0].subject
        }
    }

    @Test("acks lost to ENOBUFS: a transient error (the batch is sent again), never success")
    func overrun() throws {
        let socket = FakeBatchSocket { [.error(ENOBUFS), FakeBatchSocket.acks($0)] }
        var counter = SequenceCounter(seed: 1)
        #expect {
            try AckReader.commit(try Self.batch(), over: socket, sequences: &counter)
        } throws: { error in
            let failure = error as? NetlinkError
            return failure?.errno == ENOBUFS && failure?.isTransient == true
        }
        // With an error among the acks read, that error is the answer (nothing was applied).
        let failing = FakeBatchSocket { [.error(ENOBUFS), FakeBatchSocket.acks($0, failing: 2)] }
        #expect {
            try AckReader.commit(try Self.batch(), over: failing, sequences: &counter)
        } throws: { error in
            (error as? NetlinkError)?.errno == ENOENT
        }
    }

    @Test("a missing acknowledgement is an error naming the message")
    func missing() throws {
        let template = try Self.batch()
        let socket = FakeBatchSocket { sequences in
            [.datagram(FakeBatchSocket.ack(seq: sequences[1]))]
        }
        var counter = SequenceCounter(seed: 1)
        #expect {
            try AckReader.commit(template, over: socket, sequences: &counter)
        } throws: { error in
            (error as? NetlinkError)?.code == .missingAcknowledgement
        }
    }
}
