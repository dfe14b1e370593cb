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
    /// The leaves of each size over `[virt, virt + size)`, counted by a walk.
    public func leafCounts(virt: VirtAddr, size: UInt64) throws(PageTableError) -> LeafCounts {
        var visitor = LeafCountVisitor()
        try read(start: virt.rawValue, size: size, &visitor)
        return visitor.counts
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
