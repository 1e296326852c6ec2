import MeshConfig
import MeshModel
import MeshSystem

/// `clean --all-namespaces`: every network namespace on the node except our own, each
/// cleaned of both backends' rules and our routes, with a report per namespace. A namespace
/// where something listens on the proxy's outbound port is a live pod: skipped unless
/// `force`. A namespace whose process exited during the walk is skipped, not an error.
///
/// `print` gets the dry run's report (what would be removed, per namespace).
public func cleanAllNamespaces(
    _ settings: Settings, boundary: SystemBoundary, force: Bool, print: (String) -> Void
) throws(CommandFailure) {
    let log = Logger(level: settings.run.logLevel, json: settings.run.logAsJSON)
    let dryRun = settings.run.dryRun
    let proxyPort = settings.capture.proxyPort
    var failures = 0
    var cleaned = 0
    var skipped = 0
    // The walk enters each namespace through the file opened and checked at listing, not by
    // its path: the PID may have been reused since, even by a process of our own namespace.
    walkNetworkNamespaces { _ throws -> NamespaceCleanup in
        if !force, tcpListening(on: proxyPort.value) == true {
            return .live
        }
        var context = Context(settings, boundary: boundary)
        context.log = Logger(level: .none, json: false)
        if dryRun { return .planned(try planCleanup(context)) }
        return .removed(try cleanEverything(context))
    } visited: { ns, visit in
        let label = "\(ns.path) (netns \(ns.inode))"
        guard let outcome = logVisit(visit, label, log, failures: &failures) else { return }
        switch outcome {
        case .live:
            skipped += 1
            log.warn(
                "\(label): skipped: something listens on port \(proxyPort) (a running proxy?); --force cleans it anyway"
            )
        case .planned(let plan):
            if !plan.isEmpty { cleaned += 1 }
            print("# \(label)\n" + plan.text)
        case .removed(let removed) where removed.isEmpty:
            log.info("\(label): nothing of ours")
        case .removed(let removed):
            cleaned += 1
            log.info("\(label): removed \(removed.joined(separator: "; "))")
        }
    }
    let verb = dryRun ? "would clean" : "cleaned"
    log.info(
        "\(verb) \(cleaned) network namespaces, skipped \(skipped) with a listener on port \(proxyPort) (the caller's own namespace is skipped: use `meshinit clean`)"
    )
    if failures > 0 {
        throw CommandFailure(status: .failure, message: "\(failures) network namespaces could not be cleaned")
    }
}

/// What a node-wide walk's `body` returned in the namespace `label`, or nil when it did not
/// return: a namespace whose process exited (or whose PID was reused) before it was reached
/// is said so and skipped; a failure is logged as an error and counted in `failures`.
public func logVisit<T>(_ visit: NamespaceVisit<T>, _ label: String, _ log: Logger, failures: inout Int) -> T? {
    switch visit {
    case .visited(let value):
        return value
    case .vanished:
        log.info("\(label): gone before it was reached (its process exited): skipped")
    case .changed:
        log.info("\(label): no longer that namespace when reached (its process exited and the PID was reused): skipped")
    case .failed(let failure as CommandFailure):
        failures += 1
        log.log(.error, "\(label): \(failure.message)")
    case .failed(let error):
        failures += 1
        log.log(.error, "\(label): \(error)")
    }
    return nil
}

/// What happened in one namespace of `clean --all-namespaces`.
public enum NamespaceCleanup: Sendable {
    /// Something listens on the proxy port: not touched.
    case live
    /// Dry run: what would be removed.
    case planned(CleanupPlan)
    /// What was removed.
    case removed([String])
}
