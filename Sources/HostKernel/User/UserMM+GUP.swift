import Hardware
import PageTables

/// What a platform says about host access to a frame: whether the hardware keeps the host
/// from it, and arch_make_folio_accessible (which may change the platform: s390 exports the
/// page and clears the folio's PG_arch_1; an SEV host cannot, and fails).
public protocol PageAccessibility {
    func isInaccessible(_ pfn: UInt64) -> Bool
    /// arch_make_folio_accessible on `folio` (the one holding `pfn`): nil (0) or the errno.
    mutating func makeAccessible(_ pfn: UInt64, folio: inout Folio) -> Errno?
    /// What the architecture does on the kernel's page events (`UserMMEvent`: a PTE of a
    /// protected mm cleared, a page written to or read from swap), taken in order.
    mutating func take(_ events: [UserMMEvent], _ mm: inout UserMM)
}

extension PageAccessibility {
    public mutating func take(_ events: [UserMMEvent], _ mm: inout UserMM) {}
}

/// A machine whose hardware keeps nothing from the host: the generic
/// arch_make_folio_accessible, which returns 0.
public struct AllAccessible: PageAccessibility {
    public init() {}
    public func isInaccessible(_ pfn: UInt64) -> Bool { false }
    public mutating func makeAccessible(_ pfn: UInt64, folio: inout Folio) -> Errno? { nil }
}

/// GUP's flags. include/linux/mm_types.h (FOLL_WRITE, FOLL_GET, FOLL_PIN, FOLL_LONGTERM).
public struct GUPFlags: Hashable, Sendable {
    public var write = false
    /// FOLL_PIN (pin_user_pages*) rather than FOLL_GET (get_user_pages*).
    public var pin = false
    /// FOLL_LONGTERM: with FOLL_PIN only; the folio would first be migrated out of
    /// ZONE_MOVABLE/CMA (the model has no zones, so it only checks the pairing).
    public var longterm = false
    public init(write: Bool = false, pin: Bool = false, longterm: Bool = false) {
        self.write = write
        self.pin = pin
        self.longterm = longterm
    }
}

extension UserMM {
    /// get_user_pages / pin_user_pages over `pages` pages from `addr`: per page, the VMA
    /// (none: -EFAULT) and check_vma_flags (VM_IO|VM_PFNMAP, or an access the VMA does not
    /// allow: -EFAULT), then follow_page_mask, faulting in (a FOLL_WRITE of a read-only
    /// entry breaks COW) and retrying; the number of pages taken before a failure, or the
    /// failure. mm/gup.c __get_user_pages, check_vma_flags, follow_page_pte.
    public mutating func getUserPages<A: PageAccessibility>(process pi: Int, addr: UInt64, pages n: Int, flags: GUPFlags, _ acc: inout A) -> GUPOutcome {
        if flags.longterm && !flags.pin { return .error(.EINVAL) }  // FOLL_LONGTERM needs FOLL_PIN (is_valid_gup_args)
        var first: UInt64 = 0
        for k in 0..<n {
            switch gupOne(pi, (addr & ~(pageBytes - 1)) &+ UInt64(k) << pageShift, flags, &acc) {
            case .success(let pfn):
                if k == 0 { first = pfn }
                stats.gupPages += 1
            case .failure(let e):
                stats.gupRefused += 1
                return k > 0 ? .pages(k, firstPFN: first, pinned: flags.pin) : .error(e)
            }
        }
        return .pages(n, firstPFN: first, pinned: flags.pin)
    }

    mutating func gupOne<A: PageAccessibility>(_ pi: Int, _ addr: UInt64, _ flags: GUPFlags, _ acc: inout A) -> Result<UInt64, Errno> {
        guard let vi = processes[pi].vmaIndex(addr) else { return .failure(.EFAULT) }
        let v = processes[pi].vmas[vi]
        if !v.flags.isDisjoint(with: [.io, .pfnmap]) { return .failure(.EFAULT) }
        if flags.write ? !v.flags.contains(.write) : !v.flags.contains(.read) { return .failure(.EFAULT) }
        for _ in 0..<3 {
            guard let leaf = processes[pi].pageTable.lookup(VirtAddr(addr)), leaf.descriptor.attributes.contains(.present),
                  !flags.write || leaf.descriptor.attributes.contains(.writable) else {
                // faultin_page: handle_mm_fault, then follow again.
                switch handleFault(process: pi, addr: addr, write: flags.write, inaccessible: acc.isInaccessible) {
                case .handled, .nopage: continue
                case .oom: return .failure(.ENOMEM)
                default: return .failure(.EFAULT)
                }
            }
            let pfn = leaf.translate(VirtAddr(addr)).rawValue >> pageShift
            let a = leaf.descriptor.attributes
            // vm_normal_page: no page for a special entry (the zero page is still returned);
            // under Dave Hansen's design none for an inaccessible one either.
            let refused = config.inaccessibleCheck == .vmNormalPage && acc.isInaccessible(pfn)
            if a.contains(.special) || refused {
                if isZeroPage(pfn) { return .success(pfn) }
                return .failure(.EEXIST)  // follow_pfn_pte, an error when pages are asked for
            }
            guard let h = folioHead(pfn) else { return .failure(.EEXIST) }
            grab(h, pin: flags.pin)
            // Only FOLL_PIN on a 4K entry calls the hook; the huge leaf paths never do.
            if flags.pin && leaf.size == .size4K && config.inaccessibleCheck == .gupAndWriteback, let e = acc.makeAccessible(pfn, folio: &folios[h]!) {
                unpin(h)
                return .failure(e)
            }
            return .success(pfn)
        }
        return .failure(.EFAULT)
    }

    /// try_grab_folio: FOLL_GET one reference; FOLL_PIN GUP_PIN_COUNTING_BIAS on a small
    /// folio, one reference and one _pincount on a large one.
    mutating func grab(_ h: UInt64, pin: Bool) {
        if !pin { folios[h]!.refcount += 1; folios[h]!.gets += 1; return }
        if folios[h]!.order > 0 {
            folios[h]!.refcount += 1
            folios[h]!.pincount += 1
        } else {
            folios[h]!.refcount += Folio.pinBias
        }
    }

    /// unpin_user_page: the pin's references dropped (the last frees the folio).
    mutating func unpin(_ h: UInt64) {
        if folios[h]!.order > 0 {
            folios[h]!.pincount -= 1
            put(h)
        } else {
            put(h, by: Folio.pinBias)
        }
    }

    /// unpin_user_page for frame `pfn`: -EINVAL when it holds no pin (the kernel WARNs).
    public mutating func unpinUserPage(pfn: UInt64) -> KernelStatus {
        if isZeroPage(pfn) { return .ok }  // gup_put_folio ignores the zero folio
        guard let h = folioHead(pfn), folios[h]!.maybeDMAPinned else { return .error(.EINVAL) }
        unpin(h)
        return .ok
    }

    /// put_page after a FOLL_GET: -EINVAL for a frame GUP never took a reference on.
    public mutating func putPage(pfn: UInt64) -> KernelStatus {
        if isZeroPage(pfn) { return .ok }
        guard let h = folioHead(pfn), folios[h]!.gets > 0 else { return .error(.EINVAL) }
        folios[h]!.gets -= 1
        put(h)
        return .ok
    }

    /// The zero page or a page of the huge zero folio (no references counted).
    func isZeroPage(_ pfn: UInt64) -> Bool { pfn == zeroPFN || (hugeZeroPFN.map { pfn & ~511 == $0 } ?? false) }

    /// follow_page: the page a present entry maps, without a reference or a fault (the
    /// pte_page() walkers Dave Hansen lists: KSM, migration, /proc/PID/pagemap); nil where
    /// vm_normal_page gives none. mm/gup.c follow_page (before 6.12's folio_walk).
    public func followPage<A: PageAccessibility>(process pi: Int, addr: UInt64, _ acc: A) -> UInt64? {
        guard processes[pi].vmaIndex(addr) != nil, let leaf = processes[pi].pageTable.lookup(VirtAddr(addr)), leaf.descriptor.attributes.contains(.present) else { return nil }
        let pfn = leaf.translate(VirtAddr(addr)).rawValue >> pageShift
        if leaf.descriptor.attributes.contains(.special) { return nil }
        if config.inaccessibleCheck == .vmNormalPage && acc.isInaccessible(pfn) { return nil }
        return pfn
    }

    /// A CPU access by the kernel to frame `pfn` through another mapping (kmap,
    /// kmap_local_page: page_address on x86-64, which cannot fail): counted as a stray access
    /// when the hardware keeps the page from the host. include/linux/highmem.h.
    public mutating func kmap<A: PageAccessibility>(pfn: UInt64, _ acc: A) {
        if acc.isInaccessible(pfn) { stats.strayAccesses += 1 }
    }

    /// A device's DMA to a pinned page through the IOMMU: no CPU access; counted when the
    /// page is one the hardware keeps from the host.
    public mutating func dma<A: PageAccessibility>(pfn: UInt64, _ acc: A) {
        if acc.isInaccessible(pfn) { stats.deviceAccesses += 1 }
    }

    /// Writeback of the folio holding `pfn` (a dirty page-cache page, or an anonymous one
    /// on its way to swap): __folio_start_writeback with its arch_make_folio_accessible and
    /// VM_BUG_ON_FOLIO under the `gup-and-writeback` design, the device's read of the page,
    /// then the end of writeback (the folio clean). A dirty PTE mapping it counts as dirty
    /// (folio_mkclean / try_to_unmap move the bit to the folio). Under `unmapped`, protected
    /// folios are guest_memfd's, unevictable. mm/page-writeback.c.
    public mutating func writeback<A: PageAccessibility>(pfn: UInt64, dirtyPTE: Bool, _ acc: inout A) -> WritebackOutcome {
        guard let h = folioHead(pfn) else { return .clean }
        if config.inaccessibleCheck == .unmapped && acc.isInaccessible(pfn) { return .unevictable }
        guard folios[h]!.flags.contains(.dirty) || dirtyPTE else { return .clean }
        var result = WritebackOutcome.started
        if config.inaccessibleCheck == .gupAndWriteback, let e = acc.makeAccessible(pfn, folio: &folios[h]!) {
            stats.writebackBugs += 1
            if config.debugVM { return .bug(e) }
            result = .bugIgnored(e)
        }
        if acc.isInaccessible(pfn) { stats.deviceAccesses += 1 }
        folios[h]!.flags.remove(.dirty)
        stats.writebacks += 1
        return result
    }

    /// The frame a process's entry maps at `addr`, present or not, and whether it is dirty.
    public func mappedFrame(process pi: Int, addr: UInt64) -> (pfn: UInt64, dirty: Bool)? {
        guard addr < Self.taskSize, let leaf = processes[pi].pageTable.lookup(VirtAddr(addr)) else { return nil }
        return (leaf.translate(VirtAddr(addr)).rawValue >> pageShift, leaf.descriptor.attributes.contains(.dirty))
    }

    /// Whether writeback of the folio holding `pfn` would write anything (a folio to write
    /// back, dirty or mapped by a dirty entry, and not guest_memfd's unevictable one): the
    /// checks `writeback` makes before it starts.
    public func wouldWriteBack<A: PageAccessibility>(pfn: UInt64, dirtyPTE: Bool, _ acc: A) -> Bool {
        guard let h = folioHead(pfn) else { return false }
        if config.inaccessibleCheck == .unmapped && acc.isInaccessible(pfn) { return false }
        return dirtyPTE || folios[h]!.flags.contains(.dirty)
    }

    /// folio_clear_dirty_for_io's folio_mkclean for the entry mapping `addr`, before the
    /// writeback: a dirty or writable entry is cleared (ptep_clear_flush, so a protected
    /// mm's page-cache page is exported on s390), then written back clean, and write-protected
    /// in a shared file mapping. mm/rmap.c page_vma_mkclean_one.
    public mutating func mkclean(process pi: Int, addr: UInt64) {
        guard let leaf = processes[pi].pageTable.lookup(VirtAddr(addr)), let vi = processes[pi].vmaIndex(addr) else { return }
        let pfn = leaf.translate(VirtAddr(addr)).rawValue >> pageShift
        if leaf.descriptor.attributes.contains(.present), !leaf.descriptor.attributes.isDisjoint(with: [.dirty, .writable]),
           let h = folioHead(pfn), folios[h]!.flags.contains(.pageCache) {
            notePTECleared(pi, pfn)
        }
        var a = leaf.descriptor.attributes.subtracting(.dirty)
        if wantsWritenotify(processes[pi].vmas[vi]) { a.remove(.writable) }
        setLeaf(pi, leaf.virt.rawValue, leaf.descriptor.frame.rawValue, leaf.size, a)
    }

    /// Under `unmapped`, a page that becomes private leaves every VMM mapping of guest
    /// `guest`'s memory (guest_memfd's invalidation: private memory has no user PTE).
    public mutating func unmapPrivate(guest: Int, pfn: UInt64) {
        guard config.inaccessibleCheck == .unmapped else { return }
        for pi in processes.indices {
            for v in processes[pi].vmas {
                guard case .guestMemory(guest, let first, _) = v.backing, pfn >= first + v.pgoff, pfn - first - v.pgoff < v.pages else { continue }
                let va = v.start + (pfn - first - v.pgoff) << pageShift
                if let leaf = processes[pi].pageTable.lookup(VirtAddr(va)), leaf.size == .size4K { release(pi, leaf) }
            }
        }
    }
}
