import MeshCNI
import MeshConfig
import MeshModel
import MeshSystem

#if canImport(Glibc)
    import Glibc
#endif

/// The node side of the CNI plugin: our entry chained into (or removed from) the primary
/// `.conflist`, and the binary copied into (or removed from) the CNI bin directory. Edits are
/// on the file's bytes and compare-and-swap (a primary CNI rewriting its file meanwhile is
/// not reverted).
public enum CNINode {
    /// The runtime's directories.
    public struct Paths: Sendable, Hashable {
        public var binDir: String
        public var confDir: String

        public init(binDir: String, confDir: String) {
            self.binDir = binDir
            self.confDir = confDir
        }

        public var plugin: String { binDir + "/" + Conflist.pluginType }
    }

    /// Our `.conflist` entry, as compact JSON: `type` first, the given keys, and the
    /// pod-annotations capability (so containerd and CRI-O pass the annotations).
    public static func entry(_ text: String, boundary: SystemBoundary) throws -> String {
        var source = Array(text.utf8)
        if text.hasPrefix("@") {
            do {
                source = try FileEdit.read(String(text.dropFirst()), limit: 1 << 20)
            } catch {
                throw CommandFailure(status: .usage, message: "--config \(quoted(text)): \(error)")
            }
        }
        let parsed: JSONSpan
        do {
            parsed = try JSONParser.parse(source)
        } catch {
            throw CommandFailure(status: .usage, message: "--config: \(error)")
        }
        guard case .object(let members) = parsed.kind else {
            throw CommandFailure(status: .usage, message: "--config: expected a JSON object")
        }
        var out: [(String, JSONValue)] = [("type", .string(Conflist.pluginType))]
        var capabilities: [(String, JSONValue)] = [("io.kubernetes.cri.pod-annotations", .bool(true))]
        for (key, value) in members {
            switch key {
            case "type", "cniVersion", "name", "prevResult", "runtimeConfig", "args", "cni.dev/valid-attachments":
                throw CommandFailure(
                    status: .usage, message: "--config: \(quoted(key)) is set by the runtime, not here")
            case "capabilities":
                guard case .object(let extra) = value.kind else {
                    throw CommandFailure(status: .usage, message: "--config: \"capabilities\" must be an object")
                }
                for (name, flag) in extra where name != "io.kubernetes.cri.pod-annotations" {
                    capabilities.append((name, flag.value))
                }
            default:
                out.append((key, value.value))
            }
        }
        out.append(("capabilities", .object(capabilities)))
        let entry = JSONValue.object(out).serialized
        // The keys must be what the plugin accepts: check them as the plugin will.
        do {
            let config = try PluginConfig(
                try JSONParser.parse("{\"cniVersion\":\"1.1.0\",\"name\":\"check\"," + entry.dropFirst()))
            // And their values, as they resolve for a pod without annotations.
            _ = try boundary.resolve(.input(PodDecision.input(config)), in: .current)
        } catch let error as CNIError {
            throw CommandFailure(status: .usage, message: "--config: \(error)")
        } catch let error as ConfigError {
            throw CommandFailure(status: .usage, message: "--config: \(CNIError(error).message)")
        }
        return entry
    }

    /// Chains `entry` into the primary configuration once.
    ///
    /// - Throws: 69 (unavailable) when the directory has no configuration yet.
    public static func chain(_ entry: String, in paths: Paths, log: Logger) throws {
        guard try ensureChained(entry, in: paths.confDir, log: log) else {
            throw CommandFailure(
                status: .unavailable,
                message:
                    "no network configuration in \(paths.confDir) yet (the primary CNI writes it; --watch waits for it)"
            )
        }
    }

    /// `cni install --watch`: keeps `entry` chained, looking again whenever the directory
    /// changes (and every minute), until SIGTERM. A configuration that cannot be edited for
    /// `failureTimeout` seconds is an error (new pods would start without capture).
    public static func watch(_ entry: String, in paths: Paths, failureTimeout: Int, log: Logger) throws {
        let watcher: DirectoryWatch
        do {
            watcher = try DirectoryWatch(paths.confDir)
        } catch {
            throw CommandFailure(status: .failure, message: error.description)
        }
        log.info("watching \(paths.confDir)")
        var failingSince: Int64?
        while true {
            // A periodic look too, in case an event was missed.
            var wait: Int32 = 60_000
            do {
                _ = try ensureChained(entry, in: paths.confDir, log: log)
                if failingSince != nil { log.info("the primary configuration can be edited again") }
                failingSince = nil
            } catch let failure as CommandFailure {
                // A primary being rewritten may be half-written for a moment: look again soon;
                // one that stays uneditable means new pods start without capture, so exit
                // non-zero and let it show (a restart, the DaemonSet's status, its log).
                let now = CNIHandler.monotonicMicroseconds() / 1000
                let since = failingSince ?? now
                if failingSince == nil { log.warn("\(failure.message) (trying again for \(failureTimeout) s)") }
                failingSince = since
                if now - since >= Int64(failureTimeout) * 1000 {
                    throw CommandFailure(
                        status: failure.status,
                        message:
                            "\(failure.message) (for \(failureTimeout) s: new pods on this node start without capture)")
                }
                wait = 250
            }
            if watcher.wait(milliseconds: wait) == .stop { break }
        }
        log.info("stopping")
    }

    /// Copies this binary to `path` (atomically, through a temporary file of its own), unless
    /// it is already there byte for byte.
    public static func copyBinary(to path: String, log: Logger) throws {
        do {
            let own = try Files.read(try Files.ownExecutable())
            if let current = try? Files.read(path), current == own { return }
            _ = try FileEdit.replace(path, expecting: nil, with: own, mode: 0o755)
            log.info("installed \(path)")
        } catch {
            throw CommandFailure(
                status: error.errno == EACCES || error.errno == EPERM ? .permission : .failure,
                message: error.description)
        }
    }

    /// How often an edit is tried again when the file changed under it.
    public static let editAttempts = 5

    /// Puts `entry` at the end of the primary `.conflist`'s plugins, if it is not there.
    /// Returns false when the directory has no configuration yet. The edit is on the file's
    /// bytes and only lands if the file still holds what it was derived from (a primary CNI
    /// rewriting its file meanwhile is not reverted: the new file is edited instead).
    @discardableResult
    public static func ensureChained(_ entry: String, in directory: String, log: Logger) throws -> Bool {
        for _ in 0..<editAttempts {
            let names: [String]
            do {
                names = try Files.list(directory)
            } catch {
                throw CommandFailure(status: .failure, message: error.description)
            }
            guard let primary = Conflist.primary(among: names) else { return false }
            let path = directory + "/" + primary
            switch try edit(path, { bytes throws(ConflistError) in try Conflist.inserting(entry, into: bytes) }) {
            case .unchanged: return true
            case .edited:
                log.info("chained meshinit into \(path)")
                return true
            case .changedMeanwhile, .vanished:
                log.info("\(path) changed while meshinit edited it: reading it again")
            }
        }
        throw CommandFailure(
            status: .temporary,
            message: "\(directory): the primary configuration kept changing while meshinit edited it")
    }

    public enum EditOutcome { case unchanged, edited, changedMeanwhile, vanished }

    /// One compare-and-swap edit of `path`.
    public static func edit(_ path: String, _ change: ([UInt8]) throws(ConflistError) -> [UInt8]?) throws -> EditOutcome
    {
        let bytes: [UInt8]
        do {
            bytes = try FileEdit.read(path, limit: 4 << 20)
        } catch {
            if case .system(let e) = error, e.errno == ENOENT { return .vanished }
            throw CommandFailure(status: .failure, message: "\(path): \(error)")
        }
        let updated: [UInt8]?
        do {
            updated = try change(bytes)
        } catch {
            throw CommandFailure(status: .failure, message: "\(path): \(error)")
        }
        guard let updated else { return .unchanged }
        do {
            switch try FileEdit.replace(path, expecting: bytes, with: updated, mode: Files.mode(path) ?? 0o644) {
            case .replaced: return .edited
            case .changed: return .changedMeanwhile
            }
        } catch {
            throw CommandFailure(
                status: error.errno == EACCES || error.errno == EPERM ? .permission : .failure,
                message: error.description)
        }
    }

    /// Our entry removed from every configuration in the directory (the primary, and any
    /// other that chains meshinit: the runtime may switch to it); the binary only once none
    /// is left, since a configuration that still names meshinit fails every pod without it.
    public static func remove(_ paths: Paths, log: Logger) throws {
        var problems: [String] = []
        let names = (try? Files.list(paths.confDir)) ?? []
        for name in names.filter(Conflist.isConfiguration).sorted() {
            let path = paths.confDir + "/" + name
            do {
                if try removeEntry(path) { log.info("removed meshinit from \(path)") }
            } catch let failure as CommandFailure {
                problems.append(failure.message)
            }
        }
        guard problems.isEmpty else {
            throw CommandFailure(
                status: .failure,
                message:
                    "\(problems.joined(separator: "; ")); \(paths.plugin) is kept (a configuration naming meshinit fails every pod without it)"
            )
        }
        do {
            if Files.exists(paths.plugin) {
                try Files.remove(paths.plugin)
                log.info("removed \(paths.plugin)")
            }
        } catch {
            throw CommandFailure(status: .failure, message: error.description)
        }
    }

    /// Removes our entries from one configuration; true if it had any.
    public static func removeEntry(_ path: String) throws -> Bool {
        for _ in 0..<editAttempts {
            var ours = false
            let outcome = try edit(path) { bytes throws(ConflistError) in
                if Conflist.isOurSinglePlugin(bytes) {
                    throw ConflistError(
                        "a single-plugin configuration of meshinit (not ours to delete: remove it yourself)")
                }
                do {
                    let updated = try Conflist.removing(from: bytes)
                    ours = updated != nil
                    return updated
                } catch {
                    // Not a list we can read: it must not be one that chains us.
                    if bytes.firstRange(of: Array("meshinit".utf8)) != nil {
                        throw ConflistError("\(error), and it mentions meshinit: cannot tell whether it chains it")
                    }
                    return nil
                }
            }
            switch outcome {
            case .unchanged, .vanished: return false
            case .edited: return ours
            case .changedMeanwhile: continue
            }
        }
        throw CommandFailure(status: .temporary, message: "\(path) kept changing while meshinit edited it")
    }
}
