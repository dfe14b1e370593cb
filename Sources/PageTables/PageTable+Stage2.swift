/// Removes every leaf overlapping a range whole, a large leaf partly inside included; tables
/// stay (they go with the whole table at teardown): a stage-2 zap, which never splits. Linux
/// arch/x86/kvm/mmu/tdp_mmu.c tdp_mmu_zap_leafs (leaf SPTEs only; a huge SPTE that overlaps
/// the range goes whole).
@usableFromInline struct ZapVisitor: PageTableVisitor {
    @usableFromInline var flags: VisitFlags { .leaf }
    @inlinable init() {}

    @inlinable mutating func visit(_ v: Visit, table: inout PageTable) throws(PageTableError) {
        if v.entry.isLeaf { table.store(.none, slot: v.slot, level: v.level) }
    }
}

extension PageTable {
    /// Zaps `[virt, virt + size)`: every leaf that overlaps it goes whole (no split); the
    /// tables stay.
    @inlinable
    public mutating func zap(virt: VirtAddr, size: UInt64) throws(PageTableError) {
        var visitor = ZapVisitor()
        try walk(start: virt.rawValue, size: size, &visitor)
    }

    /// Installs one leaf of `size` for the aligned block holding `virt`, mapping it to
    /// `phys` (the block's physical start), as a stage-2 fault does: tables are made on the
    /// way down, and a table or a not-present leaf in the leaf's place is replaced. One
    /// descent, no range walk. Linux kvm_tdp_mmu_map.
    @inlinable
    public mutating func installLeaf(virt: VirtAddr, phys: PhysAddr, size: PageSize, attributes: Attributes) throws(PageTableError) {
        let va = virt.rawValue & ~(size.bytes - 1)
        if phys.rawValue & (size.bytes - 1) != 0 { throw .unaligned(what: "physical address", value: phys.rawValue) }
        guard allows(size) else { throw .badRange(start: va, size: size.bytes) }  // no leaf of that size in this format
        try validate(start: va, size: size.bytes)
        defer { if forwarded > 0 { unforward(rootBase: rootBase(va), start: va, last: va &+ (size.bytes - 1)) } }
        var table = 0, level = rootLevel
        while level > size.level {
            let slot = table &* entriesPerTable &+ tableIndex(va, level: level)
            let entry = Descriptor(rawValue: load(slot))
            if entry.isTable {
                table = entry.tableNumber
            } else if level == 2 && size == .size4K && compactSplits && !entry.isLeaf,
                      case let index = tableIndex(va, level: 1), (phys.rawValue >> pageShift) & 511 == UInt64(index) {
                // A PTE table for a first 4K leaf: compact, the other 511 entries empty.
                if failAllocations { throw .outOfMemory }
                let first = Descriptor.leaf(PFN((phys.rawValue >> pageShift) - UInt64(index)), attributes).rawValue
                let child = newSparseCompact(first: first, stepShift: 0, present: index)
                store(.table(child), slot: slot, level: level)
                return
            } else {
                let child = try allocateTable()
                store(.table(child), slot: slot, level: level)
                table = child
            }
            level -= 1
        }
        store(.leaf(PFN(phys.rawValue >> pageShift), attributes), slot: table &* entriesPerTable &+ tableIndex(va, level: level), level: level)
    }
}
