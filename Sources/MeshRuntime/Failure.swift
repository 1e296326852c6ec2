import MeshCNI
import MeshConfig
import MeshIptables
import MeshNetlink
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// sysexits-style exit codes (plus 126 for a failed validation probe, 3 for verify drift
/// and 124, as timeout(1) exits, for a child killed at its deadline).
public enum ExitStatus: Int32, Sendable {
    case ok = 0
    case failure = 1
    case drift = 3
    case usage = 64
    case unavailable = 69
    case temporary = 75
    case permission = 77
    case childTimeout = 124
    case validation = 126
}

/// A failure with its exit status and a one-line message.
public struct CommandFailure: Error, Sendable, Hashable, CustomStringConvertible {
    public var status: ExitStatus
    public var message: String

    public init(status: ExitStatus, message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { message }
}

// Each layer's typed errors, mapped to an exit status.

public func failure(_ error: ConfigError) -> CommandFailure {
    CommandFailure(status: .usage, message: error.description)
}

public func failure(_ error: ArgumentError) -> CommandFailure { CommandFailure(status: .usage, message: error.message) }

public func failure(_ error: IptablesError) -> CommandFailure {
    let status: ExitStatus =
        switch error.kind {
        case .unavailable: .unavailable
        case .permission: .permission
        case .lockBusy: .temporary
        case .timedOut: .childTimeout
        case .failed: .failure
        }
    return CommandFailure(status: status, message: error.message)
}

public func failure(_ error: NetlinkError) -> CommandFailure {
    let status: ExitStatus
    switch error.errno {
    case EPERM?, EACCES?:
        return CommandFailure(status: .permission, message: "\(error) (CAP_NET_ADMIN is needed)")
    case EPROTONOSUPPORT?, EAFNOSUPPORT?:
        return CommandFailure(status: .unavailable, message: "\(error) (kernel support missing: nf_tables)")
    case EOPNOTSUPP?:
        return CommandFailure(
            status: .unavailable,
            message:
                "\(error) (kernel support missing: nf_tables expression modules such as nft_redir, nft_tproxy, nft_ct)")
    case EBUSY?, EAGAIN?, EINTR?: status = .temporary
    default:
        // ENOENT on an expression means its module is missing; on an object it is a plan bug.
        status =
            error.code == .kernel && error.errno == ENOENT && !error.subject.contains("jump") ? .unavailable : .failure
    }
    return CommandFailure(status: status, message: error.description)
}

public func failure(_ error: PolicyRouting.Failure) -> CommandFailure {
    CommandFailure(status: error.permission ? .permission : .failure, message: error.message)
}

public func failure(_ error: NamespaceError) -> CommandFailure {
    CommandFailure(status: error.errno == EPERM ? .permission : .failure, message: error.description)
}

public func failure(_ error: NamespaceLock.Failure) -> CommandFailure {
    switch error {
    case .busy: CommandFailure(status: .temporary, message: error.description)
    case .system: CommandFailure(status: .failure, message: error.description)
    }
}

extension ExitStatus {
    /// The one table from an error's class to what the CNI runtime is told (the CLI exits
    /// with the status itself).
    public var cniCode: CNIErrorCode {
        switch self {
        case .usage: .invalidConfig
        case .permission: .permission
        case .unavailable: .unavailable
        case .temporary, .childTimeout: .tryAgainLater
        case .drift: .drift
        case .ok, .failure, .validation: .installFailed
        }
    }
}
