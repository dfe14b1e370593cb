/// A leaf found for an address.
public struct Leaf: Hashable, Sendable, CustomStringConvertible {
    /// First virtual address of the leaf.
    public let virt: VirtAddr
    public let size: PageSize
    public let descriptor: Descriptor

    @inlinable public init(virt: VirtAddr, size: PageSize, descriptor: Descriptor) {
        self.virt = virt
        self.size = size
        self.descriptor = descriptor
    }

    /// First physical address of the leaf.
    @inlinable public var phys: PhysAddr { descriptor.frame.physAddr }
    @inlinable public var attributes: Attributes { descriptor.attributes }
    /// The physical address `virt` maps to, if it lies in this leaf.
    @inlinable public func translate(_ address: VirtAddr) -> PhysAddr {
        PhysAddr(phys.rawValue + (address.rawValue - virt.rawValue))
    }
    public var description: String { "\(virt) \(size) -> \(phys) \(attributes)" }
}

/// Collects every leaf overlapping a range, in address order.
@usableFromInline struct LeavesVisitor: PageTableVisitor {
    @usableFromInline typealias Store = ReadOnlyPageTable
    @usableFromInline var leaves: [Leaf] = []
    @usableFromInline var flags: VisitFlags { .leaf }
    @inlinable init() {}
    @inlinable mutating func visit(_ v: Visit, table: inout ReadOnlyPageTable) throws(PageTableError) {
        if v.entry.isLeaf, let size = PageSize(level: v.level) {
            leaves.append(Leaf(virt: VirtAddr(v.address), size: size, descriptor: v.entry))
        }
    }
}

/// Counts the leaves of a range by size, without listing them.
@usableFromInline struct LeafCountVisitor: PageTableVisitor {
    @usableFromInline typealias Store = ReadOnlyPageTable
    @usableFromInline var counts = LeafCounts()
    @usableFromInline var flags: VisitFlags { .leaf }
    @inlinable init() {}
    @inlinable mutating func visit(_ v: Visit, table: inout ReadOnlyPageTable) throws(PageTableError) {
        if v.entry.isLeaf, let size = PageSize(level: v.level) { counts[size] += 1 }
    }
}

extension PageTable {
    /// The leaves of each size over `[virt, virt + size)`, counted by a walk. A compact table
    /// wholly inside the range is counted from its record (`CompactTable.leafCount`), not
    /// entry by entry: the direct-pages-count invariant and the memory map count the 16
    /// million PTEs of a 16 TiB host's split direct map this way.
    public func leafCounts(virt: VirtAddr, size: UInt64) throws(PageTableError) -> LeafCounts {
        try validate(start: virt.rawValue, size: size)
        let start = virt.rawValue, last = start &+ (size - 1), level = rootLevel
        let (first, base) = root(start), final = root(last).table
        var counts = LeafCounts()
        withReadOnly { store in
            for k in first...final {
                Self.countLeaves(store, k, level: level, base: base &+ (UInt64(k - first) &<< (levelShift(level) &+ 9)),
                                 start: start, last: last, &counts)
            }
        }
        return counts
    }

    /// The same count entry by entry, through the walker: the fast count's oracle in tests.
    func walkedLeafCounts(virt: VirtAddr, size: UInt64) throws(PageTableError) -> LeafCounts {
        var visitor = LeafCountVisitor()
        try read(start: virt.rawValue, size: size, &visitor)
        return visitor.counts
    }

    /// Adds the leaves of `table` (at `level`, covering from `base`) inside `[start, last]`.
    static func countLeaves(_ store: ReadOnlyPageTable, _ table: Int, level: Int, base: UInt64, start: UInt64, last: UInt64,
                            _ counts: inout LeafCounts) {
        let shift = levelShift(level)
        let tableLast = base &+ ((1 << (shift + 9)) &- 1)
        if start <= base, tableLast <= last, let t = compactIndex(table), let size = PageSize(level: level),
           let n = CompactTable(store.heads.unsafelyUnwrapped[t], store.diffs.unsafelyUnwrapped[t]).leafCount(toggle: store.toggles.map { $0 + t }) {
            counts[size] += n
            return
        }
        let size = PageSize(level: level)
        var index = tableIndex(max(start, base), level: level)
        let final = tableIndex(min(last, tableLast), level: level)
        while index <= final {
            let entry = Descriptor(rawValue: store.load(table &* entriesPerTable &+ index))
            if entry.isTable {
                if level > 1 {
                    countLeaves(store, entry.tableNumber, level: level - 1, base: base &+ (UInt64(index) << shift),
                                start: start, last: last, &counts)
                }
            } else if entry.isLeaf, let size {
                counts[size] += 1
            }
            index += 1
        }
    }

    /// The leaf that holds `virt`, present or not; nil where there is no entry. Linux
    /// lookup_address: the walker's one-page descent. Always inlined, as `largeLeaf` and
    /// `translate` are: called out of line on a table inside an `inout` value (a VM's stage
    /// 2, a kernel's direct map), Swift copies the table struct to pass it.
    @inlinable @inline(__always)
    public func lookup(_ virt: VirtAddr) -> Leaf? { leaf(holding: virt, lowest: 1) }

    /// The leaf that holds `virt` when it is larger than 4K, present or not; nil when the
    /// address is mapped by a 4K entry or not at all. Reads no PTE table: what a split
    /// decision needs (Linux adjust_direct_map looks at the level only).
    @inlinable @inline(__always)
    public func largeLeaf(_ virt: VirtAddr) -> Leaf? { leaf(holding: virt, lowest: 2) }

    /// The leaf the one-page descent to `virt` ends on, looking no lower than `lowest`.
    @inlinable @inline(__always)
    func leaf(holding virt: VirtAddr, lowest: Int) -> Leaf? {
        let va = virt.rawValue, (table, base) = root(va), level = rootLevel
        let v = withReadOnly { Self.descend($0, table, level: level, base: base, address: va, lowest: lowest) }
        guard v.entry.isLeaf, let size = PageSize(level: v.level) else { return nil }
        return Leaf(virt: VirtAddr(v.address), size: size, descriptor: v.entry)
    }

    /// The physical address `virt` maps to through a present leaf, with the leaf.
    @inlinable @inline(__always)
    public func translate(_ virt: VirtAddr) -> (phys: PhysAddr, leaf: Leaf)? {
        guard let leaf = lookup(virt), leaf.descriptor.isPresentLeaf else { return nil }
        return (leaf.translate(virt), leaf)
    }

    /// Every leaf overlapping `[virt, virt + size)`, present or not, in address order.
    public func leaves(virt: VirtAddr, size: UInt64) throws(PageTableError) -> [Leaf] {
        var visitor = LeavesVisitor()
        try read(start: virt.rawValue, size: size, &visitor)
        return visitor.leaves
    }

    /// The entry at `level` on the path to `virt`, or nil when the path ends above that level.
    /// For exact-shape tests, as Hafnium's mm_test.cc reads tables level by level.
    public func descriptor(at virt: VirtAddr, level: Int) -> Descriptor? {
        var table = root(virt.rawValue).table
        var current = rootLevel
        while true {
            let e = entry(table: table, index: tableIndex(virt.rawValue, level: current))
            if current == level { return e }
            guard e.isTable else { return nil }
            table = e.tableNumber
            current -= 1
        }
    }
}
