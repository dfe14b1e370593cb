import Hardware
import PageTables

/// What arch_make_folio_accessible did.
public enum AccessibleBy: Hashable, Sendable {
    /// Nothing to do: a large folio, or PG_arch_1 clear.
    case nothing
    /// uv_pin_shared succeeded: the guest had shared the page.
    case pinnedShared
    /// uv_convert_from_secure: the page exported.
    case exported
}

extension Folio {
    /// arch_make_folio_accessible: a large folio or one without PG_arch_1 needs nothing;
    /// otherwise uv_pin_shared, then uv_convert_from_secure, each clearing PG_arch_1 when it
    /// succeeds; -EINVAL when both fail. Linux 6.18 arch/s390/kernel/uv.c.
    public mutating func makeAccessible(pfn: UInt64, _ uv: inout Ultravisor) -> Result<AccessibleBy, Errno> {
        if order > 0 || !flags.contains(.arch1) { return .success(.nothing) }
        if uv.pinShared(pfn).ok {
            flags.remove(.arch1)
            return .success(.pinnedShared)
        }
        if uv.convertFromSecure(pfn).ok {
            flags.remove(.arch1)
            return .success(.exported)
        }
        return .failure(.EINVAL)
    }

    /// uv_convert_from_secure_folio (and _pte): a small folio exported, PG_arch_1 cleared on
    /// success; a large one is never secure (0). uv.c.
    public mutating func convertFromSecure(pfn: UInt64, _ uv: inout Ultravisor) -> Errno? {
        if order > 0 { return nil }
        guard uv.convertFromSecure(pfn).ok else { return .EINVAL }
        flags.remove(.arch1)
        return nil
    }

    /// uv_destroy_folio (and _pte): a small folio destroyed (cleared, not exported),
    /// PG_arch_1 cleared on success; a large one is never secure (0). uv.c.
    public mutating func destroySecure(pfn: UInt64, _ uv: inout Ultravisor) -> Errno? {
        if order > 0 { return nil }
        guard uv.destroyPage(pfn).ok else { return .EINVAL }
        flags.remove(.arch1)
        return nil
    }
}

/// How an import of a guest page ended: make_hva_secure's return value, with the step that
/// decided it.
public struct ImportOutcome: Outcome, Hashable {
    /// 0, or the errno make_hva_secure returns.
    public let errno: Errno?
    public let why: Why
    /// What make_folio_secure said before s390_wiggle_split_folio turned it into -EAGAIN
    /// (-E2BIG, -EBUSY).
    public var cause: Errno? = nil
    /// The UVC's answer, when the import got that far.
    public let uvc: UVCResult?
    /// s390_wiggle_split_folio split a large folio.
    public let split: Bool

    public var kind: OutcomeKind { errno == nil ? .success : .error }
    public var description: String {
        guard let errno else { return "0: imported (\(uvc.map { "\($0.command) \($0)" } ?? "already secure"))" }
        var s = "\(errno)" + (cause.map { " after \($0)" } ?? "") + ": \(why)"
        if let uvc { s += " (\(uvc.command) \(uvc))" }
        if split { s += "; s390_wiggle_split_folio split the folio" }
        return s
    }
}

extension UserMM {
    /// The references a folio holds beyond its mappings' and the caller's own
    /// (expected_folio_refs: its mappings, plus the swap cache's or the page cache's).
    /// uv.c expected_folio_refs.
    func expectedRefs(_ f: Folio) -> Int32 {
        f.mapcount + (f.flags.contains(.swapCache) || f.flags.contains(.pageCache) ? 1 : 0)
    }

    /// make_hva_secure for guest `g`'s page `gfn`, which the guest's memory slot places at
    /// `hva` in process `pi` (the VMM): the VMA (-EFAULT), the folio the PTE maps (none:
    /// -ENXIO), a large folio (-E2BIG), a PTE that is not writable (-ENXIO); then
    /// make_folio_secure: folio_trylock (-EAGAIN), the export first when the mm backs more
    /// than one protected guest and the UV lacks the misc feature, then __make_folio_secure:
    /// writeback (-EBUSY), the reference freeze at the expected count (-EBUSY), PG_arch_1
    /// set, one UVC (busy or partial: -EAGAIN; rc 0x10a: -ENXIO; else -EINVAL). -E2BIG and
    /// -EBUSY go through s390_wiggle_split_folio (writeback waited for, a large folio split)
    /// and end in -EAGAIN. Linux 6.18 arch/s390/kernel/uv.c.
    public mutating func makeHVASecure(process pi: Int, hva: UInt64, guest g: Int, gfn: UInt64, miscFeature: Bool, _ uv: inout Ultravisor) -> ImportOutcome {
        guard processes[pi].vmaIndex(hva) != nil else { return ImportOutcome(errno: .EFAULT, why: "no VMA at the memory slot's address", uvc: nil, split: false) }
        guard let leaf = processes[pi].pageTable.lookup(VirtAddr(hva)), leaf.descriptor.attributes.contains(.present),
              !leaf.descriptor.attributes.contains(.special), let h = folioHead(leaf.translate(VirtAddr(hva)).rawValue >> pageShift) else {
            return ImportOutcome(errno: .ENXIO, why: "no folio mapped (folio_walk_start)", uvc: nil, split: false)
        }
        var errno: Errno?, why: Why = "", uvc: UVCResult?
        if folios[h]!.order > 0 {
            (errno, why) = (.E2BIG, "a large folio cannot be secure")
        } else if !leaf.descriptor.attributes.contains(.writable) {
            return ImportOutcome(errno: .ENXIO, why: "the host PTE is not writable", uvc: nil, split: false)
        } else if folios[h]!.flags.contains(.locked) {
            return ImportOutcome(errno: .EAGAIN, why: "folio_trylock failed", uvc: nil, split: false)
        } else {
            if !miscFeature && processes[pi].protectedCount > 1 { _ = uv.convertFromSecure(h) }  // should_export_before_import
            if folios[h]!.flags.contains(.writeback) {
                (errno, why) = (.EBUSY, "the folio is under writeback")
            } else if folios[h]!.refcount != expectedRefs(folios[h]!) {
                (errno, why) = (.EBUSY, "folio_ref_freeze failed: references beyond the mappings (a pin, a GUP reference)")
            } else {
                folios[h]!.flags.insert(.arch1)
                let r = uv.convertToSecure(guest: g, gfn: gfn, pfn: h)
                uvc = r
                switch r.cc {
                case 0: return ImportOutcome(errno: nil, why: "", uvc: r, split: false)
                case 2, 3: return ImportOutcome(errno: .EAGAIN, why: "the UVC was busy or partial", uvc: r, split: false)
                default:
                    return r.rc == UVCResult.rcNotMapped ? ImportOutcome(errno: .ENXIO, why: "the UV found the page not mapped", uvc: r, split: false)
                        : ImportOutcome(errno: .EINVAL, why: "the UVC failed", uvc: r, split: false)
                }
            }
        }
        // s390_wiggle_split_folio: wait for writeback, drain the LRU caches, split a large folio.
        folios[h]!.flags.remove(.writeback)
        var split = false
        if folios[h]!.order > 0 { split = splitFolio(pi, hva, h) == nil }
        return ImportOutcome(errno: .EAGAIN, why: why, cause: errno, uvc: uvc, split: split)
    }

    /// s390_uv_destroy_range over [start, end) of process `pi`: each small folio a present
    /// PTE maps is destroyed (uv_destroy_folio), walking only what is mapped (the page-table
    /// walk of the range). arch/s390/mm/gmap.c (6.18).
    public mutating func destroySecureRange(process pi: Int, start: UInt64, end: UInt64, _ uv: inout Ultravisor) -> Int {
        var done = 0
        for v in processes[pi].vmas where v.end > start && v.start < end {
            let a = max(v.start, start), b = min(v.end, end)
            guard let leaves = try? processes[pi].pageTable.leaves(virt: VirtAddr(a), size: b - a) else { continue }
            for leaf in leaves where leaf.size == .size4K && leaf.descriptor.attributes.contains(.present) {
                let pfn = leaf.descriptor.frame.rawValue
                guard uv.isSecure(pfn), let h = folioHead(pfn), folios[h]!.order == 0 else { continue }
                if folios[h]!.destroySecure(pfn: h, &uv) == nil { done += 1 }
            }
        }
        return done
    }
}

/// How the host kernel ended a secure-storage access exception (PGM 0x3d) on a CPU access.
public enum SecureStorageAccess: Outcome, Hashable {
    /// No exception: the page is not secure, or its guest shared it.
    case ok
    /// The handler made the folio accessible and the access was retried.
    case resolved(AccessibleBy)
    /// Kernel address: arch_make_folio_accessible failed, BUG().
    case bug(Errno)
    /// User address: it failed (SIGSEGV), or no VMA holds it (SIGSEGV, SEGV_MAPERR).
    case sigsegv(Why)
    /// The handler found no folio reference to take (folio_try_get failed) and returned:
    /// the access faults again, for ever.
    case repeats

    public var kind: OutcomeKind {
        switch self {
        case .ok, .resolved: .success
        case .bug, .sigsegv, .repeats: .fault
        }
    }
    public var description: String {
        switch self {
        case .ok: "ok"
        case .resolved(.exported): "ok after PGM 0x3d: arch_make_folio_accessible exported the page"
        case .resolved(.pinnedShared): "ok after PGM 0x3d: arch_make_folio_accessible pinned the shared page"
        case .resolved(.nothing): "ok after PGM 0x3d: nothing to do"
        case .bug(let e): "kernel BUG at arch/s390/mm/fault.c: do_secure_storage_access (arch_make_folio_accessible \(e))"
        case .sigsegv(let why): "SIGSEGV: \(why)"
        case .repeats: "hang: the access faults again for ever (do_secure_storage_access found nothing to make accessible)"
        }
    }
}

extension Kernel {
    /// A host CPU access to frame `pfn` on s390: no exception unless the UV holds it as a
    /// secure page that is not shared; then do_secure_storage_access: a kernel address (the
    /// identity map, kmap) takes the folio (none: the handler returns and the access
    /// repeats), makes it accessible, and BUG()s on failure; a user address (the process's
    /// own access, a uaccess copy) does the same with the folio its PTE maps (the model is
    /// given the frame: the VMA lookup's SEGV_MAPERR never arises), and a failure is
    /// SIGSEGV. The misc feature's TEID bit 61 check is not modelled (every exception here
    /// has a valid address). Linux 6.18 arch/s390/mm/fault.c.
    public mutating func secureStorageAccess(pfn: UInt64, userAddress: Bool, _ uv: inout Ultravisor) -> SecureStorageAccess {
        guard !uv.hostAccessible(pfn) else { return .ok }
        // No folio to take (folio_try_get, or folio_walk_start on a user address): the
        // handler returns and the access faults again.
        guard let h = user.folioHead(pfn), user.folios[h]!.refcount > 0 else { return .repeats }
        switch user.folios[h]!.makeAccessible(pfn: h, &uv) {
        case .success(let by):
            // 0 from a folio without PG_arch_1 leaves the page secure: the same again.
            return uv.hostAccessible(pfn) ? .resolved(by) : .repeats
        case .failure(let e): return userAddress ? .sigsegv("arch_make_folio_accessible failed") : .bug(e)
        }
    }
}

extension UserMM {
    /// s390's side of the kernel's page events: a protected mm's cleared PTE exports its
    /// page (uv_convert_from_secure_pte, arch/s390/include/asm/pgtable.h), and swap I/O
    /// moves a frame's content to its slot and back (the device copies what the frame holds,
    /// secure or not: a device's access is not checked by the CPU).
    /// Returns how many pages the PGM 0x3d handler exported on the way (a COW copy's read).
    @discardableResult
    public mutating func takeS390Events(_ events: [UserMMEvent], _ uv: inout Ultravisor) -> Int {
        var handlerExports = 0
        for e in events {
            switch e {
            case .pteCleared(let pfn):
                if let h = folioHead(pfn) { _ = folios[h]!.convertFromSecure(pfn: h, &uv) } else { _ = uv.convertFromSecure(pfn) }
            case .swapOut(let pfn, let slot): uv.swapDevice[slot] = uv.contents(pfn)
            case .swapIn(let slot, let pfn):
                uv.setContent(pfn, uv.swapDevice[slot] ?? 0)
                uv.swapDevice[slot] = nil
            case .swapFreed(let slot): uv.swapDevice[slot] = nil
            case .allocated(let pfn, let order):
                for k in 0..<UInt64(1 << order) { uv.setContent(pfn + k, 0) }
            case .copied(let from, let to):
                // __wp_page_copy_user reads the source: a secure one takes PGM 0x3d first.
                if !uv.hostAccessible(from), let h = folioHead(from) {
                    if case .success(.exported) = folios[h]!.makeAccessible(pfn: h, &uv) { handlerExports += 1 }
                }
                uv.copyContent(from: from, to: to)
            }
        }
        return handlerExports
    }
}

extension UserMM {
    /// arch_make_folio_accessible on the folio with head `head`.
    public mutating func makeFolioAccessible(head: UInt64, _ uv: inout Ultravisor) -> Result<AccessibleBy, Errno> {
        folios[head]!.makeAccessible(pfn: head, &uv)
    }

    /// uv_destroy_folio on the folio holding `pfn`.
    public mutating func destroySecureFolio(pfn: UInt64, _ uv: inout Ultravisor) -> Errno? {
        guard let h = folioHead(pfn) else { return .EINVAL }
        return folios[h]!.destroySecure(pfn: h, &uv)
    }

    /// __kvm_s390_pv_destroy_page: a large folio is -EFAULT; uv_destroy_folio, else
    /// uv_convert_from_secure_folio. arch/s390/kvm/kvm-s390.h.
    public mutating func pvDestroyPage(pfn: UInt64, _ uv: inout Ultravisor) -> Errno? {
        guard let h = folioHead(pfn) else { return nil }  // kvm_s390_pv_destroy_page: no page, 0
        if folios[h]!.order > 0 { return .EFAULT }
        if folios[h]!.destroySecure(pfn: h, &uv) == nil { return nil }
        return folios[h]!.convertFromSecure(pfn: h, &uv)
    }
}
