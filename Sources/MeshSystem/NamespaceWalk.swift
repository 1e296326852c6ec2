/// How visiting one namespace of a node-wide walk ended.
public enum NamespaceVisit<T> {
    /// `body` ran inside it and returned this.
    case visited(T)
    /// Its process exited before it was reached.
    case vanished
    /// It was no longer that namespace when reached (its process exited and the PID was reused).
    case changed
    /// `body` (or entering) failed.
    case failed(any Error)
}

/// The node-wide walk of `clean --all-namespaces` and `stats --all-namespaces`: every network
/// namespace on the node (`listNetworkNamespaces`) except the caller's own, each entered
/// through the file opened and checked then (`withListedNetworkNamespace`: a PID reused
/// since the listing is never entered, even one of the caller's own namespace), `body` run
/// inside it, and `visited` told how it went — a process that exited during the walk is a
/// `.vanished` or `.changed` visit, not an error.
public func walkNetworkNamespaces<T>(
    _ body: (NetworkNamespaceFile) throws -> T, visited: (NetworkNamespaceFile, NamespaceVisit<T>) -> Void
) {
    let home = currentNetworkNamespaceInode()
    for ns in listNetworkNamespaces() where ns.inode != home {
        do {
            visited(ns, .visited(try withListedNetworkNamespace(ns, refusing: home) { try body(ns) }))
        } catch let error as NamespaceError where error.vanished {
            visited(ns, .vanished)
        } catch let error as NamespaceError where error.changed {
            visited(ns, .changed)
        } catch {
            visited(ns, .failed(error))
        }
    }
}
