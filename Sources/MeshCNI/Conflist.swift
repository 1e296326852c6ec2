import MeshModel

/// A `.conflist` that cannot be edited.
public struct ConflistError: Error, Sendable, Hashable, CustomStringConvertible {
    public var reason: String

    public init(_ reason: String) { self.reason = reason }

    public var description: String { reason }
}

/// Editing the primary network configuration in place: our plugin is appended to its
/// `plugins` array (or our entry replaced), or removed, as text — every other byte of the
/// file stays as it was.
public enum Conflist {
    /// The plugin `type` meshinit registers as.
    public static let pluginType = "meshinit"

    /// The file a runtime uses: the first `.conflist`, `.conf` or `.json` in lexicographic
    /// order (libcni's ConfFiles order). Nil when there is none.
    public static func primary(among names: [String]) -> String? {
        names.filter { $0.hasSuffix(".conflist") || $0.hasSuffix(".conf") || $0.hasSuffix(".json") }
            .filter { !$0.hasPrefix(".") }.sorted().first
    }

    /// `text` with `plugin` (one JSON object, as text) at the end of `plugins`, or replacing
    /// our entry where there is one; nil when the file already holds exactly that.
    ///
    /// - Throws: `ConflistError` when the text is not a network configuration list.
    public static func inserting(_ plugin: String, into text: String) throws(ConflistError) -> String? {
        let bytes = Array(text.utf8)
        let (list, items) = try plugins(bytes)
        if let ours = items.first(where: isOurs) {
            if String(decoding: bytes[ours.range], as: UTF8.self) == plugin { return nil }
            return splice(bytes, ours.range, Array(plugin.utf8))
        }
        guard let last = items.last else {
            // An empty list: `[` … `]` becomes `[plugin]`.
            let inner = (list.range.lowerBound + 1)..<(list.range.upperBound - 1)
            return splice(bytes, inner, Array(plugin.utf8))
        }
        let indent = indentation(bytes, at: last.range.lowerBound)
        let insertion = Array(",".utf8) + (indent.map { [0x0a] + $0 } ?? [0x20]) + Array(plugin.utf8)
        return splice(bytes, last.range.upperBound..<last.range.upperBound, insertion)
    }

    /// `text` without our entries; nil when it has none.
    public static func removing(from text: String) throws(ConflistError) -> String? {
        var bytes = Array(text.utf8)
        var changed = false
        while true {
            let (_, items) = try plugins(bytes)
            guard let index = items.firstIndex(where: isOurs) else { break }
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
            changed = true
        }
        return changed ? String(decoding: bytes, as: UTF8.self) : nil
    }

    /// Whether the configuration lists our plugin.
    public static func contains(_ text: String) throws(ConflistError) -> Bool {
        try plugins(Array(text.utf8)).items.contains(where: isOurs)
    }

    static func plugins(_ bytes: [UInt8]) throws(ConflistError) -> (list: JSONSpan, items: [JSONSpan]) {
        let document: JSONSpan
        do {
            document = try JSONParser.parse(bytes)
        } catch {
            throw ConflistError("not JSON: \(error)")
        }
        guard case .object = document.kind else { throw ConflistError("not a JSON object") }
        guard let list = document["plugins"] else {
            throw ConflistError("no \"plugins\" list (a single-plugin .conf; meshinit chains into a .conflist only)")
        }
        guard case .array(let items) = list.kind else { throw ConflistError("\"plugins\" is not a list") }
        return (list, items)
    }

    static func isOurs(_ item: JSONSpan) -> Bool { item["type"]?.string == pluginType }

    static func splice(_ bytes: [UInt8], _ range: Range<Int>, _ replacement: [UInt8]) -> String {
        var out = bytes
        out.replaceSubrange(range, with: replacement)
        return String(decoding: out, as: UTF8.self)
    }

    /// The whitespace that starts the line of `offset`, when only whitespace precedes it there.
    static func indentation(_ bytes: [UInt8], at offset: Int) -> [UInt8]? {
        var start = offset
        while start > 0, bytes[start - 1] == 0x20 || bytes[start - 1] == 0x09 { start -= 1 }
        guard start == 0 || bytes[start - 1] == 0x0a else { return nil }
        return Array(bytes[start..<offset])
    }
}
