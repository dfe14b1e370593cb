/// A leaf size: 4K pages, 2M and 1G blocks (x86 PTE/PMD/PUD leaves, arm64 level 3/2/1
/// descriptors with a 4K granule). Intel SDM Vol 3 §4.5; Arm ARM D8.3.
public enum PageSize: Int, CaseIterable, Comparable, Hashable, Sendable, CustomStringConvertible {
    case size4K = 1
    case size2M = 2
    case size1G = 3

    /// The table level whose leaf has this size, counting as Linux's pg_level does (PTE = 1).
    @inlinable public var level: Int { rawValue }
    /// log2 of the size in bytes.
    @inlinable public var shift: UInt64 { 12 &+ 9 &* UInt64(truncatingIfNeeded: rawValue &- 1) }
    @inlinable public var bytes: UInt64 { 1 << shift }
    /// Base pages in one leaf of this size.
    @inlinable public var pages: UInt64 { bytes >> pageShift }
    /// The leaf size at a level (1...3), or nil above PUD.
    @inlinable public init?(level: Int) { self.init(rawValue: level) }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    /// The next smaller size (what a split produces), or nil for 4K.
    @inlinable public var smaller: PageSize? { PageSize(rawValue: rawValue - 1) }
    public var description: String { ["4K", "2M", "1G"][rawValue - 1] }
}
