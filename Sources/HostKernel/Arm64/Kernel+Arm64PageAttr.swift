import Hardware
import PageTables

/// arm64's set_memory_* and set_direct_map_* (Linux arch/arm64/mm/pageattr.c). The `blocks`
/// and `pte` linear maps follow Linux 6.12 (apply_to_page_range, which refuses a block);
/// `bbml2-split` follows 6.18 (split_kernel_leaf_mapping, then a walk that changes whole
/// blocks in place).
extension Kernel {
    /// A TLB invalidator for the page-table writes of update_range_prot: it sends nothing,
    /// because __change_memory_common flushes the whole range afterwards (and the
    /// set_direct_map_*_noflush callers flush themselves).
    struct DeferredFlush: TLBInvalidator {
        mutating func invalidate(virt: UInt64, level: Int) {}
    }

    /// change_memory_common (set_memory_ro/rw/nx/x): the range must lie in one vmalloc()
    /// area (VM_ALLOC, and in 6.18 not VM_ALLOW_HUGE_VMAP); anything else, the linear map
    /// and vmap() areas (VM_MAP) included, is -EINVAL.
    mutating func arm64ChangeMemoryCommon(_ address: UInt64, _ function: String) -> KernelStatus {
        log("\(function): \(hex(address)) is not in a vmalloc() area (find_vm_area: VM_ALLOC only)")
        return .error(.EINVAL)
    }

    /// __change_memory_common: update_range_prot over `[start, start + pages·4K)`, then
    /// flush_tlb_kernel_range (6.12: always; 6.13+: not when the change only sets VALID).
    mutating func arm64ChangeRange(_ start: UInt64, pages: Int, set: Attributes, clear: Attributes, flush: Bool) -> KernelStatus {
        let status = arm64UpdateRangeProt(start, pages: pages, set: set, clear: clear)
        let onlyMakesValid = set == [.present] && clear.isEmpty
        if flush && !(config.linearMap == .bbml2Split && onlyMakesValid) { flushTLBKernelRange(start, pages: pages) }
        return status
    }

    /// update_range_prot: 6.12's apply_to_page_range WARNs and returns -EINVAL at the first
    /// block in the range (what it changed before stays changed); 6.18 first splits the
    /// range's ends (split_kernel_leaf_mapping), then changes whole blocks in place.
    /// Permission and valid-bit changes need no break-before-make (Arm ARM D8.16.1).
    mutating func arm64UpdateRangeProt(_ start: UInt64, pages: Int, set: Attributes, clear: Attributes) -> KernelStatus {
        let end = start + UInt64(pages) * pageBytes
        if config.linearMap == .bbml2Split, let error = splitKernelLeafMapping(start, end) { return .error(error) }
        var tlb = DeferredFlush()
        var va = start
        while va < end {
            let (level, e) = pageTable.entry(holding: VirtAddr(va))
            let size = PageSize(level: level)?.bytes ?? pageBytes
            let base = va & ~(size - 1)
            guard e.isLeaf else { va = base + size; continue }  // a hole: nothing to change
            if level > 1 && (config.linearMap != .bbml2Split || base < start || base + size > end) {
                log("WARN: apply_to_page_range met a \(PageSize(level: level)!) block at \(hex(base))")
                return .error(.EINVAL)
            }
            var a = e.attributes.union(set)
            a.subtract(clear)
            do { try pageTable.replace(virt: VirtAddr(base), level: level, with: e.with(attributes: a), &tlb) } catch {
                return .error(.EINVAL)
            }
            va = base + size
        }
        return .ok
    }

    /// split_kernel_leaf_mapping (6.18, BBML2_NOABORT): at `start` and at `end`, unless
    /// aligned, splits the leaf holding the address down until the address is a leaf
    /// boundary: a 1G block into 512 contiguous 2M blocks, a contiguous 2M run loses its
    /// contiguous bit (all 16 entries), a 2M block into 512 contiguous PTEs, a contiguous PTE
    /// run loses its bit. No break-before-make and no TLB invalidation: BBML2 lets the old,
    /// larger TLB entries live until the caller's flush. arch/arm64/mm/mmu.c.
    /// A table allocation that fails is -ENOMEM, and nothing more is split.
    mutating func splitKernelLeafMapping(_ start: UInt64, _ end: UInt64) -> Errno? {
        var tlb = DeferredFlush()
        for address in [start, end] where address < directMapEnd || isVmalloc(address) {
            var (level, e) = pageTable.entry(holding: VirtAddr(address))
            while e.isLeaf, level > 1, address & ((1 << levelShift(level)) - 1) != 0 {
                clearContiguousRun(around: address, level: level, &tlb)
                let children = e.attributes.union(.contiguous)
                do {
                    try pageTable.splitBlock(virt: VirtAddr(address), level: level, &tlb, breakBeforeMake: false, childAttributes: children)
                } catch {
                    stats.allocationFailures += 1
                    return .ENOMEM
                }
                countDirectMapSplit(PageSize(level: level)!)
                (level, e) = pageTable.entry(holding: VirtAddr(address))
            }
            if e.isLeaf, e.attributes.contains(.contiguous), address & ((1 << levelShift(level)) * contiguousEntries - 1) != 0 {
                clearContiguousRun(around: address, level: level, &tlb)
            }
        }
        return nil
    }

    /// Clears the contiguous bit on the 16 entries of the run holding `address` at `level`
    /// (split_contpmd / split_contpte), in place.
    mutating func clearContiguousRun(around address: UInt64, level: Int, _ tlb: inout DeferredFlush) {
        let entry = UInt64(1) << levelShift(level), first = address & ~(entry * contiguousEntries - 1)
        for i in 0..<contiguousEntries {
            let (l, e) = pageTable.entry(holding: VirtAddr(first + i * entry))
            guard l == level, e.isLeaf, e.attributes.contains(.contiguous) else { continue }
            try? pageTable.replace(virt: VirtAddr(first + i * entry), level: level, with: e.with(attributes: e.attributes.subtracting(.contiguous)),
                                   &tlb, breakBeforeMake: false)
        }
    }

    /// set_direct_map_invalid_noflush / _default_noflush on arm64: nothing (returning 0)
    /// unless can_set_direct_map(); else update_range_prot on the page, no flush.
    mutating func arm64SetDirectMapNoflush(_ address: UInt64, valid: Bool) -> KernelStatus {
        guard config.linearMap.canSetDirectMap else {
            log("can_set_direct_map() is false: nothing to do")
            return .ok
        }
        let status = valid ? arm64UpdateRangeProt(address, pages: 1, set: [.present, .writable], clear: [])
            : arm64UpdateRangeProt(address, pages: 1, set: [], clear: .present)
        if status == .ok { noteUnflushed(address) }
        return status
    }
}

extension Kernel {
    /// __change_memory_common(start, size, set_mask, clear_mask): update_range_prot, then
    /// flush_tlb_kernel_range (6.13+: not when the change only sets VALID). The arm64 code
    /// a realm's __set_memory_enc_dec calls twice. arch/arm64/mm/pageattr.c.
    public mutating func changeMemoryCommon(_ start: UInt64, pages: Int, set: Attributes, clear: Attributes) -> KernelStatus {
        arm64ChangeRange(start, pages: pages, set: set, clear: clear, flush: true)
    }

    /// __is_lm_address: a linear-map address of memory the kernel mapped.
    public func isLinearMapAddress(_ va: UInt64) -> Bool { va >= layout.pageOffset && va < directMapEnd }

    /// vmalloc_to_page's physical address for a vmalloc address, nil where nothing is mapped.
    public func vmallocToPhys(_ va: UInt64) -> UInt64? {
        guard isVmalloc(va), let leaf = pageTable.lookup(VirtAddr(va)), leaf.descriptor.isLeaf else { return nil }
        return (leaf.descriptor.frame.rawValue << pageShift) + (va - leaf.virt.rawValue)
    }
}
