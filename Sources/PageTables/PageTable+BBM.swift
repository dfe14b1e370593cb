/// Where break-before-make sends the TLB invalidation between its two writes: the
/// invalidation of the old entry's scope (the address and the entry's level).
public protocol TLBInvalidator {
    mutating func invalidate(virt: UInt64, level: Int)
}

/// One step of a replacement, as `PageTable.replaceLog` records it.
public enum ReplaceStep: Hashable, Sendable {
    /// The entry in `slot` became `entry`.
    case write(slot: Int, entry: Descriptor)
    /// The TLB invalidation at `virt`, for an entry at `level`.
    case invalidate(virt: UInt64, level: Int)
}

extension PageTable {
    /// Whether replacing `old` by `new` needs break-before-make on this format: both valid
    /// (a present leaf or a table) and the output address, the entry kind (leaf or table, so
    /// the block size) or the memory type changes. Permission and software-bit changes are
    /// written in place. Arm ARM D8.16.1; Linux arch/arm64/kvm/hyp/pgtable.c
    /// stage2_map_walker_try_leaf (which is stricter: it breaks for anything but SW bits).
    public func needsBreakBeforeMake(_ old: Descriptor, _ new: Descriptor) -> Bool {
        guard format.requiresBreakBeforeMake else { return false }
        let live: (Descriptor) -> Bool = { $0.isTable || $0.isPresentLeaf }
        guard live(old), live(new) else { return false }
        if old.isTable || new.isTable { return old.rawValue != new.rawValue }
        return old.frame != new.frame || old.attributes.memoryType != new.attributes.memoryType
    }

    /// Replaces the entry at `level` that holds `virt` by `new`, the one place a live entry
    /// changes: when the format needs it, break-before-make (an invalid entry, the TLB
    /// invalidation at the old entry's scope, then `new`), counted; otherwise a write, and
    /// an invalidation when a live entry changed. A table replaced is freed with what is
    /// below it. Linux arch/arm64/kvm/hyp/pgtable.c stage2_try_break_pte/stage2_make_pte;
    /// Hafnium src/mm.c mm_replace_entry.
    ///
    /// With `breakBeforeMake` false (FEAT_BBM level 2 without abort, as Linux 6.18's
    /// split_kernel_leaf_mapping relies on) the entry is written in place and nothing is
    /// invalidated: the caller's later flush covers it.
    public mutating func replace<I: TLBInvalidator>(
        virt: VirtAddr, level: Int, with new: Descriptor, _ tlb: inout I, breakBeforeMake: Bool = true
    ) throws(PageTableError) {
        let va = virt.rawValue & ~((1 << levelShift(level)) - 1)
        try validate(start: va, size: pageBytes)
        let (table, base) = root(va), top = rootLevel
        let v = withReadOnly { Self.descend($0, table, level: top, base: base, address: va, lowest: level) }
        guard v.level == level else { throw .badRange(start: va, size: 1 << levelShift(level)) }  // no entry at that level yet
        noteTouched(va, va &+ ((1 << levelShift(level)) - 1))
        let old = v.entry
        if !breakBeforeMake {
            if old.isTable && !(new.isTable && new.tableNumber == old.tableNumber) {
                store(new, slot: v.slot, level: level)
            } else {
                write(v.slot, new.rawValue)
                if old.isLeaf { leafCounts[PageSize(level: level)!] -= 1 }
                if new.isLeaf { leafCounts[PageSize(level: level)!] += 1 }
            }
            replaceLog?.append(.write(slot: v.slot, entry: new))
            return
        }
        if needsBreakBeforeMake(old, new) {
            // The new entry's own subtree (a split's table) was built unlinked; only the old
            // entry's goes. A new table must not be freed by the break.
            if old.isTable && !(new.isTable && new.tableNumber == old.tableNumber) {
                store(.none, slot: v.slot, level: level)
            } else {
                write(v.slot, 0)
                if old.isLeaf { leafCounts[PageSize(level: level)!] -= 1 }
            }
            replaceLog?.append(.write(slot: v.slot, entry: .none))
            invalidate(&tlb, va, level)
            write(v.slot, new.rawValue)
            replaceLog?.append(.write(slot: v.slot, entry: new))
            if new.isLeaf { leafCounts[PageSize(level: level)!] += 1 }
            breakBeforeMakes += 1
            return
        }
        store(new, slot: v.slot, level: level)
        replaceLog?.append(.write(slot: v.slot, entry: new))
        if old.isTable || old.isPresentLeaf, old != new { invalidate(&tlb, va, level) }
    }

    private mutating func invalidate<I: TLBInvalidator>(_ tlb: inout I, _ va: UInt64, _ level: Int) {
        replaceLog?.append(.invalidate(virt: va, level: level))
        tlb.invalidate(virt: va, level: level)
    }

    /// Replaces the block at `level` holding `virt` by an empty table, through `replace`
    /// (break-before-make where the format needs it): the rest of the block is dropped and
    /// mapped again lazily. Linux arch/arm64/kvm/hyp/pgtable.c stage2_map_walk_leaf, after
    /// stage2_map_walker_try_leaf's -E2BIG (a page mapped or annotated inside a block).
    public mutating func breakBlock<I: TLBInvalidator>(virt: VirtAddr, level: Int, _ tlb: inout I) throws(PageTableError) {
        let va = virt.rawValue & ~((1 << levelShift(level)) - 1)
        try validate(start: va, size: pageBytes)
        let (table, base) = root(va), top = rootLevel
        let v = withReadOnly { Self.descend($0, table, level: top, base: base, address: va, lowest: level) }
        guard v.level == level, v.entry.isPresentLeaf, level > 1 else { throw .badRange(start: va, size: 1 << levelShift(level)) }
        try replace(virt: virt, level: level, with: .table(try allocateTable()), &tlb)
    }

    /// Splits the block at `level` holding `virt` into a table of 512 entries one level down
    /// with the same frames and attributes, built unlinked and installed by `replace` (so
    /// with break-before-make where the format needs it). Linux arch/arm64/kvm/hyp/pgtable.c
    /// kvm_pgtable_stage2_split; Hafnium mm_populate_table_pte.
    /// `childAttributes` gives the new entries other attributes (arm64 sets the contiguous
    /// bit on them); `breakBeforeMake` is passed to `replace`.
    public mutating func splitBlock<I: TLBInvalidator>(
        virt: VirtAddr, level: Int, _ tlb: inout I, breakBeforeMake: Bool = true, childAttributes: Attributes? = nil
    ) throws(PageTableError) {
        let va = virt.rawValue & ~((1 << levelShift(level)) - 1)
        try validate(start: va, size: pageBytes)
        let (table, base) = root(va), top = rootLevel
        let v = withReadOnly { Self.descend($0, table, level: top, base: base, address: va, lowest: level) }
        guard v.level == level, v.entry.isLeaf, level > 1 else { throw .badRange(start: va, size: 1 << levelShift(level)) }
        let child = try allocateTable()
        let step = PageSize(level: level - 1)!.pages, attrs = childAttributes ?? v.entry.attributes
        for i in 0..<entriesPerTable {
            entries[child * entriesPerTable + i] = Descriptor.leaf(PFN(v.entry.frame.rawValue + UInt64(i) * step), attrs).rawValue
        }
        leafCounts[PageSize(level: level - 1)!] += entriesPerTable
        try replace(virt: virt, level: level, with: .table(child), &tlb, breakBeforeMake: breakBeforeMake)
    }
}
