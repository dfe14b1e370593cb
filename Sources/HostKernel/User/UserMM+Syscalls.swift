import Hardware
import PageTables

/// MAP_FIXED and MAP_FIXED_NOREPLACE, or neither (the address is a hint).
public enum MapFixed: String, CaseIterable, Hashable, Sendable {
    case hint
    case fixed = "MAP_FIXED"
    case noreplace = "MAP_FIXED_NOREPLACE"
}

/// What a new mapping maps, as mmap's caller chooses it (a file, a driver's device file).
public enum MmapBacking: Hashable, Sendable {
    case anonymous
    case file(name: String)
    case ttm(vram: Int)
    case dmaCoherent(decrypted: Bool)
    case pfnmap(pa: UInt64)
    case guestMemory(guest: Int, pa: UInt64, size: UInt64)
}

/// An mmap call.
public struct MmapRequest: Hashable, Sendable {
    public var addr: UInt64 = 0
    public var len: UInt64
    public var prot: UserProt
    public var shared = false
    public var fixed = MapFixed.hint
    public var backing = MmapBacking.anonymous
    /// madvise(MADV_HUGEPAGE) right after (VM_HUGEPAGE), or a driver that maps huge.
    public var huge = false

    public init(addr: UInt64 = 0, len: UInt64, prot: UserProt, shared: Bool = false, fixed: MapFixed = .hint,
                backing: MmapBacking = .anonymous, huge: Bool = false) {
        self.addr = addr
        self.len = len
        self.prot = prot
        self.shared = shared
        self.fixed = fixed
        self.backing = backing
        self.huge = huge
    }
}

extension UserMM {
    /// PAGE_ALIGN, which wraps to 0 for a length within a page of 2^64 (each caller then
    /// fails as the kernel does).
    @inline(__always) static func pageAlign(_ v: UInt64) -> UInt64 { (v &+ (pageBytes - 1)) & ~(pageBytes - 1) }

    /// get_unmapped_area, top-down (arch_get_unmapped_area_topdown → vm_unmapped_area): the
    /// highest gap below mmap_base that holds `len` at `align`; a free hint is taken as is.
    func unmappedArea(_ p: UserProcess, hint: UInt64, len: UInt64, align: UInt64) -> UInt64? {
        if hint != 0 {
            let a = hint & ~(pageBytes - 1)
            if a >= Self.mmapMinAddr, a <= Self.taskSize - len, !p.overlaps(a, a + len) { return a }
        }
        var high = Self.mmapBase
        var i = p.insertionIndex(high) - 1
        if i + 1 < p.vmas.count && p.vmas[i + 1].start < high { high = min(high, p.vmas[i + 1].start) }
        while true {
            let low = i >= 0 ? p.vmas[i].end : Self.mmapMinAddr
            if high >= len && high - len >= low {
                let a = (high - len) & ~(align - 1)
                if a >= low && a >= Self.mmapMinAddr { return a }
            }
            if i < 0 { return nil }
            high = min(high, p.vmas[i].start)
            i -= 1
        }
    }

    /// mmap: the checks of do_mmap, get_unmapped_area, MAP_FIXED's unmap, the driver's
    /// ->mmap, then vma_set_page_prot (mmap_region). Linux mm/mmap.c do_mmap, mm/vma.c __mmap_region.
    public mutating func mmap(process pi: Int, _ r: MmapRequest) -> MmapOutcome {
        guard r.len > 0 else { return .error(.EINVAL) }
        let len = Self.pageAlign(r.len)
        guard len <= Self.taskSize, len >= r.len else { return .error(.ENOMEM) }
        var addr: UInt64
        switch r.fixed {
        case .fixed, .noreplace:
            // __get_unmapped_area: past TASK_SIZE first, then the alignment; below
            // mmap_min_addr needs CAP_SYS_RAWIO (security_mmap_addr).
            guard r.addr <= Self.taskSize - len else { return .error(.ENOMEM) }
            guard r.addr & (pageBytes - 1) == 0 else { return .error(.EINVAL) }
            guard r.addr >= Self.mmapMinAddr else { return .error(.EPERM) }
            addr = r.addr
            if r.fixed == .noreplace && processes[pi].overlaps(addr, addr + len) { return .error(.EEXIST) }
            if r.fixed == .fixed { unmapRange(pi, addr, addr + len) }
        case .hint:
            // thp_get_unmapped_area: anonymous mappings a multiple of 2M, and huge drivers, PMD-aligned.
            let pmdAlign = (r.backing == .anonymous && len % PageSize.size2M.bytes == 0) || (r.huge && len >= PageSize.size2M.bytes)
            guard let a = unmappedArea(processes[pi], hint: r.addr, len: len, align: pmdAlign ? PageSize.size2M.bytes : pageBytes) else {
                return .error(.ENOMEM)
            }
            addr = a
        }
        var flags = r.prot.vmFlags.union([.mayRead, .mayWrite, .mayExec])
        if r.shared { flags.formUnion([.shared, .mayShare]) }
        if r.huge && !processes[pi].hasPgste { flags.insert(.hugepage) }  // mm->def_flags VM_NOHUGEPAGE on a pgste mm
        var vma = VMA(start: addr, end: addr + len, flags: flags, pageProt: [], backing: .anonymous, pgoff: 0)
        vma.pageProt = PgProt.vmGetPageProt(flags, memEncrypt: memEncrypt)
        var prefault: [UInt64] = []  // remap_pfn_range's frames
        switch r.backing {
        case .anonymous where r.shared:
            // MAP_SHARED|MAP_ANONYMOUS is a shmem file of its own (shmem_zero_setup).
            files.append(PageCacheFile(name: "/dev/zero (deleted) \(files.count)", huge: r.huge, writeback: false))
            vma.backing = .file(files.count - 1)
        case .anonymous: break
        case .file(let name):
            let f = files.firstIndex { $0.name == name } ?? { files.append(PageCacheFile(name: name, huge: r.huge, writeback: true)); return files.count - 1 }()
            vma.backing = .file(f)
        case .ttm(let vram):
            // ttm_bo_mmap_obj: a COW mapping of a BO is refused (5.14; v5.5 allowed it).
            if config.ttmInsert == .protInsert && vma.isCOW { return .error(.EINVAL) }
            let pages = Int(len >> pageShift)
            let vramPFN = (iomemBase >> pageShift) + UInt64(buffers.reduce(0) { $0 + $1.vram })
            buffers.append(TTMBuffer(pages: pages, vram: min(vram, pages), vramPFN: vramPFN, huge: r.huge))
            vma.backing = .ttm(buffers.count - 1)
            vma.flags.formUnion(config.ttmInsert == .vmaCopy ? [.mixedmap, .io, .dontExpand, .dontDump] : [.pfnmap, .io, .dontExpand, .dontDump])
        case .dmaCoherent(let decrypted):
            // dma_alloc_coherent (the kernel decrypts the buffer in its direct map under
            // force_dma_unencrypted: `Kernel.userMmap`), then dma_direct_mmap: vm_page_prot =
            // dma_pgprot (decrypted), remap_pfn_range over the buffer with it.
            guard len >> pageShift <= allocator.available else { return .error(.ENOMEM) }
            var pfns: [UInt64] = []
            for _ in 0..<(len >> pageShift) {
                guard let p = allocator.alloc4K() else { pfns.forEach { allocator.free($0, order: 0) }; return .error(.ENOMEM) }
                pfns.append(p)
            }
            vma.backing = .dmaCoherent(firstPFN: pfns.first ?? 0)
            vma.flags.formUnion([.io, .pfnmap, .dontExpand, .dontDump])
            if decrypted { vma.pageProt.remove(.encrypted) }
            prefault = pfns
        case .pfnmap(let pa):
            // vfio_pci_core_mmap: a shared mapping only, pgprot_noncached and pgprot_decrypted.
            guard r.shared else { return .error(.EINVAL) }
            vma.backing = .pfnmap(firstPFN: pa >> pageShift)
            vma.flags.formUnion([.io, .pfnmap, .dontExpand, .dontDump])
            vma.pageProt.memoryType = .uncachedMinus
            vma.pageProt.remove(.encrypted)
        case .guestMemory(let g, let pa, let size):
            vma.backing = .guestMemory(guest: g, firstPFN: pa >> pageShift, pages: size >> pageShift)
        }
        let i = processes[pi].insertionIndex(addr)
        processes[pi].vmas.insert(vma, at: i)
        for (k, pfn) in prefault.enumerated() {
            let prot = processes[pi].vmas[i].pageProt.union(.special)
            try? processes[pi].pageTable.installLeaf(virt: VirtAddr(addr + UInt64(k) << pageShift), phys: PhysAddr(pfn << pageShift), size: .size4K, attributes: prot)
        }
        vmaSetPageProt(pi, i)
        return .mapped(addr)
    }

    /// vma_wants_writenotify: a shared writable mapping of a file with dirty accounting keeps
    /// its PTEs read-only so the first write is seen (VM_SHARED dropped from the prot lookup).
    func wantsWritenotify(_ v: VMA) -> Bool {
        guard v.flags.contains(.shared), v.flags.contains(.write), v.flags.isDisjoint(with: [.pfnmap, .mixedmap]) else { return false }
        if case .file(let f) = v.backing { return files[f].writeback }
        return false
    }

    /// vma_set_page_prot: vm_page_prot = pgprot_modify(vm_page_prot, vm_get_page_prot(vm_flags)).
    /// Linux mm/mmap.c.
    mutating func vmaSetPageProt(_ pi: Int, _ i: Int) {
        let v = processes[pi].vmas[i]
        var flags = v.flags
        if wantsWritenotify(v) { flags.remove(.shared) }
        processes[pi].vmas[i].pageProt = PgProt.pgprotModify(v.pageProt, PgProt.vmGetPageProt(flags, memEncrypt: memEncrypt), mask: config.chgMask)
    }

    /// Splits the VMA holding `addr` at it (__split_vma), so a VMA starts there.
    mutating func splitVMA(_ pi: Int, at addr: UInt64) {
        guard let i = processes[pi].vmaIndex(addr), processes[pi].vmas[i].start < addr else { return }
        // vma_adjust_trans_huge: a huge PMD across the new boundary is split first, under
        // the VMA's prot as it is before any change.
        if addr & (PageSize.size2M.bytes - 1) != 0, let leaf = processes[pi].pageTable.lookup(VirtAddr(addr)), leaf.size == .size2M {
            splitHugePMD(pi, addr)
        }
        var tail = processes[pi].vmas[i]
        tail.pgoff += (addr - tail.start) >> pageShift
        tail.start = addr
        processes[pi].vmas[i].end = addr
        processes[pi].vmas.insert(tail, at: i + 1)
    }

    /// munmap: page-aligned start, a length inside TASK_SIZE; nothing mapped is not an error.
    /// Linux mm/vma.c do_vmi_munmap.
    public mutating func munmap(process pi: Int, addr: UInt64, len: UInt64) -> KernelStatus {
        let len = Self.pageAlign(len)
        guard addr & (pageBytes - 1) == 0, len > 0, addr <= Self.taskSize, len <= Self.taskSize - addr else { return .error(.EINVAL) }
        unmapRange(pi, addr, addr + len)
        return .ok
    }

    /// Removes [start, end) from the process: VMAs split at the ends, pages zapped.
    mutating func unmapRange(_ pi: Int, _ start: UInt64, _ end: UInt64) {
        guard processes[pi].overlaps(start, end) else { return }
        splitVMA(pi, at: start)
        splitVMA(pi, at: end)
        let first = processes[pi].insertionIndex(start)
        var last = first
        while last < processes[pi].vmas.count && processes[pi].vmas[last].start < end { last += 1 }
        for i in first..<last { zap(pi, processes[pi].vmas[i], processes[pi].vmas[i].start, processes[pi].vmas[i].end) }
        processes[pi].vmas.removeSubrange(first..<last)
        freePageTables(pi, start, end)
    }

    /// free_pgtables: the PTE tables of 2M blocks no VMA touches any more go (zap leaves
    /// them; munmap frees them). mm/memory.c free_pgtables.
    mutating func freePageTables(_ pi: Int, _ start: UInt64, _ end: UInt64) {
        let m2 = PageSize.size2M.bytes
        var block = start & ~(m2 - 1)
        while block < end {
            if !processes[pi].overlaps(block, block + m2),
               processes[pi].pageTable.descriptor(at: VirtAddr(block), level: 2)?.isTable == true {
                try? processes[pi].pageTable.setEntry(virt: VirtAddr(block), level: 2, .none)
            }
            block += m2
        }
    }

    /// mprotect: VMA by VMA from the first one, as do_mprotect_pkey walks them: a hole (at
    /// the start, between VMAs or at the end) is -ENOMEM and a prot past a VMA's VM_MAY*
    /// -EACCES, and the VMAs already changed stay changed (no rollback); each piece whose
    /// flags change gets vma_set_page_prot, then change_protection rewrites its entries
    /// with pte_modify/pmd_modify. Linux mm/mprotect.c do_mprotect_pkey, mprotect_fixup.
    public mutating func mprotect(process pi: Int, addr: UInt64, len: UInt64, prot: UserProt) -> KernelStatus {
        guard addr & (pageBytes - 1) == 0 else { return .error(.EINVAL) }
        guard len > 0 else { return .ok }
        let len = Self.pageAlign(len)
        guard len > 0, addr <= Self.taskSize, len <= Self.taskSize - addr else { return .error(.ENOMEM) }
        let end = addr + len
        var i = processes[pi].insertionIndex(addr)
        guard i < processes[pi].vmas.count, processes[pi].vmas[i].start <= addr else { return .error(.ENOMEM) }
        var tmp = addr
        while i < processes[pi].vmas.count && tmp < end {
            let v = processes[pi].vmas[i]
            if max(v.start, addr) != tmp { return .error(.ENOMEM) }
            if prot.write && !v.flags.contains(.mayWrite) || prot.read && !v.flags.contains(.mayRead) || prot.exec && !v.flags.contains(.mayExec) {
                return .error(.EACCES)
            }
            let pieceEnd = min(v.end, end)
            let old = v.flags
            let new = old.subtracting([.read, .write, .exec]).union(prot.vmFlags)
            if new != old {
                splitVMA(pi, at: tmp)
                splitVMA(pi, at: pieceEnd)
                i = processes[pi].vmaIndex(tmp)!
                processes[pi].vmas[i].flags = new
                vmaSetPageProt(pi, i)
                changeProtection(pi, i)
            }
            tmp = pieceEnd
            i += 1
        }
        return tmp < end ? .error(.ENOMEM) : .ok
    }

    /// change_protection over VMA `i`: huge PMDs by pmd_modify (the VMA covers them whole,
    /// its edges were split first), PTEs by pte_modify with vm_page_prot; an exclusive
    /// anonymous page in a writable private VMA becomes writable again
    /// (can_change_pte_writable). Linux mm/mprotect.c change_pte_range, mm/huge_memory.c change_huge_pmd.
    mutating func changeProtection(_ pi: Int, _ i: Int) {
        let v = processes[pi].vmas[i]
        let newprot = v.pageProt
        let leaves = (try? processes[pi].pageTable.leaves(virt: VirtAddr(v.start), size: v.end - v.start)) ?? []
        for leaf in leaves {
            if leaf.size != .size4K && (leaf.virt.rawValue < v.start || leaf.virt.rawValue + leaf.size.bytes > v.end) {
                splitHugePMD(pi, leaf.virt.rawValue)
                changeProtection(pi, i)
                return
            }
        }
        for leaf in leaves {
            let old = leaf.descriptor.attributes
            var a = PgProt.pteModify(old, newprot, mask: config.chgMask)
            if v.flags.contains(.write) && a.contains(.present) && !a.contains(.writable) && canChangeWritable(v, leaf.descriptor) {
                a.insert(.writable)
            }
            try? processes[pi].pageTable.installLeaf(virt: leaf.virt, phys: PhysAddr(leaf.descriptor.frame.rawValue << pageShift), size: leaf.size, attributes: a)
        }
    }

    /// can_change_pte_writable under MM_CP_TRY_CHANGE_WRITABLE: in a private VMA an exclusive
    /// anonymous page; in a shared one with write-notify, a dirty entry. mm/mprotect.c.
    func canChangeWritable(_ v: VMA, _ d: Descriptor) -> Bool {
        if !v.flags.contains(.shared) {
            guard !d.attributes.contains(.special), let f = folio(d.frame.rawValue) else { return false }
            return f.flags.contains(.anon) && f.flags.contains(.anonExclusive)
        }
        return wantsWritenotify(v) && d.attributes.contains(.dirty)
    }

    /// fork's copy of one mm into process `name` (whose own mm is replaced): every VMA; anonymous pages shared read-only in both (their
    /// mapcount and refcount up, no longer exclusive), VM_PFNMAP/VM_MIXEDMAP entries copied
    /// (they cannot be refaulted), a file's pages left to fault again. Linux kernel/fork.c
    /// dup_mmap, mm/memory.c copy_page_range, vma_needs_copy, copy_present_pte.
    public mutating func fork(process pi: Int, child name: String) {
        var child = UserProcess(name: name)
        child.vmas = processes[pi].vmas
        for v in processes[pi].vmas {
            let copies = v.isAnonymous || !v.flags.isDisjoint(with: [.pfnmap, .mixedmap])
            guard copies, let leaves = try? processes[pi].pageTable.leaves(virt: VirtAddr(v.start), size: v.end - v.start) else { continue }
            for leaf in leaves {
                var a = leaf.descriptor.attributes
                let pfn = leaf.descriptor.frame.rawValue
                if v.isCOW && a.contains(.writable) {
                    a.remove(.writable)
                    try? processes[pi].pageTable.installLeaf(virt: leaf.virt, phys: PhysAddr(pfn << pageShift), size: leaf.size, attributes: a)
                }
                if !a.contains(.special), let h = folioHead(pfn) {
                    folios[h]!.mapcount += 1
                    folios[h]!.refcount += 1
                    if v.isCOW { folios[h]!.flags.remove(.anonExclusive) }
                }
                try? child.pageTable.installLeaf(virt: leaf.virt, phys: PhysAddr(pfn << pageShift), size: leaf.size, attributes: a)
            }
        }
        if let c = processIndex(name) {
            // The child's old mm goes (as exec's would): its pages are released first.
            for v in processes[c].vmas { zap(c, v, v.start, v.end) }
            processes[c] = child
        } else {
            processes.append(child)
        }
    }
}

extension UserMM {
    /// madvise's range check: a page-aligned start and an end that does not wrap (within
    /// TASK_SIZE); nil is -EINVAL. mm/madvise.c do_madvise.
    static func madviseEnd(_ addr: UInt64, _ len: UInt64) -> UInt64? {
        let aligned = pageAlign(len)
        guard addr & (pageBytes - 1) == 0, aligned >= len, addr <= taskSize, aligned <= taskSize - addr else { return nil }
        return addr + aligned
    }

    /// The frames of guests' RAM that process `pi` maps in [start, start + len), by guest
    /// (what an MMU-notifier invalidation of the range reaches in KVM's memslots).
    public func guestMemoryIn(process pi: Int, start: UInt64, len: UInt64) -> [(guest: Int, pfns: [UInt64])] {
        var out: [(guest: Int, pfns: [UInt64])] = []
        for v in processes[pi].vmas where v.start < start &+ len && start < v.end {
            guard case .guestMemory(let g, _, _) = v.backing else { continue }
            let lo = max(v.start, start), hi = min(v.end, start &+ len)
            let pfns = ((try? processes[pi].pageTable.leaves(virt: VirtAddr(lo), size: hi - lo)) ?? []).flatMap { leaf in
                (0..<(leaf.size.bytes >> pageShift)).map { leaf.descriptor.frame.rawValue + $0 }
            }
            if let k = out.firstIndex(where: { $0.guest == g }) { out[k].pfns += pfns } else { out.append((g, pfns)) }
        }
        return out
    }

    /// madvise(MADV_HUGEPAGE / MADV_NOHUGEPAGE): VM_HUGEPAGE set or cleared on the range's
    /// VMAs (split at its ends). mm/khugepaged.c hugepage_madvise.
    public mutating func madviseHugepage(process pi: Int, addr: UInt64, len: UInt64, on: Bool) -> KernelStatus {
        guard let end = Self.madviseEnd(addr, len) else { return .error(.EINVAL) }
        var cursor = addr
        while cursor < end {
            guard let vi = processes[pi].vmaIndex(cursor) else { return .error(.ENOMEM) }
            cursor = processes[pi].vmas[vi].end
        }
        splitVMA(pi, at: addr)
        splitVMA(pi, at: end)
        var i = processes[pi].insertionIndex(addr)
        while i < processes[pi].vmas.count && processes[pi].vmas[i].start < end {
            // hugepage_madvise ignores MADV_HUGEPAGE on a pgste mm (s390 KVM).
            if on { if !processes[pi].hasPgste { processes[pi].vmas[i].flags.insert(.hugepage) } } else { processes[pi].vmas[i].flags.remove(.hugepage) }
            i += 1
        }
        return .ok
    }

    /// A process's own access through its mapping: a stray access when the hardware keeps
    /// the page from the host.
    public mutating func noteUserAccess<A: PageAccessibility>(pfn: UInt64, _ acc: A) {
        if acc.isInaccessible(pfn) { stats.strayAccesses += 1 }
    }
}
