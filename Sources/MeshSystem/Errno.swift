#if canImport(Glibc)
    import Glibc
#endif

/// `strerror` text plus the symbolic name: `No such file or directory (ENOENT)`.
public func errnoText(_ code: Int32) -> String {
    let text = strerror(code).map { String(cString: $0) } ?? "error \(code)"
    return "\(text) (\(errnoName(code)))"
}

/// The symbolic name of the errnos meshinit's system calls, netlink and nf_tables report
/// (`errno N` for others).
public func errnoName(_ code: Int32) -> String {
    errnoNames[code] ?? "errno \(code)"
}

private let errnoNames: [Int32: String] = [
    EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EBADF: "EBADF", EAGAIN: "EAGAIN",
    ENOMEM: "ENOMEM", EACCES: "EACCES", EBUSY: "EBUSY", EEXIST: "EEXIST", ENODEV: "ENODEV", ENOTDIR: "ENOTDIR",
    EISDIR: "EISDIR", EINVAL: "EINVAL", ENFILE: "ENFILE", EMFILE: "EMFILE", ENOSPC: "ENOSPC", ERANGE: "ERANGE",
    E2BIG: "E2BIG", ELOOP: "ELOOP", EMSGSIZE: "EMSGSIZE", EPROTONOSUPPORT: "EPROTONOSUPPORT",
    EOPNOTSUPP: "EOPNOTSUPP", EAFNOSUPPORT: "EAFNOSUPPORT", EADDRNOTAVAIL: "EADDRNOTAVAIL", ENOBUFS: "ENOBUFS",
    ETIMEDOUT: "ETIMEDOUT", EBADMSG: "EBADMSG", ERESTART: "ERESTART", EFBIG: "EFBIG",
]
