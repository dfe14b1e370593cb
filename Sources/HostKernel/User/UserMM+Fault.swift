import Hardware
import PageTables

/// Which of the mm/memory.c insert helpers a driver calls.
public enum PFNInsert: String, CaseIterable, Hashable, Sendable {
    /// vmf_insert_pfn_prot(vma, addr, pfn, prot).
    case pfnProt = "vmf_insert_pfn_prot"
    /// vmf_insert_pfn: vm_page_prot.
    case pfn = "vmf_insert_pfn"
    /// vmf_insert_mixed: vm_page_prot, VM_MIXEDMAP.
    case mixed = "vmf_insert_mixed"
    /// vmf_insert_mixed_prot (5.6 to 6.3, 574c5b3d0e4c; removed by "mm: remove unused vmf_insert_mixed_prot()").
    case mixedProt = "vmf_insert_mixed_prot"

    public var takesProt: Bool { self == .pfnProt || self == .mixedProt }
}

extension UserMM {
    @inline(__always) func leafPhys(_ pfn: UInt64) -> PhysAddr { PhysAddr(pfn << pageShift) }

    /// Whether `pfn` is RAM this kernel manages (pfn_valid).
    public func pfnValid(_ pfn: UInt64) -> Bool { ram.contains { $0.contains(pfn << pageShift) } }

    /// handle_mm_fault for a user access at `addr`: the VMA and access checks of
    /// arch/x86/mm/fault.c (access_error), then the PMD or PTE fault: a write to a read-only
    /// entry is do_wp_page (reuse or copy), a missing entry the VMA's fault handler.
    /// `inaccessible` says which frames the platform keeps from the host (for the
    /// `unmapped` design's SIGBUS). Linux mm/memory.c.
    public mutating func handleFault(process pi: Int, addr: UInt64, write: Bool, inaccessible: (UInt64) -> Bool = { _ in false }) -> VMFaultResult {
        guard let vi = processes[pi].vmaIndex(addr) else { return .sigsegv }
        let v = processes[pi].vmas[vi]
        if write ? !v.flags.contains(.write) : v.flags.isDisjoint(with: [.read, .write, .exec]) { return .sigsegv }
        if swapSlotsInUse > 0, let slot = swapEntry(pi, addr) { return doSwapPage(pi, vi, addr, slot: slot, write: write) }
        if let leaf = processes[pi].pageTable.lookup(VirtAddr(addr)) {
            let a = leaf.descriptor.attributes
            if a.contains(.present) && (!write || a.contains(.writable)) { return .handled }  // nothing to do
            if !a.contains(.present) {
                // A PROT_NONE entry in an accessible VMA (NUMA hinting): do_numa_page's pte_modify with vm_page_prot.
                setLeaf(pi, leaf.virt.rawValue, leaf.descriptor.frame.rawValue, leaf.size, PgProt.pteModify(a, v.pageProt, mask: config.chgMask))
                return handleFault(process: pi, addr: addr, write: write, inaccessible: inaccessible)
            }
            stats.faults += 1
            if leaf.size != .size4K { return hugeWriteProtectFault(pi, vi, addr, leaf, inaccessible) }
            return doWPPage(pi, vi, addr, leaf)
        }
        stats.faults += 1
        switch v.backing {
        case .anonymous: return doAnonymousPage(pi, vi, addr, write)
        case .file(let f): return fileFault(pi, vi, addr, write, f)
        case .guestMemory(_, let first, let pages):
            guard v.index(addr) < pages else { return .sigbus }  // past the memfd's end
            let pfn = first + v.index(addr)
            if config.inaccessibleCheck == .unmapped && inaccessible(pfn) { return .sigbus }  // kvm_gmem_fault on a private page
            return mapCachePage(pi, vi, addr, pfn, write: write)
        case .ttm(let b): return ttmFault(pi, vi, addr, b)
        case .vvar: return vvarFault(pi, vi, addr)
        case .dmaCoherent: return .sigbus  // remap_pfn_range mapped it all; no ->fault
        case .pfnmap(let first):
            let pfn = first + v.index(addr)
            if v.flags.contains(.hugepage), let r = insertPMD(pi, addr, pfn: pfn & ~511, prot: v.pageProt, checkAligned: pfn & 511 == UInt64((addr >> pageShift) & 511)) {
                return okIfInserted(r)
            }
            return okIfInserted(insert(.pfn, process: pi, addr: addr, pfn: pfn, prot: v.pageProt))
        }
    }

    /// Writes a leaf (a new entry or a changed one).
    mutating func setLeaf(_ pi: Int, _ va: UInt64, _ pfn: UInt64, _ size: PageSize, _ a: Attributes) {
        try? processes[pi].pageTable.installLeaf(virt: VirtAddr(va), phys: leafPhys(pfn), size: size, attributes: a)
    }

    /// maybe_mkwrite(pte_mkdirty(entry)) for a write fault.
    func writeFaultEntry(_ base: Attributes, _ v: VMA) -> Attributes {
        var a = base.union(.dirty)
        if v.flags.contains(.write) { a.insert(.writable) }
        return a
    }

    /// Whether the aligned 2M block holding `addr` lies inside VMA `v` (thp_vma_suitable_order).
    func pmdFits(_ v: VMA, _ addr: UInt64) -> Bool {
        let block = addr & ~(PageSize.size2M.bytes - 1)
        return block >= v.start && block + PageSize.size2M.bytes <= v.end
    }

    /// Whether nothing is mapped in the PMD holding `addr` (pmd_none).
    func pmdNone(_ pi: Int, _ addr: UInt64) -> Bool {
        processes[pi].pageTable.descriptor(at: VirtAddr(addr), level: 2)?.isNone ?? true
    }

    /// do_anonymous_page, or do_huge_pmd_anonymous_page in a VM_HUGEPAGE VMA (THP
    /// "madvise", the common default): a read maps the zero page (the huge zero folio) as a
    /// special read-only entry; a write a new exclusive anonymous folio with vm_page_prot,
    /// written and dirty. Linux mm/memory.c, mm/huge_memory.c.
    mutating func doAnonymousPage(_ pi: Int, _ vi: Int, _ addr: UInt64, _ write: Bool) -> VMFaultResult {
        let v = processes[pi].vmas[vi]
        let readOnly = v.pageProt.subtracting(.writable)
        if v.flags.contains(.hugepage) && pmdFits(v, addr) && pmdNone(pi, addr) {
            let block = addr & ~(PageSize.size2M.bytes - 1)
            if !write, let z = hugeZeroPage() {
                setLeaf(pi, block, z, .size2M, readOnly.union(.special))
                return .handled
            }
            if write, let pfn = newFolio(order: 9, flags: [.anon, .anonExclusive]) {
                folios[pfn]!.mapcount = 1
                stats.thpFaults += 1
                setLeaf(pi, block, pfn, .size2M, writeFaultEntry(v.pageProt, v))
                return .handled
            }
            // No 2M block free: fall back to 4K (VM_FAULT_FALLBACK).
        }
        if !write {
            setLeaf(pi, addr, zeroPage(), .size4K, readOnly.union(.special))
            return .handled
        }
        guard let pfn = newFolio(order: 0, flags: [.anon, .anonExclusive]) else { return .oom }
        folios[pfn]!.mapcount = 1
        setLeaf(pi, addr, pfn, .size4K, writeFaultEntry(v.pageProt, v))
        return .handled
    }

    /// do_wp_page: a shared mapping makes the entry writable (wp_page_shared / wp_pfn_shared,
    /// the folio dirtied); a private one reuses an exclusive anonymous page
    /// (wp_page_reuse) and copies anything else (wp_page_copy), the copy an anonymous page
    /// with vm_page_prot (the one exception to a driver's prot, the vmf_insert_pfn_prot
    /// kerneldoc says). Linux mm/memory.c.
    mutating func doWPPage(_ pi: Int, _ vi: Int, _ addr: UInt64, _ leaf: Leaf) -> VMFaultResult {
        let v = processes[pi].vmas[vi]
        let a = leaf.descriptor.attributes, pfn = leaf.descriptor.frame.rawValue
        if v.flags.contains(.shared) {
            if !a.contains(.special), let h = folioHead(pfn) { folios[h]!.flags.insert(.dirty) }
            setLeaf(pi, leaf.virt.rawValue, pfn, .size4K, a.union([.writable, .dirty]))
            return .handled
        }
        if !a.contains(.special), let h = folioHead(pfn), let f = folios[h], f.flags.contains(.anon), f.order == 0,
           f.flags.contains(.anonExclusive) || f.refcount == 1 {
            folios[h]!.flags.insert(.anonExclusive)
            setLeaf(pi, leaf.virt.rawValue, pfn, .size4K, a.union([.writable, .dirty]))
            return .handled
        }
        return copyOnWrite(pi, vi, addr, from: a.contains(.special) ? nil : folioHead(pfn))
    }

    /// wp_page_copy: a new exclusive anonymous page with vm_page_prot, written and dirty; the
    /// old page (if it has a struct page) loses this mapping.
    mutating func copyOnWrite(_ pi: Int, _ vi: Int, _ addr: UInt64, from old: UInt64?) -> VMFaultResult {
        let v = processes[pi].vmas[vi]
        guard let pfn = newFolio(order: 0, flags: [.anon, .anonExclusive]) else { return .oom }
        folios[pfn]!.mapcount = 1
        if let h = old {
            // __wp_page_copy_user reads the source through the kernel's mapping, then
            // ptep_clear_flush replaces the old PTE (s390 exports a protected mm's page there).
            let src = h + ((addr >> pageShift) & (UInt64(1 << folios[h]!.order) - 1))
            if recordsEvents { events.append(.copied(from: src, to: pfn)) }
            notePTECleared(pi, src)
            folios[h]!.mapcount -= 1
            put(h)
        }
        stats.cowCopies += 1
        setLeaf(pi, addr & ~(pageBytes - 1), pfn, .size4K, writeFaultEntry(v.pageProt, v))
        return .handled
    }

    /// do_huge_pmd_wp_page: an exclusive anonymous THP (or a shared mapping) is made
    /// writable whole; the huge zero folio and a shared THP are split and the fault retried
    /// on the PTE (VM_FAULT_FALLBACK). Linux mm/huge_memory.c.
    mutating func hugeWriteProtectFault(_ pi: Int, _ vi: Int, _ addr: UInt64, _ leaf: Leaf, _ inaccessible: (UInt64) -> Bool) -> VMFaultResult {
        let v = processes[pi].vmas[vi]
        let a = leaf.descriptor.attributes, pfn = leaf.descriptor.frame.rawValue
        if v.flags.contains(.shared) || (v.isAnonymous && !a.contains(.special) && folios[pfn].map { $0.flags.contains(.anonExclusive) || $0.refcount == 1 } == true) {
            if let h = folioHead(pfn) { folios[h]!.flags.insert(.dirty) }
            setLeaf(pi, leaf.virt.rawValue, pfn, .size2M, a.union([.writable, .dirty]))
            return .handled
        }
        splitHugePMD(pi, addr)
        return handleFault(process: pi, addr: addr, write: true, inaccessible: inaccessible)
    }

    /// Maps page-cache frame `pfn` at `addr` (finish_fault after ->fault): vm_page_prot; a
    /// write to a shared mapping makes it writable and dirty (do_shared_fault), a write to a
    /// private one copies (do_cow_fault). The cache holds one reference, each mapping one.
    mutating func mapCachePage(_ pi: Int, _ vi: Int, _ addr: UInt64, _ pfn: UInt64, write: Bool) -> VMFaultResult {
        let v = processes[pi].vmas[vi]
        if folioHead(pfn) == nil { folios[pfn] = Folio(order: 0, refcount: 1, mapcount: 0, pincount: 0, flags: .pageCache) }
        guard let h = folioHead(pfn) else { return .sigbus }
        if write && !v.flags.contains(.shared) {
            guard allocator.available > 0 else { return .oom }  // the copy's page first, then the references
            folios[h]!.refcount += 1  // the copy's source, held across the copy
            folios[h]!.mapcount += 1
            return copyOnWrite(pi, vi, addr, from: h)
        }
        folios[h]!.refcount += 1
        folios[h]!.mapcount += 1
        var a = v.pageProt
        if write { a = a.union([.writable, .dirty]); folios[h]!.flags.insert(.dirty) }
        setLeaf(pi, addr & ~(pageBytes - 1), pfn, .size4K, a)
        return .handled
    }

    /// filemap_fault (and shmem's with large folios): the page cache's page, read in when
    /// absent; a huge file maps the 2M folio with a PMD where the VMA and the file offset
    /// line up (do_set_pmd), else the page by a PTE.
    mutating func fileFault(_ pi: Int, _ vi: Int, _ addr: UInt64, _ write: Bool, _ f: Int) -> VMFaultResult {
        let v = processes[pi].vmas[vi]
        let index = v.index(addr)
        if files[f].huge {
            let headIndex = index & ~511
            if files[f].pages[headIndex] == nil {
                guard let pfn = newFolio(order: 9, flags: .pageCache) else { return .oom }
                files[f].pages[headIndex] = pfn
            }
            guard let head = files[f].pages[headIndex], folios[head] != nil else { return .sigbus }
            let aligned = (addr >> pageShift) & 511 == index & 511
            // s390 KVM cannot tolerate PMD mappings (do_set_pmd refuses on a pgste mm).
            if aligned && pmdFits(v, addr) && pmdNone(pi, addr) && (!write || v.flags.contains(.shared)) && !processes[pi].hasPgste {
                folios[head]!.refcount += 1
                folios[head]!.mapcount += 1
                var a = v.pageProt
                if write { a = a.union([.writable, .dirty]); folios[head]!.flags.insert(.dirty) }
                setLeaf(pi, addr & ~(PageSize.size2M.bytes - 1), head, .size2M, a)
                return .handled
            }
            return mapCachePage(pi, vi, addr, head + (index & 511), write: write)
        }
        if files[f].pages[index] == nil {
            guard let pfn = newFolio(order: 0, flags: .pageCache) else { return .oom }
            files[f].pages[index] = pfn
        }
        return mapCachePage(pi, vi, addr, files[f].pages[index]!, write: write)
    }

    /// ttm_bo_vm_fault_reserved: the TT pages populated on first use; up to
    /// TTM_BO_VM_NUM_PREFAULT entries from the faulting page on, each with
    /// ttm_io_prot(base): iomem write-combined and pgprot_decrypted, TT pages cached with the
    /// base's C-bit. The base is vm_get_page_prot(vm_flags) on a stack copy of the VMA
    /// (`vma-copy`, ≤5.5) or vma->vm_page_prot (`prot-insert`). A huge BO (5.8–5.14) maps an
    /// aligned run of VRAM with one PMD. drivers/gpu/drm/ttm/ttm_bo_vm.c.
    mutating func ttmFault(_ pi: Int, _ vi: Int, _ addr: UInt64, _ b: Int) -> VMFaultResult {
        let v = processes[pi].vmas[vi]
        if buffers[b].system.count < buffers[b].pages - buffers[b].vram {
            // ttm_tt_populate allocates the whole object: -ENOMEM (VM_FAULT_OOM) if it cannot.
            guard UInt64(buffers[b].pages - buffers[b].vram - buffers[b].system.count) <= allocator.available else { return .oom }
            for _ in buffers[b].system.count..<(buffers[b].pages - buffers[b].vram) {
                guard let p = newFolio(order: 0, flags: []) else { return .oom }
                buffers[b].system.append(p)
            }
        }
        let base = config.ttmInsert == .vmaCopy ? PgProt.vmGetPageProt(v.flags, memEncrypt: memEncrypt) : v.pageProt
        func ioProt(_ i: Int) -> Attributes {
            buffers[b].isIomem(i) ? base.subtracting(.encrypted).with(memoryType: .writeCombining) : base
        }
        let first = Int(v.index(addr))
        let insertKind: PFNInsert = config.ttmInsert == .vmaCopy ? .mixed : .pfnProt
        if buffers[b].huge && config.ttmInsert == .protInsert && pmdFits(v, addr) {
            let block = addr & ~(PageSize.size2M.bytes - 1)
            let i0 = Int(v.index(block))
            if i0 + 511 < buffers[b].vram, let p0 = buffers[b].pfn(i0), p0 & 511 == 0,
               let r = insertPMD(pi, block, pfn: p0, prot: ioProt(i0), checkAligned: true) {
                return okIfInserted(r)
            }
        }
        var i = first, va = addr & ~(pageBytes - 1)
        for _ in 0..<Self.ttmPrefault {
            guard i < buffers[b].pages, va < v.end, let pfn = buffers[b].pfn(i) else { break }
            if processes[pi].pageTable.lookup(VirtAddr(va)) == nil {
                let r = insertEntry(pi, vi, va, pfn, ioProt(i), insertKind)
                if r != .nopage { return r }
            }
            i += 1
            va += pageBytes
        }
        return .handled
    }

    /// vvar_fault: page 0 the vvar data (vmf_insert_pfn, vm_page_prot); page 1 the pvclock
    /// page, inserted with pgprot_decrypted(vm_page_prot) when the kernel has one (an SEV
    /// guest with kvmclock); the Hyper-V and time-namespace pages are absent: SIGBUS.
    /// arch/x86/entry/vdso/vma.c (6.6), vdso-layout.lds.S.
    mutating func vvarFault(_ pi: Int, _ vi: Int, _ addr: UInt64) -> VMFaultResult {
        let v = processes[pi].vmas[vi]
        switch Int(v.index(addr)) {
        case Self.vvarPage:
            guard let pfn = vvarPFN else { return .sigbus }
            return okIfInserted(insertEntry(pi, vi, addr & ~(pageBytes - 1), pfn, v.pageProt, .pfn))
        case Self.pvclockPage:
            guard let pfn = pvclockPFN else { return .sigbus }
            return okIfInserted(insertEntry(pi, vi, addr & ~(pageBytes - 1), pfn, v.pageProt.subtracting(.encrypted), .pfnProt))
        default: return .sigbus
        }
    }

    func okIfInserted(_ r: VMFaultResult) -> VMFaultResult { r == .nopage ? .handled : r }

    /// The vvar area's pages, in vdso-layout.lds.S's order: vvar, pvclock, hvclock, timens.
    public static let vvarPages = 4
    public static let vvarPage = 0
    public static let pvclockPage = 1

    /// A driver's call of one of the insert helpers at `addr`: the BUG_ONs and checks of
    /// mm/memory.c, then the entry. The result is the vm_fault_t.
    public mutating func insert(_ kind: PFNInsert, process pi: Int, addr: UInt64, pfn: UInt64, prot: Attributes) -> VMFaultResult {
        guard let vi = processes[pi].vmaIndex(addr) else { return .sigbus }
        return insertEntry(pi, vi, addr & ~(pageBytes - 1), pfn, prot, kind)
    }

    /// vmf_insert_pfn_prot / vmf_insert_mixed(_prot): the BUG_ONs (exactly one of
    /// VM_PFNMAP and VM_MIXEDMAP; no COW VM_PFNMAP; no struct-page pfn in VM_MIXEDMAP through
    /// the pfn form; vm_mixed_ok for the mixed form), then insert_pfn: a special entry with the
    /// prot (x86 has pte_special, so even a mixed insert of a struct page is special); an
    /// entry already there is left alone.
    mutating func insertEntry(_ pi: Int, _ vi: Int, _ va: UInt64, _ pfn: UInt64, _ prot: Attributes, _ kind: PFNInsert) -> VMFaultResult {
        let v = processes[pi].vmas[vi]
        let name = kind.rawValue
        switch kind {
        case .pfn, .pfnProt:
            if v.flags.isDisjoint(with: [.pfnmap, .mixedmap]) { return .bug(function: name, condition: "!(vma->vm_flags & (VM_PFNMAP|VM_MIXEDMAP))") }
            if v.flags.isSuperset(of: [.pfnmap, .mixedmap]) { return .bug(function: name, condition: "(vma->vm_flags & (VM_PFNMAP|VM_MIXEDMAP)) == (VM_PFNMAP|VM_MIXEDMAP)") }
            if v.flags.contains(.pfnmap) && v.isCOW { return .bug(function: name, condition: "(vma->vm_flags & VM_PFNMAP) && is_cow_mapping(vma->vm_flags)") }
            if v.flags.contains(.mixedmap) && pfnValid(pfn) { return .bug(function: name, condition: "(vma->vm_flags & VM_MIXEDMAP) && pfn_valid(pfn)") }
        case .mixed, .mixedProt:
            if !v.flags.contains(.mixedmap) && pfn != zeroPFN { return .bug(function: name, condition: "!vm_mixed_ok(vma, pfn)") }
        }
        if processes[pi].pageTable.lookup(VirtAddr(va)) != nil { return .nopage }
        setLeaf(pi, va, pfn, .size4K, prot.subtracting([.dirty, .writable]).union(.special).union(prot.intersection(.writable)))
        return .nopage
    }

    /// vmf_insert_pfn_pmd (with `prot`: the _prot form of 5.8–6.3): a huge special entry
    /// for the aligned block, in a VM_PFNMAP VMA that is not COW; nil when the block does not
    /// fit (the fault falls back to PTEs). mm/huge_memory.c.
    mutating func insertPMD(_ pi: Int, _ addr: UInt64, pfn: UInt64, prot: Attributes, checkAligned: Bool) -> VMFaultResult? {
        guard let vi = processes[pi].vmaIndex(addr) else { return .sigbus }
        let v = processes[pi].vmas[vi]
        guard checkAligned, pmdFits(v, addr), pmdNone(pi, addr), pfn & 511 == 0 else { return nil }
        if !v.flags.contains(.pfnmap) { return .bug(function: "vmf_insert_pfn_pmd", condition: "!(vma->vm_flags & VM_PFNMAP) && !pfn_t_devmap(pfn)") }
        if v.isCOW { return .bug(function: "vmf_insert_pfn_pmd", condition: "(vma->vm_flags & VM_PFNMAP) && is_cow_mapping(vma->vm_flags)") }
        setLeaf(pi, addr & ~(PageSize.size2M.bytes - 1), pfn, .size2M, prot.subtracting(.dirty).union(.special))
        return .nopage
    }

    /// A driver's vmf_insert_pfn_pmd at `addr` with vm_page_prot.
    public mutating func insertPMD(process pi: Int, addr: UInt64, pfn: UInt64) -> VMFaultResult {
        guard let vi = processes[pi].vmaIndex(addr) else { return .sigbus }
        guard addr & (PageSize.size2M.bytes - 1) == 0, pfn & 511 == 0 else { return .sigbus }
        return insertPMD(pi, addr, pfn: pfn, prot: processes[pi].vmas[vi].pageProt, checkAligned: true) ?? .sigbus
    }

    /// __split_huge_pmd_locked: a non-anonymous huge entry (file or shmem THP, DAX, a
    /// VM_PFNMAP/MIXEDMAP driver's) is cleared and left to refault, whatever its bits; the
    /// huge zero folio becomes 512 special zero-page PTEs; an anonymous THP 512 PTEs built
    /// from vm_page_prot with write and dirty taken from the PMD, never its encryption or
    /// cache bits. mm/huge_memory.c.
    public mutating func splitHugePMD(_ pi: Int, _ addr: UInt64) {
        guard let leaf = processes[pi].pageTable.lookup(VirtAddr(addr)), leaf.size == .size2M,
              let vi = processes[pi].vmaIndex(addr) else { return }
        let v = processes[pi].vmas[vi]
        let block = leaf.virt.rawValue, pfn = leaf.descriptor.frame.rawValue, a = leaf.descriptor.attributes
        stats.pmdSplits += 1
        try? processes[pi].pageTable.zap(virt: VirtAddr(block), size: PageSize.size2M.bytes)
        if !v.isAnonymous {
            stats.pmdZaps += 1
            if !a.contains(.special), let h = folioHead(pfn) {
                if a.contains(.dirty) { folios[h]!.flags.insert(.dirty) }
                folios[h]!.mapcount -= 1
                put(h)
            }
            return
        }
        var pte = v.pageProt
        if pfn == hugeZeroPFN {
            pte = pte.subtracting(.writable).union(.special)
            for i in 0..<UInt64(512) { setLeaf(pi, block + i << pageShift, zeroPage(), .size4K, pte) }
            return
        }
        pte.remove(.writable)
        if a.contains(.writable) { pte.insert(.writable) }
        if a.contains(.dirty) { pte.insert(.dirty) }
        guard folios[pfn] != nil else { return }  // no folio: nothing to rebuild (the entry is gone)
        folios[pfn]!.refcount += 511
        folios[pfn]!.mapcount += 511
        for i in 0..<UInt64(512) { setLeaf(pi, block + i << pageShift, pfn + i, .size4K, pte) }
    }

    /// Zaps [start, end) of VMA `v`: a huge entry partly inside is split first; each entry
    /// drops its folio's mapping and reference (a dirty PTE dirties a page-cache folio).
    /// Linux mm/memory.c zap_pte_range, zap_huge_pmd.
    mutating func zap(_ pi: Int, _ v: VMA, _ start: UInt64, _ end: UInt64) {
        zapSwapEntries(pi, start, end)
        if end - start == pageBytes, let leaf = processes[pi].pageTable.lookup(VirtAddr(start)), leaf.size == .size4K {
            release(pi, leaf)
            return
        }
        guard let leaves = try? processes[pi].pageTable.leaves(virt: VirtAddr(start), size: end - start) else { return }
        for leaf in leaves where leaf.size != .size4K && (leaf.virt.rawValue < start || leaf.virt.rawValue + leaf.size.bytes > end) {
            splitHugePMD(pi, leaf.virt.rawValue)
            return zap(pi, v, start, end)
        }
        for leaf in leaves { release(pi, leaf) }
    }

    /// One entry's removal: its folio's mapping and reference dropped, the entry cleared.
    mutating func release(_ pi: Int, _ leaf: Leaf) {
        let a = leaf.descriptor.attributes
        if !a.contains(.special), let h = folioHead(leaf.descriptor.frame.rawValue) {
            if a.contains(.present) { notePTECleared(pi, leaf.descriptor.frame.rawValue) }
            if a.contains(.dirty) && folios[h]!.flags.contains(.pageCache) { folios[h]!.flags.insert(.dirty) }
            folios[h]!.mapcount -= 1
            put(h)
        }
        try? processes[pi].pageTable.zap(virt: leaf.virt, size: leaf.size.bytes)
    }

    /// madvise(MADV_DONTNEED): the range's pages zapped, the VMAs kept; a VM_PFNMAP VMA is
    /// -EINVAL (madvise_dontneed_free_valid_vma); a hole is -ENOMEM once the VMAs after it
    /// are done (madvise_walk_vmas). mm/madvise.c.
    public mutating func madviseDontneed(process pi: Int, addr: UInt64, len: UInt64) -> KernelStatus {
        guard let end = Self.madviseEnd(addr, len) else { return .error(.EINVAL) }
        var i = processes[pi].insertionIndex(addr), cursor = addr, hole = false
        while i < processes[pi].vmas.count && processes[pi].vmas[i].start < end {
            let v = processes[pi].vmas[i]
            if v.start > cursor { hole = true }
            if v.flags.contains(.pfnmap) { return .error(.EINVAL) }
            zap(pi, v, max(cursor, v.start), min(end, v.end))
            cursor = v.end
            i += 1
        }
        return hole || cursor < end ? .error(.ENOMEM) : .ok
    }
}
