/// Where explain's text and JSON are written: a `String`, or an `OutputBuffer`.
public protocol TextOutput {
    static func += (out: inout Self, text: String)
}

extension String: TextOutput {}

/// Output bytes, appended piece by piece. A report appends ~50 short pieces per packet;
/// appending to a `String` costs a few hundred instructions a piece (capacity, uniqueness and
/// breadcrumb bookkeeping), to bytes a copy: this is what keeps 10,000 packets' JSON under
/// 100 ms (issue 18, P4).
public struct OutputBuffer: TextOutput, Sendable {
    public private(set) var bytes: [UInt8] = []

    public init() {}

    public var count: Int { bytes.count }
    public var isEmpty: Bool { bytes.isEmpty }

    @inlinable public static func += (out: inout OutputBuffer, text: String) { out.append(text) }

    @usableFromInline mutating func append(_ text: String) { bytes.append(contentsOf: text.utf8) }

    /// Empties it, keeping its capacity.
    public mutating func removeAll() { bytes.removeAll(keepingCapacity: true) }

    /// The text written (valid UTF-8: only `String`s are appended).
    public var text: String { String(decoding: bytes, as: UTF8.self) }
}
