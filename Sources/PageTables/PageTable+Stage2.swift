/// Removes every leaf overlapping a range whole, a large leaf partly inside included; tables
/// stay (they go with the whole table at teardown): a stage-2 zap, which never splits. Linux
/// arch/x86/kvm/mmu/tdp_mmu.c tdp_mmu_zap_leafs (leaf SPTEs only; a huge SPTE that overlaps
/// the range goes whole).
@usableFromInline struct ZapVisitor: PageTableVisitor {
    @usableFromInline var flags: VisitFlags { .leaf }
    @inlinable init() {}

    @inlinable mutating func visit(_ v: Visit, table: inout PageTable) throws(PageTableError) {
        if v.entry.isLeaf { table.store(.none, slot: v.slot, level: v.level, replacing: v.entry) }
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
        noteTouched(va, va &+ (size.bytes - 1))
        defer { if forwarded > 0 { unforward(rootBase: rootBase(va), start: va, last: va &+ (size.bytes - 1)) } }
        var table = root(va).table, level = rootLevel
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

extension PageTable {
    /// Writes a not-present entry (an annotation, or none) at `level` for the block holding
    /// `virt`, making tables on the way down; whatever held that place (a leaf, a table and
    /// what is below it) is replaced. Linux arch/arm64/kvm/hyp/pgtable.c
    /// kvm_pgtable_stage2_set_owner; TF-RMM lib/s2tt s2tte_write.
    public mutating func setEntry(virt: VirtAddr, level: Int, _ entry: Descriptor) throws(PageTableError) {
        precondition(!entry.isLeaf && !entry.isTable, "setEntry writes not-present entries; installLeaf writes leaves")
        guard let size = PageSize(level: level) else { throw .badRange(start: virt.rawValue, size: 0) }
        let va = virt.rawValue & ~(size.bytes - 1)
        try validate(start: va, size: size.bytes)
        noteTouched(va, va &+ (size.bytes - 1))
        defer { if forwarded > 0 { unforward(rootBase: rootBase(va), start: va, last: va &+ (size.bytes - 1)) } }
        var table = root(va).table, l = rootLevel
        while l > level {
            let slot = table &* entriesPerTable &+ tableIndex(va, level: l)
            let e = Descriptor(rawValue: load(slot))
            if e.isTable {
                table = e.tableNumber
            } else {
                let child = try allocateTable()
                store(.table(child), slot: slot, level: l)
                table = child
            }
            l -= 1
        }
        store(entry, slot: table &* entriesPerTable &+ tableIndex(va, level: l), level: l)
    }

    /// The entry a walk to `virt` ends on (the first that is not a table) and its level:
    /// a leaf, an annotated entry, or none.
    public func entry(holding virt: VirtAddr) -> (level: Int, entry: Descriptor) {
        let va = virt.rawValue, (table, base) = root(va), level = rootLevel
        let v = withReadOnly { Self.descend($0, table, level: level, base: base, address: va) }
        return (v.level, v.entry)
    }
}
