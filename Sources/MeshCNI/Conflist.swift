import MeshModel

/// A `.conflist` that cannot be edited.
public struct ConflistError: Error, Sendable, Hashable, CustomStringConvertible {
    public var reason: String

    public init(_ reason: String) { self.reason = reason }

    public var description: String { reason }
}

/// Editing the primary network configuration in place: our plugin is appended to its
/// `plugins` array (or our entry replaced), or removed, on the file's bytes — every other byte
/// of the file stays as it was, whatever it holds (invalid UTF-8 in another plugin's strings
/// included: nothing is decoded and re-encoded).
public enum Conflist {
    /// The plugin `type` meshinit registers as.
    public static let pluginType = "meshinit"

    /// Whether a directory entry is a network configuration a runtime loads (libcni's
    /// ConfFiles: `.conflist`, `.conf`, `.json`; dot files are temporaries).
    public static func isConfiguration(_ name: String) -> Bool {
        !name.hasPrefix(".") && (name.hasSuffix(".conflist") || name.hasSuffix(".conf") || name.hasSuffix(".json"))
    }

    /// The file a runtime uses: the first configuration in lexicographic order. Nil when
    /// there is none.
    public static func primary(among names: [String]) -> String? {
        names.filter(isConfiguration).sorted().first
    }

    /// `bytes` with `plugin` (one JSON object, as text) at the end of `plugins`, or replacing
    /// our entry where there is one; nil when the file already holds exactly that.
    ///
    /// - Throws: `ConflistError` when the bytes are not a network configuration list.
    public static func inserting(_ plugin: String, into bytes: [UInt8]) throws(ConflistError) -> [UInt8]? {
        let entry = Array(plugin.utf8)
        let (list, items) = try plugins(bytes)
        if let ours = items.first(where: isOurs) {
            if bytes[ours.range].elementsEqual(entry) && items.filter(isOurs).count == 1 { return nil }
            // Ours replaced; any second entry of ours dropped (one capture per pod).
            var out = try removingOurs(bytes, keepFirst: true)
            guard let kept = try plugins(out).items.first(where: isOurs) else {
                throw ConflistError("our entry vanished while editing")
            }
            out.replaceSubrange(kept.range, with: entry)
            return out
        }
        guard let last = items.last else {
            // An empty list: `[` … `]` becomes `[plugin]`.
            let inner = (list.range.lowerBound + 1)..<(list.range.upperBound - 1)
            return splice(bytes, inner, entry)
        }
        let indent = indentation(bytes, at: last.range.lowerBound)
        let insertion = Array(",".utf8) + (indent.map { [0x0a] + $0 } ?? [0x20]) + entry
        return splice(bytes, last.range.upperBound..<last.range.upperBound, insertion)
    }

    /// `bytes` without our entries; nil when it has none.
    public static func removing(from bytes: [UInt8]) throws(ConflistError) -> [UInt8]? {
        let out = try removingOurs(bytes, keepFirst: false)
        return out == bytes ? nil : out
    }

    /// Whether the configuration lists our plugin.
    public static func contains(_ bytes: [UInt8]) throws(ConflistError) -> Bool {
        try plugins(bytes).items.contains(where: isOurs)
    }

    /// Whether `bytes` is a single-plugin configuration (`.conf`) of ours.
    public static func isOurSinglePlugin(_ bytes: [UInt8]) -> Bool {
        guard let document = try? JSONParser.parse(bytes, options: .lenient) else { return false }
        return document["plugins"] == nil && document["type"]?.string == pluginType
    }

    /// Our entries removed, last first (so the offsets of those before stay valid), each with
    /// a separator; with `keepFirst`, all but the first.
    static func removingOurs(_ input: [UInt8], keepFirst: Bool) throws(ConflistError) -> [UInt8] {
        var bytes = input
        while true {
            let items = try plugins(bytes).items
            let ours = items.indices.filter { isOurs(items[$0]) }
            guard let index = ours.last, !(keepFirst && ours.count == 1) else { break }
            // With the separator before it (or, for the first entry, the one after it).
            let range: Range<Int> =
                if index > 0 {
                    items[index - 1].range.upperBound..<items[index].range.upperBound
                } else if items.count > 1 {
                    items[0].range.lowerBound..<items[1].range.lowerBound
                } else {
                    items[0].range
                }
            bytes.replaceSubrange(range, with: [])
        }
        return bytes
    }

    static func plugins(_ bytes: [UInt8]) throws(ConflistError) -> (list: JSONSpan, items: [JSONSpan]) {
        let document: JSONSpan
        do {
            // Another program's file: its bytes are kept as they are (invalid UTF-8 too, and
            // repeated keys where they do not decide what we edit).
            document = try JSONParser.parse(bytes, options: .lenient)
        } catch {
            throw ConflistError("not JSON: \(error)")
        }
        guard case .object = document.kind else { throw ConflistError("not a JSON object") }
        guard let list = document["plugins"] else {
            throw ConflistError("no \"plugins\" list (a single-plugin .conf; meshinit chains into a .conflist only)")
        }
        guard document.count(of: "plugins") == 1 else { throw ConflistError("\"plugins\" appears twice") }
        guard case .array(let items) = list.kind else { throw ConflistError("\"plugins\" is not a list") }
        for (i, item) in items.enumerated() where item.count(of: "type") > 1 {
            throw ConflistError("plugin \(i + 1) of \"plugins\" has \"type\" twice")
        }
        return (list, items)
    }

    static func isOurs(_ item: JSONSpan) -> Bool { item["type"]?.string == pluginType }

    static func splice(_ bytes: [UInt8], _ range: Range<Int>, _ replacement: [UInt8]) -> [UInt8] {
        var out = bytes
        out.replaceSubrange(range, with: replacement)
        return out
    }

    /// The whitespace that starts the line of `offset`, when only whitespace precedes it there.
    static func indentation(_ bytes: [UInt8], at offset: Int) -> [UInt8]? {
        var start = offset
        while start > 0, bytes[start - 1] == 0x20 || bytes[start - 1] == 0x09 { start -= 1 }
        guard start == 0 || bytes[start - 1] == 0x0a else { return nil }
        return Array(bytes[start..<offset])
    }
}
