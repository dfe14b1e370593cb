@testable import PageTables

/// A seeded xoshiro256** generator, so every differential run can be replayed from its seed.
struct TestRNG: RandomNumberGenerator {
    var s: (UInt64, UInt64, UInt64, UInt64)
    init(seed: UInt64) {
        var x = seed
        func next() -> UInt64 {  // SplitMix64 to fill the state
            x &+= 0x9e37_79b9_7f4a_7c15
            var z = x
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
        s = (next(), next(), next(), next())
    }
    mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3; s.2 ^= t
        s.3 = s.3 << 45 | s.3 >> 19
        return result
    }
}

/// A table key: the level of a table and the first address it covers.
struct TableKey: Hashable { let level: Int; let base: UInt64 }

/// The naive reference model: one record per unit (4K or 2M) of a window, saying what leaf
/// size holds it, which frame it maps and with what attributes, plus the set of tables.
/// It states the shape rules directly, per unit, instead of walking a tree.
final class NaiveTable {
    let base: UInt64
    let unit: PageSize
    let count: Int
    let rootLevel: Int
    var mapped: [Bool]
    var frame: [UInt64]
    var attrs: [Attributes]
    var size: [PageSize]
    var tables: Set<TableKey> = []

    init(base: UInt64, unit: PageSize, count: Int, rootLevel: Int = 4) {
        self.base = base
        self.unit = unit
        self.count = count
        self.rootLevel = rootLevel
        mapped = .init(repeating: false, count: count)
        frame = .init(repeating: 0, count: count)
        attrs = .init(repeating: [], count: count)
        size = .init(repeating: unit, count: count)
    }

    func va(_ u: Int) -> UInt64 { base + UInt64(u) * unit.bytes }
    func per(_ s: PageSize) -> Int { Int(s.bytes / unit.bytes) }
    /// Units of the `s`-sized block that holds unit `u`.
    func block(_ u: Int, _ s: PageSize) -> Range<Int> { let n = per(s); let b = u / n * n; return b..<b + n }
    func inside(_ r: Range<Int>, _ range: Range<Int>) -> Bool { r.lowerBound >= range.lowerBound && r.upperBound <= range.upperBound }
    func disjoint(_ r: Range<Int>, _ range: Range<Int>) -> Bool { r.upperBound <= range.lowerBound || r.lowerBound >= range.upperBound }

    /// The leaves (by first unit) that overlap `range`.
    func leaves(overlapping range: Range<Int>) -> [Range<Int>] {
        var out: [Range<Int>] = []
        var u = range.lowerBound
        while u < range.upperBound {
            let b = block(u, size[u])
            if mapped[u] { out.append(b) }
            u = b.upperBound
        }
        return out
    }

    /// Splits each leaf partly inside `range` as far as needed.
    func splitPartial(_ range: Range<Int>) {
        for leaf in leaves(overlapping: range) where !inside(leaf, range) { split(leaf, against: range, force: false) }
    }

    /// Splits one leaf: each unit keeps the largest smaller block that lies wholly inside or
    /// wholly outside `range`; with `force`, every block that touches the range goes to 4K.
    func split(_ leaf: Range<Int>, against range: Range<Int>, force: Bool) {
        let old = size[leaf.lowerBound]
        for q in leaf {
            var s = old
            while let smaller = s.smaller, smaller >= unit {
                s = smaller
                let b = block(q, s)
                if force ? disjoint(b, range) : (inside(b, range) || disjoint(b, range)) { break }
            }
            size[q] = s
        }
    }

    /// Adds the tables every mapped unit needs: one at each level from its leaf's up to the root.
    func addRequiredTables() {
        for level in 1..<rootLevel {
            let span: UInt64 = 1 << levelShift(level + 1)
            let unitsPerRegion = max(1, Int(span / unit.bytes))
            var r = 0
            while r < count {
                let end = min(count, r + unitsPerRegion)
                if (r..<end).contains(where: { mapped[$0] && size[$0].level <= level }) {
                    tables.insert(TableKey(level: level, base: va(r) & ~(span - 1)))
                }
                r = end
            }
        }
    }

    /// Removes tables whose region lies inside `[start, start + bytes)` below `belowLevel`.
    func removeTables(start: UInt64, bytes: UInt64, belowLevel: Int) {
        for level in 1..<belowLevel {
            let span: UInt64 = 1 << levelShift(level + 1)
            var b = (start + span - 1) & ~(span - 1)
            while b + span <= start + bytes {
                tables.remove(TableKey(level: level, base: b))
                b += span
            }
        }
    }

    func map(_ range: Range<Int>, pfn: UInt64, attributes: Attributes, sizes: [PageSize]) {
        splitPartial(range)
        let delta = (pfn << pageShift) &- va(range.lowerBound)
        var u = range.lowerBound
        while u < range.upperBound {
            var s = unit
            for c in sizes.sorted(by: >) where c >= unit {
                if inside(block(u, c), range) && delta & (c.bytes - 1) == 0 && block(u, c).lowerBound == u { s = c; break }
            }
            let b = block(u, s)
            for q in b {
                mapped[q] = true
                frame[q] = pfn + UInt64(q - range.lowerBound) * unit.pages
                attrs[q] = attributes
                size[q] = s
            }
            removeTables(start: va(b.lowerBound), bytes: s.bytes, belowLevel: s.level)
            u = b.upperBound
        }
        addRequiredTables()
    }

    func unmap(_ range: Range<Int>) {
        splitPartial(range)
        for u in range { mapped[u] = false; size[u] = unit }
        removeTables(start: va(range.lowerBound), bytes: UInt64(range.count) * unit.bytes, belowLevel: rootLevel)
        addRequiredTables()
    }

    func protect(_ range: Range<Int>, set: Attributes, clear: Attributes, force: Bool) {
        for leaf in leaves(overlapping: range) {
            let old = attrs[leaf.lowerBound]
            let new = old.subtracting(clear).union(set)
            if force {
                split(leaf, against: range, force: true)
            } else if new == old {
                continue
            } else if !inside(leaf, range) {
                split(leaf, against: range, force: false)
            }
            for q in leaf where range.contains(q) { attrs[q] = new }
        }
        addRequiredTables()
    }

    func collapse(_ range: Range<Int>, sizes: [PageSize]) {
        for target in [PageSize.size2M, .size1G] where target > unit && sizes.contains(target) {
            var b = block(range.lowerBound, target).lowerBound
            while b < range.upperBound {
                let blk = b..<b + per(target)
                b = blk.upperBound
                guard blk.upperBound <= count, tables.contains(TableKey(level: target.level - 1, base: va(blk.lowerBound))) else { continue }
                let first = blk.lowerBound
                let step = target.smaller!.pages
                guard frame[first] & (target.pages - 1) == 0,
                      attrs[first].contains(.present), !attrs[first].contains(.forced4K) else { continue }
                let ok = stride(from: first, to: blk.upperBound, by: per(target.smaller!)).enumerated().allSatisfy { i, q in
                    mapped[q] && size[q] == target.smaller! && attrs[q] == attrs[first] && frame[q] == frame[first] + UInt64(i) * step
                }
                guard ok else { continue }
                for q in blk { size[q] = target }
                removeTables(start: va(first), bytes: target.bytes, belowLevel: target.level)
            }
        }
    }

    var leafCounts: LeafCounts {
        var c = LeafCounts()
        for u in 0..<count where mapped[u] { c[size[u]] += 1 }
        for s in PageSize.allCases where s >= unit { c[s] /= per(s) }
        return c
    }
}

/// Collects every table below the root as (level, first address).
struct TablesVisitor: PageTableVisitor {
    var found: Set<TableKey> = []
    var flags: VisitFlags { .tablePre }
    mutating func visit(_ v: Visit, table: inout PageTable) throws(PageTableError) {
        found.insert(TableKey(level: v.level - 1, base: v.address))
    }
}
