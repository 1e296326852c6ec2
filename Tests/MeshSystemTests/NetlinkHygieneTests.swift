import CRtnetlink
import MeshModel
import Testing

@testable import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// A scripted kernel that knows its port id and can lose replies: each send is answered by
/// `answer` with datagrams, or errors thrown by `receive` in their place.
final class PortKernel: NetlinkIO {
    enum Item {
        case datagram([UInt8])
        case error(Int32)
    }

    var answer: ([NetlinkMessage]) -> [Item]
    private(set) var sends: [[NetlinkMessage]] = []
    private var pending: [Item] = []
    let localPortID: UInt32?

    init(port: UInt32 = 77, _ answer: @escaping ([NetlinkMessage]) -> [Item]) {
        localPortID = port
        self.answer = answer
    }

    func send(_ datagram: [UInt8]) throws(SystemCallError) {
        let messages = try! NetlinkFrames.parse(datagram)
        sends.append(messages)
        pending += answer(messages)
    }

    func receive() throws(SystemCallError) -> [UInt8] {
        guard !pending.isEmpty else { throw SystemCallError("recv (fake: nothing queued)", errno: EAGAIN) }
        switch pending.removeFirst() {
        case .datagram(let bytes): return bytes
        case .error(let code): throw SystemCallError("recv (fake)", errno: code)
        }
    }
}

/// A message from the kernel to `port` (padded to 4 bytes, so messages concatenate).
func reply(type: some BinaryInteger, flags: Int = 0, seq: UInt32, port: UInt32, payload: [UInt8]) -> [UInt8] {
    var out = le32(UInt32(16 + payload.count)) + le16(UInt16(type)) + le16(UInt16(flags)) + le32(seq) + le32(port)
    out += payload
    while out.count % 4 != 0 { out.append(0) }
    return out
}

func request(type: some BinaryInteger, flags: Int32, seq: UInt32 = 0) -> [UInt8] {
    frame(type: type, flags: Int(flags), seq: seq, payload: [0, 0, 0, 0])
}

@Suite("Netlink hygiene: fresh sequence numbers, replies only from the kernel to us")
struct NetlinkHygieneTests {
    static let dump = request(type: 0xa04, flags: NLM_F_REQUEST | NLM_F_DUMP)
    static let get = request(type: 0xa10, flags: NLM_F_REQUEST)

    @Test("an exchange sends every request in one datagram and sorts the replies by request")
    func oneDatagram() throws {
        let kernel = PortKernel { messages in
            [
                .datagram(reply(type: 0xa0f, seq: messages[0].sequence, port: 77, payload: [1])),
                .datagram(
                    reply(type: 0xa03, flags: Int(NLM_F_MULTI), seq: messages[1].sequence, port: 77, payload: [2])
                        + reply(type: 0xa0f, seq: messages[2].sequence, port: 77, payload: [3])),
                .datagram(reply(type: NLMSG_DONE, seq: messages[1].sequence, port: 77, payload: le32(0))),
            ]
        }
        let replies = try NetlinkConversation(io: kernel).exchange([Self.get, Self.dump, Self.get])
        #expect(kernel.sends.count == 1 && kernel.sends[0].count == 3)
        #expect(Set(kernel.sends[0].map(\.sequence)).count == 3, "sequence numbers repeat within a datagram")
        #expect(replies.map { $0.map(\.payload) } == [[[1]], [[2]], [[3]]])
    }

    @Test("a reply with our sequence number but addressed to another port is skipped")
    func otherPort() throws {
        let kernel = PortKernel { messages in
            let seq = messages[0].sequence
            return [
                .datagram(reply(type: NLMSG_ERROR, seq: seq, port: 99, payload: le32(UInt32(bitPattern: -EPERM)))),
                .datagram(reply(type: 0xa03, flags: Int(NLM_F_MULTI), seq: seq, port: 99, payload: [9])),
                .datagram(reply(type: 0xa03, flags: Int(NLM_F_MULTI), seq: seq, port: 77, payload: [1])),
                .datagram(reply(type: NLMSG_DONE, seq: seq, port: 0, payload: le32(0))),
            ]
        }
        let replies = try NetlinkConversation(io: kernel).exchange([Self.dump])
        #expect(replies.map { $0.map(\.payload) } == [[[1]]])
    }

    @Test("a late reply to an earlier request (its sequence number) is skipped")
    func staleSequence() throws {
        var first = true
        let kernel = PortKernel { messages in
            defer { first = false }
            let seq = messages[0].sequence
            // The first exchange's request is answered late: during the second.
            if first { return [] }
            return [
                .datagram(
                    reply(type: NLMSG_ERROR, seq: seq &- 1, port: 77, payload: le32(UInt32(bitPattern: -ENOENT)))),
                .datagram(reply(type: 0xa0f, seq: seq, port: 77, payload: [5])),
            ]
        }
        let conversation = NetlinkConversation(io: kernel)
        #expect(throws: NetlinkExchangeError.self) { try conversation.exchange([Self.get]) }
        #expect(try conversation.exchange([Self.get]).map { $0.map(\.payload) } == [[[5]]])
        #expect(kernel.sends[0][0].sequence != kernel.sends[1][0].sequence)
    }

    @Test("an exchange whose dump is interrupted is repeated whole, with new numbers")
    func interrupted() throws {
        var attempt = 0
        let kernel = PortKernel { messages in
            attempt += 1
            let flags = attempt == 1 ? Int(NLM_F_MULTI | NLM_F_DUMP_INTR) : Int(NLM_F_MULTI)
            return [
                .datagram(reply(type: 0xa0f, seq: messages[0].sequence, port: 77, payload: [UInt8(attempt)])),
                .datagram(
                    reply(type: 0xa03, flags: flags, seq: messages[1].sequence, port: 77, payload: [UInt8(attempt)])),
                .datagram(reply(type: NLMSG_DONE, seq: messages[1].sequence, port: 77, payload: le32(0))),
            ]
        }
        let replies = try NetlinkConversation(io: kernel).exchange([Self.get, Self.dump])
        #expect(kernel.sends.count == 2)
        #expect(Set(kernel.sends.flatMap { $0.map(\.sequence) }).count == 4)
        #expect(replies.map { $0.map(\.payload) } == [[[2]], [[2]]])
    }

    @Test("replies lost to ENOBUFS: the dump is read to its end, then the exchange repeated")
    func overrun() throws {
        var attempt = 0
        let kernel = PortKernel { messages in
            attempt += 1
            var items: [PortKernel.Item] = []
            if attempt == 1 {
                items.append(.error(ENOBUFS))
            }  // the GETGEN reply was dropped
            else {
                items.append(.datagram(reply(type: 0xa0f, seq: messages[0].sequence, port: 77, payload: [7])))
            }
            items.append(
                .datagram(
                    reply(type: 0xa03, flags: Int(NLM_F_MULTI), seq: messages[1].sequence, port: 77, payload: [8])))
            items.append(.datagram(reply(type: NLMSG_DONE, seq: messages[1].sequence, port: 77, payload: le32(0))))
            return items
        }
        let replies = try NetlinkConversation(io: kernel).exchange([Self.get, Self.dump])
        #expect(kernel.sends.count == 2)
        #expect(replies.map { $0.map(\.payload) } == [[[7]], [[8]]])

        let always = PortKernel { messages in
            [
                .error(ENOBUFS),
                .datagram(reply(type: NLMSG_DONE, seq: messages[1].sequence, port: 77, payload: le32(0))),
            ]
        }
        #expect {
            try NetlinkConversation(io: always, dumpAttempts: 3).exchange([Self.get, Self.dump])
        } throws: { error in
            (error as? NetlinkExchangeError)?.errno == ENOBUFS
        }
        #expect(always.sends.count == 3)
    }

    @Test("a kernel error in an exchange is thrown after the dump has ended (the socket can dump again)")
    func errorAfterDump() {
        let kernel = PortKernel { messages in
            [
                .datagram(
                    reply(
                        type: NLMSG_ERROR, seq: messages[0].sequence, port: 77,
                        payload: le32(UInt32(bitPattern: -ENOENT)))),
                .datagram(
                    reply(type: 0xa03, flags: Int(NLM_F_MULTI), seq: messages[1].sequence, port: 77, payload: [1])),
                .datagram(reply(type: NLMSG_DONE, seq: messages[1].sequence, port: 77, payload: le32(0))),
            ]
        }
        #expect {
            try NetlinkConversation(io: kernel).exchange([Self.get, Self.dump])
        } throws: { error in
            (error as? NetlinkExchangeError) == .kernel(errno: ENOENT)
        }
        // Everything was read: nothing of that exchange is left to confuse the next one.
        #expect(throws: SystemCallError.self) { try kernel.receive() }
    }

    @Test("refused for lack of CAP_NET_ADMIN: nfnetlink answers the first message only; that is the answer")
    func notPermitted() {
        let kernel = PortKernel { messages in
            [
                .datagram(
                    reply(
                        type: NLMSG_ERROR, seq: messages[0].sequence, port: 77,
                        payload: le32(UInt32(bitPattern: -EPERM))))
            ]
        }
        #expect {
            try NetlinkConversation(io: kernel).exchange([Self.get, Self.dump, Self.get])
        } throws: { error in
            (error as? NetlinkExchangeError) == .kernel(errno: EPERM)
        }
    }
}
