import CRtnetlink
import MeshModel
import Testing

@testable import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// A scripted kernel: answers each request the code sends with datagrams made by `answer`.
final class FakeKernel: NetlinkIO {
    var answer: (NetlinkMessage) -> [[UInt8]]
    private(set) var requests: [NetlinkMessage] = []
    private var pending: [[UInt8]] = []

    init(_ answer: @escaping (NetlinkMessage) -> [[UInt8]]) { self.answer = answer }

    func send(_ datagram: [UInt8]) throws(SystemCallError) {
        let messages = try! NetlinkFrames.parse(datagram)
        for message in messages {
            requests.append(message)
            pending += answer(message)
        }
    }

    func receive() throws(SystemCallError) -> [UInt8] {
        guard !pending.isEmpty else { throw SystemCallError("recv (fake: nothing queued)", errno: EAGAIN) }
        return pending.removeFirst()
    }

    /// Requests of one message type.
    func sent(_ type: some BinaryInteger) -> [NetlinkMessage] { requests.filter { $0.type == UInt16(type) } }
}

func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8)] }
func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * $0)) & 0xff) } }

/// One netlink message.
func frame(type: some BinaryInteger, flags: Int = 0, seq: UInt32, payload: [UInt8]) -> [UInt8] {
    le32(UInt32(16 + payload.count)) + le16(UInt16(type)) + le16(UInt16(flags)) + le32(seq) + le32(0) + payload
}

/// An NLMSG_ERROR acknowledgement with `errno` (0: success) for `request`.
func ack(_ request: NetlinkMessage, errno: Int32 = 0) -> [UInt8] {
    frame(
        type: NLMSG_ERROR, seq: request.sequence, payload: le32(UInt32(bitPattern: -errno)) + request.bytes.prefix(16))
}

func done(_ request: NetlinkMessage, flags: Int = 0) -> [UInt8] {
    frame(type: NLMSG_DONE, flags: flags, seq: request.sequence, payload: le32(0))
}

func attribute(_ type: some BinaryInteger, _ payload: [UInt8]) -> [UInt8] {
    var out = le16(UInt16(4 + payload.count)) + le16(UInt16(type)) + payload
    while out.count % 4 != 0 { out.append(0) }
    return out
}

/// An RTM_NEWRULE dump reply: `fwmark MARK lookup TABLE`, priority 32765.
func markRule(_ request: NetlinkMessage, family: UInt8, mark: UInt32, table: UInt32, flags: Int = Int(NLM_F_MULTI))
    -> [UInt8]
{
    let header: [UInt8] = [family, 0, 0, 0, UInt8(table), 0, 0, UInt8(FR_ACT_TO_TBL)] + le32(0)
    let attrs =
        attribute(FRA_PRIORITY, le32(32765)) + attribute(FRA_FWMARK, le32(mark))
        + attribute(FRA_TABLE, le32(table))
    return frame(type: RTM_NEWRULE, flags: flags, seq: request.sequence, payload: header + attrs)
}

/// An RTM_NEWROUTE dump reply: `local default dev lo table TABLE` (lo = index 1).
func localDefaultRoute(_ request: NetlinkMessage, family: UInt8, table: UInt32) -> [UInt8] {
    let header: [UInt8] =
        [family, 0, 0, 0, UInt8(table), UInt8(RTPROT_BOOT), UInt8(RT_SCOPE_HOST.rawValue), UInt8(RTN_LOCAL)]
        + le32(0)
    let attrs = attribute(RTA_TABLE.rawValue, le32(table)) + attribute(RTA_OIF.rawValue, le32(1))
    return frame(type: RTM_NEWROUTE, flags: Int(NLM_F_MULTI), seq: request.sequence, payload: header + attrs)
}

@Suite("Netlink frames and exchanges")
struct NetlinkFrameTests {
    @Test("well-formed datagrams split into messages")
    func parse() throws {
        let a = frame(type: 16, seq: 1, payload: [1, 2, 3, 4])
        let b = frame(type: 17, flags: 2, seq: 2, payload: [9, 9, 9, 9, 9, 9, 9, 9])
        let messages = try NetlinkFrames.parse(a + b)
        #expect(messages.map(\.type) == [16, 17])
        #expect(messages.map(\.sequence) == [1, 2])
        #expect(messages[1].payload == [9, 9, 9, 9, 9, 9, 9, 9])
    }

    @Test(
        "malformed datagrams are errors, not an early end",
        arguments: [
            [UInt8](repeating: 0, count: 8),  // shorter than a header
            le32(40) + [UInt8](repeating: 0, count: 12),  // longer than the datagram
            le32(8) + [UInt8](repeating: 0, count: 12),  // length below the header size
            frame(type: 16, seq: 1, payload: []) + [1, 2, 3],  // trailing bytes
        ])
    func malformed(datagram: [UInt8]) {
        #expect(throws: NetlinkFrameError.self) { try NetlinkFrames.parse(datagram) }
    }

    @Test("an error acknowledgement too short to hold its errno is malformed, not success")
    func shortAck() {
        let kernel = FakeKernel { request in
            [frame(type: NLMSG_ERROR, seq: request.sequence, payload: [0, 0])]
        }
        let conversation = NetlinkConversation(io: kernel)
        #expect {
            try conversation.acknowledged { seq in frame(type: RTM_NEWRULE, seq: seq, payload: []) }
        } throws: { error in
            if case .malformed = error as? NetlinkExchangeError { return true }
            return false
        }
    }

    @Test("a truncated reply to a request is an error")
    func truncatedAck() {
        let kernel = FakeKernel { request in [Array(ack(request).prefix(20))] }
        let conversation = NetlinkConversation(io: kernel)
        #expect(throws: NetlinkExchangeError.self) {
            try conversation.acknowledged { seq in frame(type: RTM_NEWRULE, seq: seq, payload: []) }
        }
    }

    @Test("an acknowledgement's errno is returned")
    func ackErrno() throws {
        let kernel = FakeKernel { request in [ack(request, errno: EEXIST)] }
        let rc = try NetlinkConversation(io: kernel).acknowledged { seq in
            frame(type: RTM_NEWRULE, seq: seq, payload: [])
        }
        #expect(rc == EEXIST)
    }

    @Test("a dump flagged NLM_F_DUMP_INTR is repeated, and the repeat's replies are used")
    func dumpInterruptedOnce() throws {
        var attempt = 0
        let kernel = FakeKernel { request in
            attempt += 1
            if attempt == 1 {
                return [
                    markRule(request, family: UInt8(AF_INET), mark: 1, table: 1),
                    done(request, flags: Int(NLM_F_DUMP_INTR)),
                ]
            }
            return [markRule(request, family: UInt8(AF_INET), mark: 2, table: 2), done(request)]
        }
        let replies = try NetlinkConversation(io: kernel).dump { seq in
            frame(
                type: RTM_GETRULE, flags: Int(NLM_F_REQUEST | NLM_F_DUMP), seq: seq,
                payload: [2] + [UInt8](repeating: 0, count: 11))
        }
        #expect(kernel.requests.count == 2)
        #expect(replies.count == 1)
        #expect(kernel.requests[0].sequence != kernel.requests[1].sequence)
        // The second dump's rule (mark 2), not the interrupted first one.
        #expect(replies.first.map { RouteNetlink.u32($0.payload, 12 + 8 + 8 + 4) } == 2)
    }

    @Test("a dump interrupted on every attempt fails instead of returning inconsistent replies")
    func dumpInterruptedAlways() {
        let kernel = FakeKernel { request in
            [
                markRule(request, family: UInt8(AF_INET), mark: 1, table: 1, flags: Int(NLM_F_MULTI | NLM_F_DUMP_INTR)),
                done(request),
            ]
        }
        let conversation = NetlinkConversation(io: kernel, dumpAttempts: 3)
        #expect {
            try conversation.dump { seq in frame(type: RTM_GETRULE, seq: seq, payload: []) }
        } throws: { error in
            (error as? NetlinkExchangeError) == .interrupted(attempts: 3)
        }
        #expect(kernel.requests.count == 3)
    }

    @Test("a dump answered with an error, or a DONE carrying one, throws the errno")
    func dumpError() {
        for reply in [
            { (r: NetlinkMessage) in ack(r, errno: EPERM) },
            { (r: NetlinkMessage) in
                frame(type: NLMSG_DONE, seq: r.sequence, payload: le32(UInt32(bitPattern: -EPERM)))
            },
        ] {
            let kernel = FakeKernel { request in [reply(request)] }
            #expect {
                try NetlinkConversation(io: kernel).dump { seq in frame(type: RTM_GETRULE, seq: seq, payload: []) }
            } throws: { error in
                (error as? NetlinkExchangeError) == .kernel(errno: EPERM)
            }
        }
    }
}

@Suite("Policy routing: kernel answers are never swallowed")
struct PolicyRoutingTests {
    static func routing(_ kernel: FakeKernel) -> PolicyRouting {
        PolicyRouting(
            log: { _ in }, open: { () throws(PolicyRouting.Failure) -> any NetlinkIO in kernel }, loopbackIndex: { 1 })
    }

    static let route = TproxyRoute(mark: Mark(1337), table: 133)

    @Test("install: a failed ip rule dump is an error (it must not read as 'no rule' and add a duplicate)")
    func ruleDumpFails() {
        let kernel = FakeKernel { request in
            request.type == UInt16(RTM_GETRULE) ? [ack(request, errno: EPERM)] : [ack(request)]
        }
        #expect {
            try Self.routing(kernel).install(route: Self.route, families: [.ipv4])
        } throws: { error in
            (error as? PolicyRouting.Failure)?.errno == EPERM
        }
        #expect(kernel.sent(RTM_NEWRULE).isEmpty)
    }

    @Test("install: a rule already present is not added again")
    func ruleAlreadyPresent() throws {
        let kernel = FakeKernel { request in
            if request.type == UInt16(RTM_GETRULE) {
                return [markRule(request, family: UInt8(AF_INET), mark: 1337, table: 133), done(request)]
            }
            return [ack(request)]
        }
        try Self.routing(kernel).install(route: Self.route, families: [.ipv4])
        #expect(kernel.sent(RTM_NEWRULE).isEmpty)
        #expect(kernel.sent(RTM_NEWROUTE).count == 1)
    }

    /// A kernel holding our v4 rule and its route; deletes answered with `deleteErrno`.
    static func installedKernel(deleteErrno: Int32) -> FakeKernel {
        FakeKernel { request in
            switch Int(request.type) {
            case RTM_GETRULE where request.payload.first == UInt8(AF_INET):
                return [markRule(request, family: UInt8(AF_INET), mark: 1337, table: 133), done(request)]
            case RTM_GETROUTE where request.payload.first == UInt8(AF_INET):
                return [localDefaultRoute(request, family: UInt8(AF_INET), table: 133), done(request)]
            case RTM_GETRULE, RTM_GETROUTE, RTM_GETADDR:
                return [done(request)]
            default:
                return [ack(request, errno: deleteErrno)]
            }
        }
    }

    @Test("removal: our rule and route are found from the live state")
    func removals() throws {
        let kernel = Self.installedKernel(deleteErrno: 0)
        let found = try Self.routing(kernel).removals(families: [.ipv4, .ipv6])
        #expect(
            found.map(\.command) == [
                "ip -4 rule del priority 32765 fwmark 0x539 lookup 133",
                "ip -4 route del local default dev lo table 133",
            ])
        #expect(kernel.sent(RTM_DELRULE).isEmpty, "planning removal deleted something")
        let removed = try Self.routing(kernel).remove(found)
        #expect(removed == ["ipv4 ip rule fwmark 0x539 lookup 133", "ipv4 route local default dev lo table 133"])
    }

    /// Disabling IPv6 flushes a namespace's IPv6 routes but not its rules: our IPv6 TPROXY rule
    /// lost the route that marks it ours; its IPv4 twin (same mark, same table) still says so.
    @Test("removal with IPv6 disabled: the IPv6 rule is ours when its IPv4 twin is")
    func ipv6DisabledTwin() throws {
        let kernel = FakeKernel { request in
            switch Int(request.type) {
            case RTM_GETRULE:
                let family = request.payload.first ?? 0
                return [markRule(request, family: family, mark: 1337, table: 133), done(request)]
            case RTM_GETROUTE where request.payload.first == UInt8(AF_INET):
                return [localDefaultRoute(request, family: UInt8(AF_INET), table: 133), done(request)]
            case RTM_GETROUTE, RTM_GETADDR:
                return [done(request)]
            default:
                return [ack(request)]
            }
        }
        let routing = Self.routing(kernel)
        #expect(
            try routing.removals(families: [.ipv4, .ipv6]).map(\.command).count == 2, "a lone IPv6 rule is not ours")
        let disabled = try routing.removals(families: [.ipv4, .ipv6], ipv6Disabled: true).map(\.command)
        #expect(disabled.contains("ip -6 rule del priority 32765 fwmark 0x539 lookup 133"))
        #expect(disabled.count == 3)
    }

    @Test("removal: a refused delete is an error with its errno")
    func deleteRefused() throws {
        let kernel = Self.installedKernel(deleteErrno: EPERM)
        let routing = Self.routing(kernel)
        let found = try routing.removals(families: [.ipv4])
        #expect {
            try routing.remove(found)
        } throws: { error in
            let failure = error as? PolicyRouting.Failure
            return failure?.errno == EPERM && failure?.permission == true
        }
    }

    @Test("removal: something already gone (a concurrent cleanup) is not an error")
    func deleteAlreadyGone() throws {
        let kernel = Self.installedKernel(deleteErrno: ENOENT)
        let routing = Self.routing(kernel)
        #expect(try routing.remove(try routing.removals(families: [.ipv4])) == [])
    }

    @Test("removal: a failed dump is an error, not 'nothing installed'")
    func removalDumpFails() {
        let kernel = FakeKernel { request in [ack(request, errno: EACCES)] }
        #expect(throws: PolicyRouting.Failure.self) { try Self.routing(kernel).removals(families: [.ipv4]) }
    }

    @Test("a malformed attribute in a dump reply is an error")
    func malformedAttribute() {
        let kernel = FakeKernel { request in
            guard request.type == UInt16(RTM_GETRULE) else { return [done(request)] }
            let header: [UInt8] = [UInt8(AF_INET), 0, 0, 0, 133, 0, 0, UInt8(FR_ACT_TO_TBL)] + le32(0)
            // An attribute claiming 40 bytes in an 8-byte tail.
            let bad = le16(40) + le16(UInt16(FRA_FWMARK)) + le32(1337)
            return [
                frame(type: RTM_NEWRULE, flags: Int(NLM_F_MULTI), seq: request.sequence, payload: header + bad),
                done(request),
            ]
        }
        #expect {
            try Self.routing(kernel).removals(families: [.ipv4])
        } throws: { error in
            (error as? PolicyRouting.Failure)?.errno == EBADMSG
        }
    }
}
