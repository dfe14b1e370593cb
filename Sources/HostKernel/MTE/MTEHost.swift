import Hardware
import PageTables

/// The forms mte_sync_tags (arch/arm64/kernel/mte.c, called from set_pte_at) took, as the
/// policy slot `host.mte-sync`. docs/mte.md has each form's code and what it fixed.
public enum MTESyncForm: String, CaseIterable, Sendable {
    /// Tags synced only for PTEs with PROT_MTE (pte_tagged): a guest's tags in memory the
    /// VMM mapped without PROT_MTE are saved at swap-out but never restored.
    case v5_10 = "v5.10"
    /// 69e3b846d8a7 "arm64: mte: Sync tags for pages where PTE is untagged": user-accessible
    /// PTEs replacing a swap entry restore tags; PG_mte_tagged is set even when nothing was
    /// restored or cleared.
    case v5_14 = "v5.14"
    /// a8e5e5146ad0 "arm64: mte: Avoid setting PG_mte_tagged if no tags cleared or
    /// restored" (stable 5.14+): the flag tested, then test-and-set again where tags are
    /// written.
    case v5_14Stable = "v5.14-stable"
    /// d77e59a8fccd "arm64: mte: Lock a page for MTE tag initialisation" with e059853d14ca
    /// and c4c597f1b367: PG_mte_lock, try_page_mte_tagging, the flag set after the tags
    /// (merged for 6.2).
    case v6_1Lock = "v6.1-lock"

    public var summary: String {
        switch self {
        case .v5_10: "sync only PROT_MTE PTEs: tags of untagged mappings lost through swap (the seed's starting point)"
        case .v5_14: "69e3b846d8a7: restore swap tags for any user PTE; flag set even with nothing written"
        case .v5_14Stable: "a8e5e5146ad0 (stable): the flag set only where tags are cleared or restored"
        case .v6_1Lock: "d77e59a8fccd: PG_mte_lock, try_page_mte_tagging, flag set after the tags"
        }
    }
    /// KVM refuses a VM_SHARED memslot (ea7fc1bb1cd1) until c911f0d46879 (6.2).
    public var kvmRefusesShared: Bool { self != .v6_1Lock }
}

/// A VMA of the VMM's address space, with the flags MTE reads. Linux include/linux/mm.h.
public struct UserVMA: Hashable, Sendable {
    public let name: String
    public let pages: Int
    /// VM_MTE (PROT_MTE), VM_MTE_ALLOWED (anonymous or shmem), VM_SHARED.
    public var mte: Bool
    public let mteAllowed: Bool
    public let shared: Bool
    /// One entry per page: empty, a present page, or a swap entry.
    public var ptes: DigestedArray<UserPTE>
    /// mprotect(PROT_NONE): no access, no stage 2.
    public var protNone = false
    /// Pages shared with a forked child, copied on the next write.
    public var cow = DigestedSet<Int>()
    /// For a forked child's copy of a VMA (`NAME.child`): the parent's VMA.
    public var parent: Int?
}

/// A page of a VMA, by index.
public struct UserPage: Hashable, Sendable {
    public let vma: Int, page: Int
}

/// A user PTE as MTE sees it.
public enum UserPTE: Hashable, Sendable {
    case none
    case present(pfn: UInt64)
    case swap(entry: UInt64)
}

/// What a page's tags became when it was mapped (set_pte_at or a stage-2 map).
public enum MTETagOutcome: Hashable, Sendable {
    case restored, cleared, kept, untouched
}

/// The host's MTE state: the physical tags, PG_mte_tagged and PG_mte_lock, the tags saved
/// for swap entries (mteswap.c's xarray), the VMM's VMAs, and what the model expects each
/// page to hold (to count tags lost). Pages come from a LIFO free list, as the page
/// allocator's per-CPU lists hand back the page last freed.
public struct MTEHost: Hashable, Sendable {
    public var form: MTESyncForm = .v6_1Lock
    /// The actions mte_restore_page_tags takes (`machine.mte-restore-steps`): 2 by default.
    public var restoreSteps = 2
    public internal(set) var tags = MTETags()
    /// PG_mte_tagged (PG_arch_2) and PG_mte_lock (PG_arch_3), by pfn.
    public internal(set) var tagged = DigestedSet<UInt64>()
    public internal(set) var locked = DigestedSet<UInt64>()
    /// mte_pages: saved tags by swap entry.
    public internal(set) var saved = DigestedDictionary<UInt64, MTETags.Page>()
    public internal(set) var vmas: [UserVMA] = []
    /// The tags last written to each (VMA, page): a page mapped with others lost them.
    var expected = DigestedDictionary<UserPage, MTETags.Page>()
    var freePFNs = DigestedArray<UInt64>(repeating: 0, count: 0)
    /// Pages read back from swap and not yet mapped everywhere (the swap cache), by entry:
    /// two PTEs of one swap entry map the one page.
    public internal(set) var swapCache = DigestedDictionary<UInt64, UInt64>()
    var nextPFN: UInt64 = 0
    var nextSwap: UInt64 = 1
    public internal(set) var stats = MTEStats()

    public init() {}

    /// Whether the collections keep their digests (`trackDigests`): VMAs made later do too.
    public private(set) var tracksDigests = false

    /// Starts keeping the digests `digest` reads (the explorer, at its setup state).
    public mutating func trackDigests() {
        tracksDigests = true
        tags.track()
        tagged.track()
        locked.track()
        saved.track()
        swapCache.track()
        expected.track()
        freePFNs.track()
        for v in vmas.indices {
            vmas[v].ptes.track()
            vmas[v].cow.track()
        }
    }

    /// A fingerprint of everything set_pte_at, user_mem_abort and the MTE steps change, from
    /// the digests the collections keep: O(VMAs), whatever the pages held. For the explorer,
    /// after `trackDigests`.
    public var digest: UInt64 {
        // Written out, not looped over array literals (each would be an allocation per state).
        var d = Digest.combine(tags.digest, tagged.digest)
        d = Digest.combine(Digest.combine(d, locked.digest), saved.digest)
        d = Digest.combine(Digest.combine(d, swapCache.digest), expected.digest)
        d = Digest.combine(d, freePFNs.digest)
        d = Digest.combine(d, nextPFN ^ nextSwap << 40 ^ UInt64(restoreSteps) << 56)
        d = Digest.combine(d, UInt64(stats.saved) ^ UInt64(stats.restored) << 16 ^ UInt64(stats.cleared) << 32 ^ UInt64(stats.lost) << 48)
        d = Digest.combine(d, UInt64(stats.tagCheckFaults) ^ UInt64(stats.saveFailures) << 16 ^ UInt64(stats.copied) << 32 ^ UInt64(stats.staleMaps) << 48)
        for v in vmas {
            d = Digest.combine(d, Digest.combine(v.ptes.digest, v.cow.digest))
            d = Digest.combine(d, UInt64(v.mte ? 1 : 0) | UInt64(v.protNone ? 2 : 0) | UInt64(bitPattern: Int64(v.parent ?? -1)) << 2)
        }
        return d
    }

    /// Allocates a page; false when RAM is exhausted.
    mutating func allocPage(_ ram: [Range<UInt64>]) -> UInt64? {
        if let p = freePFNs.popLast() { return p }
        if nextPFN == 0, let last = ram.last { nextPFN = last.upperBound >> pageShift }
        guard let lowest = ram.first, nextPFN > lowest.lowerBound >> pageShift else { return nil }
        nextPFN -= 1
        return nextPFN
    }

    /// Frees a page: its flags are reset (free_pages_prepare); its tags stay in memory.
    mutating func freePage(_ pfn: UInt64) {
        tagged.remove(pfn)
        locked.remove(pfn)
        freePFNs.append(pfn)
    }

    // The page flags, as arch/arm64/include/asm/mte.h has them.

    /// test_and_set_bit(PG_mte_tagged): the old value.
    mutating func testAndSetTagged(_ pfn: UInt64) -> Bool { !tagged.insert(pfn).inserted }
    /// page_mte_tagged (test_bit, smp_rmb when set).
    public func pageMTETagged(_ pfn: UInt64) -> Bool { tagged.contains(pfn) }
    /// set_page_mte_tagged: smp_wmb, then set_bit.
    mutating func setPageMTETagged(_ pfn: UInt64) { tagged.insert(pfn) }
    /// try_page_mte_tagging: true for the caller that takes PG_mte_lock first (it
    /// initialises the tags); a later caller waits for PG_mte_tagged and gets false.
    mutating func tryPageMTETagging(_ pfn: UInt64) -> Bool { locked.insert(pfn).inserted }

    // Tags written by the CPU.

    mutating func clearTags(_ pfn: UInt64) {
        tags.clear(pfn)
        stats.cleared += 1
    }

    /// set_pte_at's MTE part for a new user PTE mapping `pfn` in VMA `vma` (tagged when the
    /// VMA has PROT_MTE), replacing `old`: the form's program (`MTESyncForm.program`) run
    /// to the end on one CPU. Linux arch/arm64/include/asm/pgtable.h set_pte_at;
    /// arch/arm64/kernel/mte.c mte_sync_tags.
    mutating func setPTE(vma v: Int, page i: Int, pfn: UInt64, old: UserPTE) {
        var t = MTESyncThread(vma: v, page: i, pfn: pfn, old: old)
        while !t.done { step(&t) }
    }

    /// A page now mapped: its tags against those last written to it. A loss counts once:
    /// the page is not followed again until its tags are written again.
    mutating func noteMapped(vma v: Int, page i: Int, pfn: UInt64) {
        guard let want = expected[UserPage(vma: v, page: i)] else { return }
        if tags.page(pfn) != want {
            stats.lost += 1
            expected[UserPage(vma: v, page: i)] = nil
        }
    }

    /// The tags last written to a page, if any were.
    public func expectedTags(vma v: Int, page i: Int) -> MTETags.Page? { expected[UserPage(vma: v, page: i)] }

    /// A PTE of swap entry `e` now maps `pfn`: while another PTE still holds the entry, the
    /// page stays in the swap cache and the tags stay saved; with the last, swap_free drops
    /// both (arch_swap_invalidate_page).
    /// A swap entry is only ever held at one page index (swap-out and fork keep the index),
    /// so the check looks at that index of each VMA: O(VMAs), not O(pages).
    public mutating func swapDone(_ e: UInt64, _ pfn: UInt64, page i: Int) {
        let stillHeld = vmas.contains { i < $0.ptes.count && $0.ptes[i] == .swap(entry: e) }
        if stillHeld {
            swapCache[e] = pfn
        } else {
            saved[e] = nil
            swapCache[e] = nil
        }
    }

    /// The page a swap entry is read into: the swap cache's, or a new one (swapin_readahead).
    public mutating func swapCachePage(_ entry: UInt64, ram: [Range<UInt64>]) -> UInt64? {
        if let p = swapCache[entry] { return p }
        guard let p = allocPage(ram) else { return nil }
        swapCache[entry] = p
        return p
    }

    /// A map of `pfn` for a page back from swap entry `entry`: stale when the tags saved for
    /// the entry are not (all) in the page yet.
    public mutating func noteMapFromSwap(_ entry: UInt64, _ pfn: UInt64) {
        if let want = saved[entry], tags.page(pfn) != want { stats.staleMaps += 1 }
    }

    /// Records tags written to a page by its user or its guest.
    mutating func noteWritten(vma v: Int, page i: Int, _ page: MTETags.Page) {
        expected[UserPage(vma: v, page: i)] = page
    }

    /// arch_prepare_to_swap and the unmap: the tags saved under a new swap entry if the page
    /// is PG_mte_tagged (mte_save_tags), the PTE replaced by the entry, the page freed.
    /// `failAllocation`: kmalloc of the tag storage fails, and swap_writepage leaves the page
    /// mapped (-ENOMEM). Linux arch/arm64/mm/mteswap.c; mm/page_io.c swap_writepage.
    /// The other process's copy of VMA `v` after a fork (the child's, or the parent's).
    public func partner(_ v: Int) -> Int? { vmas[v].parent ?? vmas.indices.first { vmas[$0].parent == v } }

    /// try_to_unmap reaches every PTE of the page: the forked partner's too, when it shares it.
    public mutating func swapOut(vma v: Int, page i: Int, failAllocation: Bool = false) -> KernelStatus {
        guard case .present(let pfn) = vmas[v].ptes[i] else { return .error(.EINVAL) }
        let entry = nextSwap
        if pageMTETagged(pfn) {
            if failAllocation {
                stats.saveFailures += 1
                return .error(.ENOMEM)
            }
            saved[entry] = tags.page(pfn)
            stats.saved += 1
        }
        nextSwap += 1
        vmas[v].ptes[i] = .swap(entry: entry)
        if let p = partner(v), vmas[p].ptes[i] == .present(pfn: pfn) { vmas[p].ptes[i] = .swap(entry: entry) }
        freePage(pfn)
        return .ok
    }

    /// handle_mm_fault for a page of VMA `v`: do_anonymous_page (a new page) or
    /// do_swap_page (a new page, its contents read back), then set_pte_at; nil when RAM is
    /// exhausted. The swap slot is freed after (swap_free → arch_swap_invalidate_page).
    public mutating func fault(vma v: Int, page i: Int, ram: [Range<UInt64>]) -> UInt64? {
        let old = vmas[v].ptes[i]
        if case .present(let pfn) = old { return pfn }
        var cached: UInt64?
        if case .swap(let e) = old { cached = swapCache[e] }
        guard let pfn = cached ?? allocPage(ram) else { return nil }
        setPTE(vma: v, page: i, pfn: pfn, old: old)
        if case .swap(let e) = old { swapDone(e, pfn, page: i) }
        return pfn
    }

    /// swapoff (try_to_unuse): every swapped-out page of the VMM is read back and its PTE set
    /// again by unuse_pte, which calls set_pte_at with the VMA's protection (so a PROT_NONE
    /// mapping's page is not user-accessible there), then arch_swap_invalidate_area frees
    /// every tag the area still holds. Returns the pages brought back. Linux mm/swapfile.c;
    /// arch/arm64/mm/mteswap.c mte_invalidate_tags_area.
    public mutating func swapoff(ram: [Range<UInt64>]) -> Int {
        var back = 0
        for v in vmas.indices {
            for i in vmas[v].ptes.indices {
                guard case .swap(let e) = vmas[v].ptes[i], let pfn = allocPage(ram) else { continue }
                setPTE(vma: v, page: i, pfn: pfn, old: .swap(entry: e))
                back += 1
            }
        }
        saved.removeAll()
        swapCache.removeAll()  // every entry of the area is gone (try_to_unuse empties the swap cache)
        return back
    }

    /// mmap of an anonymous, shmem or file mapping; PROT_MTE needs VM_MTE_ALLOWED
    /// (anonymous or shmem), else -EINVAL (arch_validate_flags).
    public mutating func mmap(name: String, pages: Int, protMTE: Bool, backing: String, shared: Bool) -> KernelStatus {
        let allowed = backing == "anon" || backing == "shmem"
        if protMTE && !allowed { return .error(.EINVAL) }
        vmas.append(UserVMA(name: name, pages: pages, mte: protMTE, mteAllowed: allowed, shared: shared,
                            ptes: DigestedArray(repeating: UserPTE.none, count: pages)))
        if tracksDigests {
            vmas[vmas.count - 1].ptes.track()
            vmas[vmas.count - 1].cow.track()
        }
        return .ok
    }

    public func vmaIndex(_ name: String) -> Int? { vmas.firstIndex { $0.name == name } }

    /// A user store of `tag` to every granule of a page (STG through a PROT_MTE mapping; an
    /// untagged mapping's tag stores are ignored: Normal untagged memory reads tags as zero
    /// and ignores writes, Arm ARM D10.3).
    public mutating func userStoreTags(vma v: Int, page i: Int, tag: UInt8, ram: [Range<UInt64>]) -> KernelStatus {
        if vmas[v].protNone { return .error(.EFAULT) }
        guard let faulted = fault(vma: v, page: i, ram: ram) else { return .error(.ENOMEM) }
        let pfn = breakCOW(vma: v, page: i, ram: ram) ?? faulted
        guard vmas[v].mte else { return .ok }
        tags.set(pfn, MTETags.Page(all: tag))
        noteWritten(vma: v, page: i, tags.page(pfn))
        return .ok
    }

    /// A tag-checked user load with pointer tag `tag`: a tag check fault when the page's
    /// tags differ (SIGSEGV, SEGV_MTESERR); untagged mappings are not checked.
    public mutating func userLoad(vma v: Int, page i: Int, tag: UInt8, ram: [Range<UInt64>]) -> MTEAccess {
        if vmas[v].protNone { return .segv }
        guard let pfn = fault(vma: v, page: i, ram: ram) else { return .noMemory }
        guard vmas[v].mte else { return .ok }
        if tags.check(pa: pfn << pageShift, logicalTag: tag) { return .ok }
        stats.tagCheckFaults += 1
        return .tagCheckFault(found: tags.page(pfn)[0])
    }

    /// Writes tags for a guest (its stage-2 mapping is tagged when the VM has MTE).
    public mutating func guestStoreTags(vma v: Int, page i: Int, pfn: UInt64, tag: UInt8) {
        tags.set(pfn, MTETags.Page(all: tag))
        noteWritten(vma: v, page: i, tags.page(pfn))
    }

    /// sanitise_mte_tags for a page a stage-2 fault maps: tags cleared the first time, in
    /// the form's shape. Linux arch/arm64/kvm/mmu.c.
    public mutating func sanitise(_ pfn: UInt64) {
        switch form {
        case .v5_10, .v5_14, .v5_14Stable:
            if !pageMTETagged(pfn) {
                clearTags(pfn)
                setPageMTETagged(pfn)
            }
        case .v6_1Lock:
            if tryPageMTETagging(pfn) {
                clearTags(pfn)
                setPageMTETagged(pfn)
            }
        }
    }

    public mutating func countTagCheckFault() { stats.tagCheckFaults += 1 }

    /// KVM_ARM_MTE_COPY_TAGS's lock and flag (kvm/guest.c, d77e59a8fccd on).
    public mutating func tryPageMTETaggingForCopy(_ pfn: UInt64) -> Bool { tryPageMTETagging(pfn) }
    public mutating func setTaggedForCopy(_ pfn: UInt64) { setPageMTETagged(pfn) }

    /// mprotect of a whole VMA: PROT_MTE added (VM_MTE; -EINVAL without VM_MTE_ALLOWED),
    /// its present PTEs rewritten tagged through set_pte_at (change_protection); or
    /// PROT_NONE, which leaves the pages and their tags alone (the caller unmaps stage 2).
    /// Linux mm/mprotect.c do_mprotect_pkey.
    public mutating func mprotect(vma v: Int, protMTE: Bool, protNone: Bool) -> KernelStatus {
        if protMTE && !vmas[v].mteAllowed { return .error(.EINVAL) }
        vmas[v].protNone = protNone
        if protMTE && !vmas[v].mte {
            vmas[v].mte = true
            for (i, pte) in vmas[v].ptes.enumerated() where !protNone {
                if case .present(let pfn) = pte { setPTE(vma: v, page: i, pfn: pfn, old: pte) }
            }
        }
        return .ok
    }

    /// fork: the child shares every present page of the VMM's private VMAs copy-on-write;
    /// shared VMAs stay shared. Linux kernel/fork.c dup_mmap, mm/memory.c copy_pte_range.
    public mutating func fork() {
        for v in vmas.indices where !vmas[v].shared && vmas[v].parent == nil {
            for (i, pte) in vmas[v].ptes.enumerated() { if case .present = pte { vmas[v].cow.insert(i) } }
            // The child's copy (the previous child exits first: pages only it held are freed).
            var child = vmas[v]
            child.parent = v
            if let c = partner(v) {
                for (i, pte) in vmas[c].ptes.enumerated() {
                    if case .present(let p) = pte, vmas[v].ptes[i] != pte { freePage(p) }
                }
                child = UserVMA(name: vmas[c].name, pages: vmas[v].pages, mte: vmas[v].mte, mteAllowed: vmas[v].mteAllowed,
                                shared: false, ptes: vmas[v].ptes, protNone: vmas[v].protNone, cow: vmas[v].cow, parent: v)
                vmas[c] = child
            } else {
                vmas.append(UserVMA(name: vmas[v].name + ".child", pages: vmas[v].pages, mte: vmas[v].mte, mteAllowed: vmas[v].mteAllowed,
                                    shared: false, ptes: vmas[v].ptes, protNone: vmas[v].protNone, cow: vmas[v].cow, parent: v))
            }
        }
    }

    /// A write to a copy-on-write page: a new page, the data and (for a PG_mte_tagged
    /// source) the tags copied by copy_user_highpage, the PTE rewritten; the child keeps the
    /// old page. Returns the new frame, or nil when the page is not copy-on-write.
    /// Linux mm/memory.c wp_page_copy; arch/arm64/mm/copypage.c copy_highpage.
    public mutating func breakCOW(vma v: Int, page i: Int, ram: [Range<UInt64>]) -> UInt64? {
        guard vmas[v].cow.contains(i), case .present(let from) = vmas[v].ptes[i], let to = allocPage(ram) else { return nil }
        vmas[v].cow.remove(i)
        if let p = partner(v) { vmas[p].cow.remove(i) }  // the other copy is the old page's only user now
        if pageMTETagged(from) {
            switch form {
            case .v5_10, .v5_14, .v5_14Stable:
                setPageMTETagged(to)  // set_bit before the copy
                tags.copy(from: from, to: to)
            case .v6_1Lock:
                _ = tryPageMTETagging(to)
                tags.copy(from: from, to: to)
                setPageMTETagged(to)
            }
            stats.copied += 1
        }
        setPTE(vma: v, page: i, pfn: to, old: .present(pfn: from))
        return to
    }

    public mutating func noteGuestMapped(vma v: Int, page i: Int, pfn: UInt64) { noteMapped(vma: v, page: i, pfn: pfn) }
}

/// How a tag-checked access ended.
public enum MTEAccess: Hashable, Sendable, Outcome {
    case ok
    /// A tag check fault: the allocation tag found at the first granule.
    case tagCheckFault(found: UInt8)
    case noMemory
    /// An access through a PROT_NONE mapping: SIGSEGV (SEGV_ACCERR).
    case segv

    public var description: String {
        switch self {
        case .ok: "ok"
        case .tagCheckFault(let t): "tag check fault (allocation tag \(hex(UInt64(t)))): SIGSEGV SEGV_MTESERR"
        case .noMemory: "-ENOMEM"
        case .segv: "SIGSEGV SEGV_ACCERR"
        }
    }
    public var kind: OutcomeKind {
        switch self {
        case .ok: .success
        case .tagCheckFault, .segv: .fault
        case .noMemory: .error
        }
    }
}

/// What MTE counts.
public struct MTEStats: Hashable, Sendable {
    public var saved = 0, restored = 0, cleared = 0, lost = 0, tagCheckFaults = 0, saveFailures = 0, copied = 0
    /// PTE or stage-2 maps of a page back from swap whose saved tags were not (yet) in it.
    public var staleMaps = 0
    public init() {}
}

extension MTEHost {
    /// The MTE metrics of a machine with `machine.mte`.
    public static let metrics: [Metric<MTEStats>] = [
        Metric("mte_tags_saved", "pages", "pages whose tags mte_save_tags saved at swap-out") { UInt64($0.saved) },
        Metric("mte_tags_restored", "pages", "pages whose tags were restored from swap") { UInt64($0.restored) },
        Metric("mte_tags_cleared", "pages", "pages whose tags were cleared (mte_clear_page_tags)") { UInt64($0.cleared) },
        Metric("mte_tags_lost", "pages", "pages mapped with tags that differ from the last tags written to them") { UInt64($0.lost) },
        Metric("mte_tag_check_faults", "accesses", "tag-checked loads whose pointer tag differed from the memory's") { UInt64($0.tagCheckFaults) },
        Metric("mte_swap_save_failures", "pages", "swap-outs refused because the tag storage could not be allocated") { UInt64($0.saveFailures) },
        Metric("mte_tags_copied", "pages", "copy-on-write copies that carried a page's tags (copy_highpage)") { UInt64($0.copied) },
        Metric("mte_stale_maps", "maps", "PTE or stage-2 maps of a page back from swap before its saved tags were in it") { UInt64($0.staleMaps) },
    ]
}
