/// Collections that keep a 64-bit digest of their contents up to date as they change, so the
/// interleaving explorer can fingerprint a state in time proportional to what it holds of
/// them, not to their size (Zobrist-style: the XOR of one mixed hash per element, so an
/// element added and removed again leaves the digest as it was). A collection keeps its
/// digest only once `track()` is called (the explorer does, at its setup state): plain runs
/// pay nothing. The digests use Swift's per-process hash seed: they decide only which
/// states are the same within one run and never reach output.
public enum Digest {
    /// The splitmix64 finalizer: every input bit reaches every output bit.
    @inlinable public static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// An ordered combination of two digests.
    @inlinable public static func combine(_ a: UInt64, _ b: UInt64) -> UInt64 { mix(a ^ mix(b &+ 0x632B_E59B_D9B4_E019)) }

    /// The digest of one hashable value.
    @inlinable public static func of<T: Hashable>(_ v: T) -> UInt64 { mix(UInt64(bitPattern: Int64(v.hashValue))) }
}

/// A set whose digest is the XOR of its elements' digests.
public struct DigestedSet<Element: Hashable & Sendable>: Hashable, Sendable, Sequence {
    @usableFromInline var _elements: Set<Element> = []
    @usableFromInline var _digest: UInt64 = 0
    @usableFromInline var tracking = false
    public init() {}

    /// Starts keeping the digest: computed once from the contents, then kept as they change.
    public mutating func track() {
        _digest = _elements.reduce(0) { $0 ^ Digest.of($1) }
        tracking = true
    }

    @inlinable public var digest: UInt64 { _digest }
    @inlinable public func contains(_ e: Element) -> Bool { _elements.contains(e) }
    @inlinable public var count: Int { _elements.count }
    @inlinable public var isEmpty: Bool { _elements.isEmpty }

    @inlinable @discardableResult public mutating func insert(_ e: Element) -> (inserted: Bool, memberAfterInsert: Element) {
        let r = _elements.insert(e)
        if r.inserted && tracking { _digest ^= Digest.of(e) }
        return r
    }

    @inlinable @discardableResult public mutating func remove(_ e: Element) -> Element? {
        guard let r = _elements.remove(e) else { return nil }
        if tracking { _digest ^= Digest.of(e) }
        return r
    }

    public func makeIterator() -> Set<Element>.Iterator { _elements.makeIterator() }
    public static func == (a: Self, b: Self) -> Bool { a._elements == b._elements }
    public func hash(into h: inout Hasher) { h.combine(_elements) }
}

/// A dictionary whose digest is the XOR of one digest per (key, value) pair.
public struct DigestedDictionary<Key: Hashable & Sendable, Value: Hashable & Sendable>: Hashable, Sendable {
    @usableFromInline var _entries: [Key: Value] = [:]
    @usableFromInline var _digest: UInt64 = 0
    @usableFromInline var tracking = false
    public init() {}

    /// Starts keeping the digest: computed once from the contents, then kept as they change.
    public mutating func track() {
        _digest = _entries.reduce(0) { $0 ^ Self.pair($1.key, $1.value) }
        tracking = true
    }

    @inlinable public var digest: UInt64 { _digest }
    @inlinable static func pair(_ k: Key, _ v: Value) -> UInt64 { Digest.combine(Digest.of(k), Digest.of(v)) }

    @inlinable public subscript(key: Key) -> Value? {
        get { _entries[key] }
        set {
            if tracking {
                if let old = _entries[key] { _digest ^= Self.pair(key, old) }
                if let v = newValue { _digest ^= Self.pair(key, v) }
            }
            _entries[key] = newValue
        }
    }

    @inlinable public var count: Int { _entries.count }
    @inlinable public var isEmpty: Bool { _entries.isEmpty }
    public mutating func removeAll() {
        _entries.removeAll()
        _digest = 0
    }
    public static func == (a: Self, b: Self) -> Bool { a._entries == b._entries }
    public func hash(into h: inout Hasher) { h.combine(_entries) }
}

/// An array whose digest is the XOR of one digest per (index, element) pair for the elements
/// that differ from `blank`, so a large array of blanks costs nothing to create.
public struct DigestedArray<Element: Hashable & Sendable>: Hashable, Sendable, RandomAccessCollection, MutableCollection {
    @usableFromInline var storage: [Element]
    @usableFromInline var _digest: UInt64 = 0
    @usableFromInline var tracking = false
    public let blank: Element

    /// Starts keeping the digest: computed once from the contents, then kept as they change.
    public mutating func track() {
        _digest = storage.indices.reduce(0) { $0 ^ part($1, storage[$1]) }
        tracking = true
    }

    public init(repeating blank: Element, count: Int) {
        self.blank = blank
        storage = [Element](repeating: blank, count: count)
    }

    @inlinable public var digest: UInt64 { _digest }
    @inlinable func part(_ i: Int, _ v: Element) -> UInt64 { v == blank ? 0 : Digest.combine(UInt64(i), Digest.of(v)) }

    @inlinable public var startIndex: Int { 0 }
    @inlinable public var endIndex: Int { storage.count }
    @inlinable public subscript(i: Int) -> Element {
        get { storage[i] }
        set {
            if tracking { _digest ^= part(i, storage[i]) ^ part(i, newValue) }
            storage[i] = newValue
        }
    }

    @inlinable public mutating func append(_ v: Element) {
        if tracking { _digest ^= part(storage.count, v) }
        storage.append(v)
    }

    @inlinable public mutating func popLast() -> Element? {
        guard let v = storage.popLast() else { return nil }
        if tracking { _digest ^= part(storage.count, v) }
        return v
    }

    public static func == (a: Self, b: Self) -> Bool { a.storage == b.storage }
    public func hash(into h: inout Hasher) { h.combine(storage) }
}
