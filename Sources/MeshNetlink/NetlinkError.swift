import CNftnl
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// A failure of the netlink backend: what was being done, to which object, and the errno.
///
/// `subject` names the object as nft text (`add rule inet istio-proxy-nat istio-output …`)
/// or the system call (`sendto`, `setns /var/run/netns/pod`), so the description reads
/// like `add rule inet istio-proxy-nat istio-output … : No such file or directory (ENOENT)`.
public struct NetlinkError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The class of failure.
    public enum Code: Sendable, Hashable {
        /// libnftnl could not allocate an object.
        case allocation
        /// A system call failed (socket, setsockopt, sendto, recv, setns, open).
        case system
        /// The kernel refused a message of the batch (the whole transaction was aborted).
        case kernel
        /// A message would exceed the 64 KiB netlink attribute limit.
        case messageTooLarge
        /// The kernel did not acknowledge every message of the batch.
        case missingAcknowledgement
        /// A reply from the kernel could not be parsed.
        case malformedReply
        /// The ruleset kept changing while it was read (another writer): no consistent
        /// snapshot could be had.
        case concurrentChange
    }

    public var code: Code
    /// The operation or object, as nft text or a system call name.
    public var subject: String
    /// The errno, when there is one (positive, e.g. `ENOENT` = 2).
    public var errno: Int32?
    /// For kernel errors with `NETLINK_EXT_ACK`: the byte offset of the attribute the kernel
    /// objected to, within the failing message.
    public var attributeOffset: UInt32?

    public init(_ code: Code, _ subject: String, errno: Int32? = nil, attributeOffset: UInt32? = nil) {
        self.code = code
        self.subject = subject
        self.errno = errno
        self.attributeOffset = attributeOffset
    }

    public var description: String {
        var text = subject
        if let errno {
            text += ": \(errnoText(errno))"
        } else {
            switch code {
            case .allocation: text += ": out of memory"
            case .messageTooLarge: text += ": message exceeds 64 KiB"
            case .missingAcknowledgement: text += ": the kernel did not acknowledge every message"
            case .malformedReply: text += ": malformed reply"
            case .system, .kernel, .concurrentChange: break
            }
        }
        if let attributeOffset { text += " [attribute at offset \(attributeOffset)]" }
        return text
    }

    /// Whether retrying the (idempotent, atomic-replace) batch may succeed: the kernel
    /// reports the ruleset changed under us or a transient condition (ERESTART is
    /// kernel-internal, but nfnetlink can leak it on a replayed batch).
    public var isTransient: Bool {
        guard let errno else { return false }
        return [EBUSY, EAGAIN, EINTR, ERESTART, ENOBUFS].contains(errno)
    }
}

/// The current thread's errno.
func currentErrno() -> Int32 { errno }
