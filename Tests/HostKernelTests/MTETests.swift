import Testing
import Hardware
@testable import HostKernel
import PageTables
import Expectations

/// MTE on the host: the tag storage, the page flags, mte_sync_tags in each form, swap's
/// save, restore and invalidate, and tag-checked accesses, each with its exact tags.
struct MTETests {
    static let ram: [Range<UInt64>] = [0x4000_0000..<0x8000_0000]

    /// One page's tags: 4 bits per 16-byte granule, 128 bytes, none held when all zero.
    @Test func tagsArePackedFourBitsPerGranule() {
        var page = MTETags.Page()
        page[0] = 0xa
        page[1] = 0x3
        page[255] = 0xf
        expectEqual(page.bytes[0], 0x3a)
        expectEqual(page.bytes[127], 0xf0)
        expectEqual(page[1], 3)
        expectEqual(page[254], 0)
        var tags = MTETags()
        tags.set(7, page)
        expectEqual(tags.tagged, 1)
        expectTrue(tags.check(pa: 7 << 12 | 0x10, logicalTag: 3))
        expectTrue(!tags.check(pa: 7 << 12, logicalTag: 3))
        tags.set(7, MTETags.Page())
        expectEqual(tags.tagged, 0)
        expectEqual(MTETags.Page(all: 5).summary, "0x5 ×256")
    }

    /// try_page_mte_tagging: the first caller takes PG_mte_lock and initialises; a later
    /// one gets false. The flag is never cleared while the page lives; freeing resets both.
    @Test func theLockIsTakenOnce() {
        var h = MTEHost()
        expectTrue(h.tryPageMTETagging(5))
        expectTrue(!h.tryPageMTETagging(5))
        expectTrue(!h.pageMTETagged(5))
        h.setPageMTETagged(5)
        expectTrue(h.pageMTETagged(5))
        h.freePage(5)
        expectTrue(!h.pageMTETagged(5))
        expectTrue(h.tryPageMTETagging(5))
    }

    /// A guest-tagged page of an untagged VMM mapping through swap, form by form: what the
    /// new page holds after the VMM's set_pte_at, and its PG_mte_tagged.
    @Test(arguments: [
        (MTESyncForm.v5_10, false, false, 0),       // no sync: stale frame tags unflagged (sanitise will clear them)
        (MTESyncForm.v5_14, true, true, 1),         // restored, flagged
        (MTESyncForm.v5_14Stable, true, true, 1),
        (MTESyncForm.v6_1Lock, true, true, 1),
    ])
    func swapInThroughAnUntaggedPTE(form: MTESyncForm, restored: Bool, flagged: Bool, restores: Int) {
        var h = MTEHost()
        h.form = form
        expectEqual(h.mmap(name: "g", pages: 2, protMTE: false, backing: "anon", shared: false), .ok)
        let pfn = h.fault(vma: 0, page: 1, ram: Self.ram)!
        h.sanitise(pfn)  // the guest's first stage-2 fault
        h.guestStoreTags(vma: 0, page: 1, pfn: pfn, tag: 0xc)
        expectEqual(h.swapOut(vma: 0, page: 1), .ok)
        expectEqual(h.saved[1], MTETags.Page(all: 0xc))
        expectEqual(h.stats.saved, 1)
        // Another page takes the freed frame and zeroes its tags first, so restore is visible.
        h.tags.clear(pfn)
        let again = h.fault(vma: 0, page: 1, ram: Self.ram)!
        expectEqual(again, pfn)
        expectEqual((h.tags.page(again) == MTETags.Page(all: 0xc)), restored)
        expectEqual(h.pageMTETagged(again), flagged)
        expectEqual(h.stats.restored, restores)
        // swap_free dropped the saved tags with the slot.
        expectTrue(h.saved.isEmpty)
    }

    /// v5.14 flags a page mapped over a swap entry with nothing saved; the stable fix and the
    /// lock form leave it unflagged (so sanitise_mte_tags clears it later).
    @Test(arguments: [(MTESyncForm.v5_14, true), (.v5_14Stable, false), (.v6_1Lock, false), (.v5_10, false)])
    func nothingSavedLeavesThePageUnflaggedAfterTheFix(form: MTESyncForm, flagged: Bool) {
        var h = MTEHost()
        h.form = form
        _ = h.mmap(name: "g", pages: 1, protMTE: false, backing: "anon", shared: false)
        _ = h.fault(vma: 0, page: 0, ram: Self.ram)
        expectEqual(h.swapOut(vma: 0, page: 0), .ok)
        expectEqual(h.stats.saved, 0)
        let pfn = h.fault(vma: 0, page: 0, ram: Self.ram)!
        expectEqual(h.pageMTETagged(pfn), flagged)
        expectEqual(h.stats.cleared, 0)
    }

    /// A PROT_MTE mapping: the first set_pte_at clears the page's tags and flags it in every
    /// form; a swap round trip restores what was stored.
    @Test(arguments: MTESyncForm.allCases)
    func aTaggedMappingClearsThenRestores(form: MTESyncForm) {
        var h = MTEHost()
        h.form = form
        expectEqual(h.mmap(name: "t", pages: 1, protMTE: true, backing: "anon", shared: false), .ok)
        expectEqual(h.userStoreTags(vma: 0, page: 0, tag: 7, ram: Self.ram), .ok)
        expectEqual(h.stats.cleared, 1)
        expectEqual(h.userLoad(vma: 0, page: 0, tag: 7, ram: Self.ram), .ok)
        expectEqual(h.userLoad(vma: 0, page: 0, tag: 1, ram: Self.ram), .tagCheckFault(found: 7))
        expectEqual(h.stats.tagCheckFaults, 1)
        expectEqual(h.swapOut(vma: 0, page: 0), .ok)
        expectEqual(h.userLoad(vma: 0, page: 0, tag: 7, ram: Self.ram), .ok)
        expectEqual(h.stats.restored, 1)
        expectEqual(h.stats.lost, 0)
    }

    /// PROT_MTE needs VM_MTE_ALLOWED; a failed tag-storage allocation leaves the page mapped.
    @Test func refusals() {
        var h = MTEHost()
        expectEqual(h.mmap(name: "f", pages: 1, protMTE: true, backing: "file", shared: false), .error(.EINVAL))
        expectEqual(h.mmap(name: "s", pages: 1, protMTE: true, backing: "shmem", shared: true), .ok)
        _ = h.userStoreTags(vma: 0, page: 0, tag: 2, ram: Self.ram)
        expectEqual(h.swapOut(vma: 0, page: 0, failAllocation: true), .error(.ENOMEM))
        expectEqual(h.stats.saveFailures, 1)
        guard case .present = h.vmas[0].ptes[0] else { Issue.record("the page left its PTE"); return }
        expectEqual(h.swapOut(vma: 0, page: 0, failAllocation: false), .ok)
    }
}

/// Copy-on-write and mprotect on the host.
struct MTECopyTests {
    /// copy_highpage carries the tags of a PG_mte_tagged page and flags the copy; an
    /// unflagged page's tags are not copied. The child keeps the old frame.
    @Test(arguments: MTESyncForm.allCases)
    func copyOnWriteCarriesTagsOfATaggedPage(form: MTESyncForm) {
        var h = MTEHost()
        h.form = form
        _ = h.mmap(name: "g", pages: 2, protMTE: false, backing: "anon", shared: false)
        let a = h.fault(vma: 0, page: 0, ram: MTETests.ram)!, b = h.fault(vma: 0, page: 1, ram: MTETests.ram)!
        h.sanitise(a)
        h.guestStoreTags(vma: 0, page: 0, pfn: a, tag: 4)
        h.tags.set(b, MTETags.Page(all: 9))  // stale tags in an unflagged page
        h.fork()
        let a2 = h.breakCOW(vma: 0, page: 0, ram: MTETests.ram)!, b2 = h.breakCOW(vma: 0, page: 1, ram: MTETests.ram)!
        expectNotEqual(a2, a)
        expectEqual(h.tags.page(a2), MTETags.Page(all: 4))
        expectTrue(h.pageMTETagged(a2))
        expectEqual(h.tags.page(b2), MTETags.Page())
        expectTrue(!h.pageMTETagged(b2))
        expectEqual(h.stats.copied, 1)
        expectEqual(h.breakCOW(vma: 0, page: 0, ram: MTETests.ram), nil)  // copied once
    }

    /// mprotect(PROT_MTE) needs VM_MTE_ALLOWED and rewrites present PTEs tagged, clearing
    /// the tags of pages that had none initialised.
    @Test func mprotectAddsPROTMTE() {
        var h = MTEHost()
        _ = h.mmap(name: "f", pages: 1, protMTE: false, backing: "file", shared: false)
        _ = h.mmap(name: "a", pages: 1, protMTE: false, backing: "anon", shared: false)
        expectEqual(h.mprotect(vma: 0, protMTE: true, protNone: false), .error(.EINVAL))
        let pfn = h.fault(vma: 1, page: 0, ram: MTETests.ram)!
        h.tags.set(pfn, MTETags.Page(all: 3))
        expectEqual(h.mprotect(vma: 1, protMTE: true, protNone: false), .ok)
        expectEqual(h.tags.page(pfn), MTETags.Page())
        expectTrue(h.pageMTETagged(pfn))
        expectEqual(h.stats.cleared, 1)
        expectEqual(h.mprotect(vma: 1, protMTE: false, protNone: true), .ok)
        expectEqual(h.userLoad(vma: 1, page: 0, tag: 0, ram: MTETests.ram), .segv)
    }
}

/// The forms as sequences of atomic actions, interleaved by hand as the seed's table does:
/// two CPUs map one page back from swap.
struct MTERaceTests {
    /// Two VMAs map the one page (a shared swap-cache page); its tags, 0x6, are saved.
    static func host(_ form: MTESyncForm) -> (MTEHost, MTESyncThread, MTESyncThread) {
        var h = MTEHost()
        h.form = form
        _ = h.mmap(name: "a", pages: 1, protMTE: true, backing: "shmem", shared: true)
        _ = h.mmap(name: "b", pages: 1, protMTE: true, backing: "shmem", shared: true)
        h.saved[1] = MTETags.Page(all: 6)
        h.vmas[0].ptes[0] = .swap(entry: 1)
        h.vmas[1].ptes[0] = .swap(entry: 1)
        return (h, MTESyncThread(vma: 0, page: 0, pfn: 9, old: .swap(entry: 1)), MTESyncThread(vma: 1, page: 0, pfn: 9, old: .swap(entry: 1)))
    }

    /// CPU 1 starts restoring and is preempted half way; CPU 2 runs while it can. Before the
    /// lock, CPU 2 finds PG_mte_tagged set and writes its PTE over half-restored tags (the
    /// seed's race); with the lock, it waits for PG_mte_tagged.
    @Test(arguments: [(MTESyncForm.v5_14, true), (.v5_14Stable, true), (.v6_1Lock, false)])
    func cpu2SeesHalfRestoredTagsOnlyBeforeTheLock(form: MTESyncForm, races: Bool) {
        var (h, t1, t2) = Self.host(form)
        while form.program[t1.pc] != .restore || t1.restored == 0 { h.step(&t1) }
        var sawStale = false
        while h.canStep(t2) {
            if form.program[t2.pc] == .writePTE { sawStale = h.tags.page(9) != MTETags.Page(all: 6) }
            h.step(&t2)
        }
        expectEqual(sawStale, races)
        expectEqual(t2.done, races)
        while !t1.done { h.step(&t1) }
        while !t2.done { h.step(&t2) }
        expectEqual(h.tags.page(9), MTETags.Page(all: 6))
        expectTrue(h.pageMTETagged(9))
    }

    /// Each form's program, as the docs print it.
    @Test func programsReadAsTheKernelCode() {
        #expect(MTESyncForm.v5_10.program.map(\.description) == [
            "call site (pte_tagged, else → 7)", "test_and_set_bit(PG_mte_tagged) (set → 7)", "is_swap_pte(old) (no → 6)",
            "xa_load(mte_pages) (none → 6)", "mte_restore_page_tags", "→ 7", "mte_clear_page_tags", "set_pte",
        ])
        expectEqual(MTESyncForm.v6_1Lock.program.count, 12)
        expectEqual(MTESyncForm.v6_1Lock.program.filter { if case .tryLock = $0 { true } else { false } }.count, 2)
    }

    /// With the restore in n parts, it takes n actions at one place in the program, each
    /// writing its 256/n granules in order, and the page holds the saved tags only after the
    /// last; the count is back to 0 after it (the states after the loop do not differ by it).
    @Test(arguments: [1, 2, 16, 256])
    func theRestoreTakesOneActionPerPart(parts: Int) {
        var (h, t, _) = Self.host(.v6_1Lock)
        h.restoreSteps = parts
        while t.next(.v6_1Lock) != .restore { h.step(&t) }
        let pc = t.pc
        var saved = MTETags.Page()
        for g in 0..<MTETags.granulesPerPage { saved[g] = 6 }
        for k in 0..<parts {
            #expect(t.pc == pc && t.describeNext(.v6_1Lock, restoreSteps: parts)
                == "mte_restore_page_tags, granules \(k * 256 / parts)-\((k + 1) * 256 / parts - 1)")
            h.step(&t)
            let page = h.tags.page(9)
            expectTrue((0..<256).allSatisfy { page[$0] == ($0 < (k + 1) * 256 / parts ? 6 : 0) })
        }
        expectEqual(t.pc, pc + 1)
        expectEqual(t.restored, 0)
        expectEqual(h.tags.page(9), saved)
        expectEqual(h.stats.restored, 1)
    }
}
