import Hardware
import PageTables

/// A kernel page event an architecture may act on (s390: ptep_get_and_clear's export, the
/// content of swap I/O), delivered in order through `PageAccessibility.take`.
public enum UserMMEvent: Hashable, Sendable {
    /// A present PTE of a protected mm was cleared while its mapping still held the frame
    /// (ptep_get_and_clear, ptep_clear_flush: arch/s390/include/asm/pgtable.h).
    case pteCleared(pfn: UInt64)
    /// Frame `pfn` was written to swap slot `slot` (the device read it).
    case swapOut(pfn: UInt64, slot: Int)
    /// Swap slot `slot` was read into the new frame `pfn`, and the slot freed.
    case swapIn(slot: Int, pfn: UInt64)
    /// Swap slot `slot` was freed unread (its PTE zapped).
    case swapFreed(slot: Int)
    /// A new folio of `order` at `pfn`: the page allocator's page, zeroed (clear_page) or
    /// about to be filled.
    case allocated(pfn: UInt64, order: UInt8)
    /// wp_page_copy copied frame `from` into the new frame `to`.
    case copied(from: UInt64, to: UInt64)
}

/// What reclaim did with one anonymous page (shrink_folio_list for that folio).
public enum SwapOutOutcome: Outcome, Hashable {
    case swapped(slot: Int)
    /// Reclaim left the page where it is, and why.
    case kept(Why)
    /// The writeback hook failed: VM_BUG_ON_FOLIO with CONFIG_DEBUG_VM.
    case bug(Errno)

    public var kind: OutcomeKind {
        switch self {
        case .swapped: .success
        case .kept: .status
        case .bug: .fault
        }
    }
    public var description: String {
        switch self {
        case .swapped(let s): "swapped out to slot \(s)"
        case .kept(let why): "kept: \(why)"
        case .bug(let e): "kernel BUG at mm/page-writeback.c: VM_BUG_ON_FOLIO (arch_make_folio_accessible \(e))"
        }
    }
}

extension UserMM {
    /// Hands the pending page events to the platform, in order.
    public mutating func deliverEvents<A: PageAccessibility>(_ acc: inout A) {
        guard !events.isEmpty else { return }
        let e = events
        events = []
        acc.take(e, &self)
    }

    /// A present PTE of process `pi` mapping `pfn` is being cleared: on a protected mm the
    /// architecture exports the page (s390 ptep_get_and_clear, ptep_clear_flush).
    mutating func notePTECleared(_ pi: Int, _ pfn: UInt64) {
        if recordsEvents && processes[pi].protectedCount > 0 { events.append(.pteCleared(pfn: pfn)) }
    }

    /// mm->context.protected_count: a protected guest starts (+1) or ends (-1) on this mm.
    public mutating func changeProtectedCount(process pi: Int, by delta: Int) {
        processes[pi].protectedCount = max(0, processes[pi].protectedCount + delta)
    }

    /// The swap slot a process's PTE at `addr` holds, if it holds a swap entry.
    public func swapEntry(_ pi: Int, _ addr: UInt64) -> Int? {
        guard addr < Self.taskSize else { return nil }
        let e = processes[pi].pageTable.entry(holding: VirtAddr(addr))
        guard e.level == 1, let a = e.entry.annotation, a.family == .swapEntry else { return nil }
        return Int(a.payload)
    }

    mutating func allocateSwapSlot() -> Int {
        swapSlotsInUse += 1
        if let i = swapSlots.firstIndex(of: false) { swapSlots[i] = true; return i }
        swapSlots.append(true)
        return swapSlots.count - 1
    }

    mutating func freeSwapSlot(_ slot: Int) {
        swapSlots[slot] = false
        swapSlotsInUse -= 1
    }

    /// do_swap_page: a new exclusive anonymous folio read from the slot, mapped with
    /// vm_page_prot, writable in a VM_WRITE VMA (pte_mkwrite for an exclusive page) and
    /// dirty only for a write fault; the slot freed. mm/memory.c do_swap_page.
    mutating func doSwapPage(_ pi: Int, _ vi: Int, _ addr: UInt64, slot: Int, write: Bool) -> VMFaultResult {
        let v = processes[pi].vmas[vi]
        guard let pfn = newFolio(order: 0, flags: [.anon, .anonExclusive]) else { return .oom }
        stats.faults += 1
        stats.swapIns += 1
        folios[pfn]!.mapcount = 1
        freeSwapSlot(slot)
        if recordsEvents { events.append(.swapIn(slot: slot, pfn: pfn)) }
        let page = addr & ~(pageBytes - 1)
        try? processes[pi].pageTable.setEntry(virt: VirtAddr(page), level: 1, .none)
        // An exclusive page in a VM_WRITE VMA is mapped writable even on a read fault,
        // dirty only on a write one.
        var a = v.pageProt
        if v.flags.contains(.write) { a.insert(.writable) }
        if write { a.insert(.dirty) }
        setLeaf(pi, page, pfn, .size4K, a)
        return .handled
    }

    /// Frees the swap entries of process `pi` in [start, end) (zap_pte_range's
    /// free_swap_and_cache for non-present entries).
    mutating func zapSwapEntries(_ pi: Int, _ start: UInt64, _ end: UInt64) {
        guard swapSlotsInUse > 0 else { return }
        var va = start & ~(pageBytes - 1)
        while va < end {
            if let slot = swapEntry(pi, va) {
                freeSwapSlot(slot)
                if recordsEvents { events.append(.swapFreed(slot: slot)) }
                try? processes[pi].pageTable.setEntry(virt: VirtAddr(va), level: 1, .none)
            }
            va += pageBytes
        }
    }

    /// Reclaim of the anonymous page process `pi` maps at `addr`, as shrink_folio_list
    /// takes one folio: a folio another task has locked is skipped, a maybe-pinned one kept; a large folio is split
    /// (the model's swap has no large entries, so folio_alloc_swap's fallback always
    /// applies); the folio goes to the swap cache; try_to_unmap replaces the PTE by a swap
    /// entry (the model unmaps a folio mapped once only); pageout writes it
    /// (__folio_start_writeback with the design's hook, the device's read); the folio leaves
    /// the swap cache and is freed. mm/vmscan.c shrink_folio_list, mm/rmap.c
    /// try_to_unmap_one, mm/page_io.c.
    public mutating func swapOut<A: PageAccessibility>(process pi: Int, addr: UInt64, _ acc: inout A) -> SwapOutOutcome {
        let page = addr & ~(pageBytes - 1)
        guard let vi = processes[pi].vmaIndex(page), processes[pi].vmas[vi].isAnonymous, !processes[pi].vmas[vi].flags.contains(.shared) else {
            return .kept("not a private anonymous page (the model swaps those only)")
        }
        guard let leaf = processes[pi].pageTable.lookup(VirtAddr(page)), leaf.descriptor.attributes.contains(.present),
              !leaf.descriptor.attributes.contains(.special), var h = folioHead(leaf.translate(VirtAddr(page)).rawValue >> pageShift) else {
            return .kept("no page mapped there")
        }
        if folios[h]!.flags.contains(.locked) { return .kept("folio locked by another task (folio_trylock failed)") }
        if folios[h]!.maybeDMAPinned { return .kept("folio_maybe_dma_pinned: reclaim keeps a pinned anonymous folio") }
        if folios[h]!.order > 0 {
            if splitFolio(pi, page, h) != nil { return .kept("split_folio failed: the large folio has references beyond its mappings, or mappings in other processes") }
            h = leaf.translate(VirtAddr(page)).rawValue >> pageShift
        }
        if folios[h]!.mapcount != 1 { return .kept("mapped more than once (the model unmaps single mappings only)") }
        // add_to_swap: a slot, the swap cache's reference, dirty.
        let slot = allocateSwapSlot()
        folios[h]!.flags.formUnion([.swapCache, .dirty])
        folios[h]!.refcount += 1
        // try_to_unmap: the PTE cleared (exported on a protected mm), a swap entry in its place.
        let pfn = h
        notePTECleared(pi, pfn)
        try? processes[pi].pageTable.setEntry(virt: VirtAddr(page), level: 1, .annotated(Annotation(.swapEntry, payload: UInt64(slot))))
        folios[h]!.mapcount -= 1
        put(h)
        deliverEvents(&acc)
        // pageout
        let w = writeback(pfn: pfn, dirtyPTE: false, &acc)
        if case .bug(let e) = w { return .bug(e) }
        if recordsEvents { events.append(.swapOut(pfn: pfn, slot: slot)) }
        stats.swapOuts += 1
        // __remove_mapping: out of the swap cache, freed.
        folios[h]!.flags.remove(.swapCache)
        put(h)
        return .swapped(slot: slot)
    }

    /// split_folio of the large folio with head `h` that process `pi` maps at `addr`: a PMD
    /// mapping is split first (an anonymous one into 512 PTEs, a file one zapped); the folio
    /// is refused (-EBUSY) when it holds references beyond its mappings and the page cache's
    /// (a pin, a GUP reference: can_split_folio); otherwise each page becomes a small folio,
    /// mapped as it was, a page-cache page staying in the cache, an unmapped anonymous page
    /// freed. The model splits only a folio whose mappings are all this process's PTEs.
    /// mm/huge_memory.c __folio_split.
    public mutating func splitFolio(_ pi: Int, _ addr: UInt64, _ h: UInt64) -> Errno? {
        guard let f = folios[h], f.order > 0 else { return nil }
        if let leaf = processes[pi].pageTable.lookup(VirtAddr(addr)), leaf.size == .size2M { splitHugePMD(pi, addr) }
        guard let g = folios[h] else { return nil }  // a zapped file PMD was the last reference
        let cache: Int32 = g.flags.contains(.pageCache) ? 1 : 0
        guard g.pincount == 0, g.refcount == g.mapcount + cache else { return .EBUSY }
        // Which pages this process maps (the PTEs of the 2M block around addr in its VMA).
        var mapped = [Bool](repeating: false, count: 512)
        var found: Int32 = 0
        let block = addr & ~(PageSize.size2M.bytes - 1)
        for i in 0..<512 {
            let va = block + UInt64(i) << pageShift
            if let leaf = processes[pi].pageTable.lookup(VirtAddr(va)), leaf.size == .size4K,
               leaf.descriptor.attributes.contains(.present), leaf.descriptor.frame.rawValue == h + UInt64(i) {
                mapped[i] = true
                found += 1
            }
        }
        guard found == g.mapcount else { return .EBUSY }
        // The file and page index of a page-cache folio's head, found in one scan.
        var owner: (file: Int, index: UInt64)?
        for fi in files.indices where cache == 1 {
            if let e = files[fi].pages.first(where: { $0.value == h }) { owner = (fi, e.key); break }
        }
        for i in 0..<512 {
            let pfn = h + UInt64(i)
            if cache == 1 {
                folios[pfn] = Folio(order: 0, refcount: 1 + (mapped[i] ? 1 : 0), mapcount: mapped[i] ? 1 : 0, pincount: 0, flags: g.flags)
                if let (fi, hi) = owner { files[fi].pages[hi + UInt64(i)] = pfn }
            } else if mapped[i] {
                folios[pfn] = Folio(order: 0, refcount: 1, mapcount: 1, pincount: 0, flags: g.flags)
            } else {
                folios[pfn] = nil
                allocator.free(pfn, order: 0)
            }
        }
        stats.folioSplits += 1
        return nil
    }

    /// A write through the entry mapping `addr` that no fault saw (a guest's, through KVM):
    /// the entry and a page-cache folio dirty.
    public mutating func markDirty(process pi: Int, addr: UInt64) {
        guard let leaf = processes[pi].pageTable.lookup(VirtAddr(addr)), leaf.descriptor.attributes.contains(.present),
              !leaf.descriptor.attributes.contains(.dirty) else { return }
        setLeaf(pi, leaf.virt.rawValue, leaf.descriptor.frame.rawValue, leaf.size, leaf.descriptor.attributes.union(.dirty))
        if let h = folioHead(leaf.translate(VirtAddr(addr)).rawValue >> pageShift), folios[h]!.flags.contains(.pageCache) { folios[h]!.flags.insert(.dirty) }
    }

    /// The pending page events, taken (for a caller that handles them itself).
    public mutating func takeEvents() -> [UserMMEvent] {
        let e = events
        events = []
        return e
    }

    /// s390_enable_sie for process `pi` (KVM_CREATE_VM on s390): the mm gets page-status
    /// table entries, and thp_split_mm clears VM_HUGEPAGE on every VMA, splits every huge
    /// PMD (the folios stay large, now mapped by PTEs) and turns THP off for the mm's future
    /// mappings. arch/s390/mm/gmap.c (6.18).
    public mutating func enableSIE(process pi: Int) {
        guard !processes[pi].hasPgste else { return }
        processes[pi].hasPgste = true
        for vi in processes[pi].vmas.indices {
            processes[pi].vmas[vi].flags.remove(.hugepage)
            let v = processes[pi].vmas[vi]
            guard let leaves = try? processes[pi].pageTable.leaves(virt: VirtAddr(v.start), size: v.end - v.start) else { continue }
            for leaf in leaves where leaf.size == .size2M { splitHugePMD(pi, leaf.virt.rawValue) }
        }
    }
}
