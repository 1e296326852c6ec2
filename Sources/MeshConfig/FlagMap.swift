/// A value per `IstioFlag`, stored by the flag's position: what a `FlagMap<Value>`
/// would hold, without hashing.
///
/// Why not a Dictionary: the first Dictionary or Set keyed by a type makes the Swift runtime
/// look up that type's `Hashable` conformance by scanning every conformance record of the
/// binary (hundreds of thousands of instructions in a 16 MB static binary), and every
/// install parses flags into one. Keyed by position, the lookup never happens (issue 20).
/// Iteration is in the flags' declaration order (a Dictionary's was unspecified).
public struct FlagMap<Value>: Sequence {
    @usableFromInline var slots: [Value?]
    @usableFromInline var used: Int

    @inlinable public init() {
        slots = [Value?](repeating: nil, count: IstioFlag.caseCount)
        used = 0
    }

    @inlinable public subscript(flag: IstioFlag) -> Value? {
        get { slots[flag.rawValue] }
        set {
            let had = slots[flag.rawValue] != nil
            slots[flag.rawValue] = newValue
            used += (newValue != nil ? 1 : 0) - (had ? 1 : 0)
        }
    }

    @inlinable public var isEmpty: Bool { used == 0 }
    @inlinable public var count: Int { used }
    /// The flags that hold a value, in declaration order.
    @inlinable public var keys: [IstioFlag] { map(\.key) }

    /// This map with `other`'s values added; where both hold a flag, `combine` decides.
    @inlinable public func merging(_ other: FlagMap, uniquingKeysWith combine: (Value, Value) -> Value) -> FlagMap {
        var merged = self
        for (flag, value) in other { merged[flag] = self[flag].map { combine($0, value) } ?? value }
        return merged
    }

    public typealias Element = (key: IstioFlag, value: Value)

    public struct Iterator: IteratorProtocol {
        @usableFromInline let map: FlagMap
        @usableFromInline var position: Int
        @inlinable init(_ map: FlagMap) {
            self.map = map
            self.position = 0
        }
        @inlinable public mutating func next() -> Element? {
            while position < map.slots.count {
                defer { position += 1 }
                if let value = map.slots[position] { return (IstioFlag(rawValue: position)!, value) }
            }
            return nil
        }
    }

    @inlinable public func makeIterator() -> Iterator { Iterator(self) }
}

extension FlagMap: ExpressibleByDictionaryLiteral {
    @inlinable public init(dictionaryLiteral elements: (IstioFlag, Value)...) {
        self.init()
        for (flag, value) in elements { self[flag] = value }
    }
}

extension FlagMap: Sendable where Value: Sendable {}
extension FlagMap.Iterator: Sendable where Value: Sendable {}

extension FlagMap: Equatable where Value: Equatable {
    @inlinable public static func == (a: FlagMap, b: FlagMap) -> Bool { a.slots == b.slots }
}

extension FlagMap: CustomStringConvertible {
    public var description: String {
        "[" + map { "\($0.key): \($0.value)" }.joined(separator: ", ") + "]"
    }
}
