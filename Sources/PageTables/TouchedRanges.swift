/// The address ranges a table's changes touched since they were last taken, so invariants
/// can be checked over those regions between full walks: a few merged closed ranges, each
/// widened to the 1G region around it (a split or collapse rewrites the whole large leaf),
/// and folded into one span past `capacity`.
public struct TouchedRanges: Hashable, Sendable {
    public private(set) var ranges: [ClosedRange<UInt64>] = []
    /// Ranges kept apart before they fold into one span.
    public static let capacity = 64
    static let region: UInt64 = 1 << 30

    public init() {}

    public var isEmpty: Bool { ranges.isEmpty }

    /// Notes a change over `[first, last]`.
    public mutating func insert(_ first: UInt64, _ last: UInt64) {
        var lo = first & ~(Self.region - 1), hi = last | (Self.region - 1)
        var i = 0
        while i < ranges.count {
            let r = ranges[i]
            // Overlapping or adjacent: merge.
            let apart = r.upperBound < lo ? lo - r.upperBound > 1 : hi < r.lowerBound ? r.lowerBound - hi > 1 : false
            if !apart {
                lo = min(lo, r.lowerBound)
                hi = max(hi, r.upperBound)
                ranges.remove(at: i)
            } else {
                i += 1
            }
        }
        ranges.append(lo...hi)
        if ranges.count > Self.capacity {
            ranges = [ranges.map(\.lowerBound).min()!...ranges.map(\.upperBound).max()!]
        }
    }
}

extension PageTable {
    /// Notes a change over `[start, last]` when changes are being tracked (`touched`).
    @inlinable @inline(__always) mutating func noteTouched(_ start: UInt64, _ last: UInt64) {
        if touched != nil { touched!.insert(start, last) }
    }
}
