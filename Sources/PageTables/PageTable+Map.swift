/// Installs leaves for a range, each as large as alignment and the allowed sizes permit.
/// Linux arch/arm64/kvm/hyp/pgtable.c stage2_map_walker: a table wholly covered by a leaf
/// that fits is replaced and freed; a large leaf partly covered is split first.
@usableFromInline struct MapVisitor: PageTableVisitor {
    @usableFromInline let start: UInt64
    @usableFromInline let last: UInt64
    /// Physical minus virtual, modulo 2^64.
    @usableFromInline let delta: UInt64
    @usableFromInline let attributes: Attributes
    @usableFromInline let sizes: [PageSize]
    /// Descend into existing tables instead of replacing them (phys_pmd_init at boot).
    @usableFromInline let reuseTables: Bool
    @usableFromInline var tablesAllocated = 0

    @usableFromInline var flags: VisitFlags { [.leaf, .tablePre] }

    @inlinable init(start: UInt64, last: UInt64, delta: UInt64, attributes: Attributes, sizes: [PageSize], reuseTables: Bool) {
        self.start = start
        self.last = last
        self.delta = delta
        self.attributes = attributes
        self.sizes = sizes
        self.reuseTables = reuseTables
    }

    @inlinable func leafFits(_ v: Visit) -> Bool {
        guard let size = PageSize(level: v.level), sizes.contains(size) else { return false }
        return v.isCovered(start: start, last: last) && (v.address &+ delta) & (size.bytes - 1) == 0
    }

    @inlinable mutating func visit(_ v: Visit, table: inout PageTable) throws(PageTableError) {
        if leafFits(v) {
            if v.kind == .tablePre && reuseTables { return }
            table.store(.leaf(PFN((v.address &+ delta) >> pageShift), attributes), slot: v.slot, level: v.level)
            return
        }
        guard v.kind == .leaf else { return }
        if v.entry.isLeaf {
            try table.splitLeaf(slot: v.slot, level: v.level)
        } else {
            let child = try table.allocateTable()
            table.store(.table(child), slot: v.slot, level: v.level)
        }
        tablesAllocated += 1
    }
}

/// Removes every leaf in a range; tables wholly inside it are freed, large leaves partly
/// inside it are split first. Linux kvm_pgtable stage2_unmap_walker.
@usableFromInline struct UnmapVisitor: PageTableVisitor {
    @usableFromInline let start: UInt64
    @usableFromInline let last: UInt64
    @usableFromInline var flags: VisitFlags { [.leaf, .tablePre] }
    @inlinable init(start: UInt64, last: UInt64) {
        self.start = start
        self.last = last
    }

    @inlinable mutating func visit(_ v: Visit, table: inout PageTable) throws(PageTableError) {
        if v.isCovered(start: start, last: last) {
            if !v.entry.isNone { table.store(.none, slot: v.slot, level: v.level) }
        } else if v.entry.isLeaf {
            try table.splitLeaf(slot: v.slot, level: v.level)
        }
    }
}

extension PageTable {
    /// Maps `[virt, virt + size)` to `[phys, phys + size)` with `attributes`, replacing what was
    /// there. Each leaf is the largest of `sizes` (default: all the format allows) whose
    /// alignment both addresses share and that fits the range.
    ///
    /// With `reuseTables`, an existing table is descended into rather than replaced by a
    /// large leaf, as x86 phys_pud_init/phys_pmd_init (arch/x86/mm/init_64.c) do.
    @inlinable
    public mutating func map(
        virt: VirtAddr, phys: PhysAddr, size: UInt64, attributes: Attributes,
        sizes: [PageSize]? = nil, reuseTables: Bool = false
    ) throws(PageTableError) {
        if phys.rawValue & (pageBytes - 1) != 0 { throw .unaligned(what: "physical address", value: phys.rawValue) }
        var visitor = MapVisitor(
            start: virt.rawValue, last: virt.rawValue &+ (size &- 1), delta: phys.rawValue &- virt.rawValue,
            attributes: attributes, sizes: Self.allowedSizes(sizes ?? format.leafSizes, format), reuseTables: reuseTables)
        if !visitor.sizes.contains(.size4K) {
            let smallest = visitor.sizes.min() ?? .size1G
            for (what, value) in [("address", virt.rawValue), ("physical address", phys.rawValue), ("size", size)]
            where value & (smallest.bytes - 1) != 0 {
                throw .unaligned(what: what, value: value)
            }
        }
        try walk(start: virt.rawValue, size: size, &visitor)
    }

    /// `sizes` less those `format` does not allow, without a new array when all are allowed
    /// (a stage-2 fault maps one leaf at a time).
    @inlinable static func allowedSizes(_ sizes: [PageSize], _ format: PageTableFormat) -> [PageSize] {
        sizes.allSatisfy(format.allows) ? sizes : sizes.filter(format.allows)
    }

    /// Unmaps `[virt, virt + size)`.
    @inlinable
    public mutating func unmap(virt: VirtAddr, size: UInt64) throws(PageTableError) {
        var visitor = UnmapVisitor(start: virt.rawValue, last: virt.rawValue &+ (size &- 1))
        try walk(start: virt.rawValue, size: size, &visitor)
    }
}
