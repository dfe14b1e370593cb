import Testing
import Hardware
import PageTables
@testable import HostKernel
import Expectations

/// change_page_attr, one documented rule per test (linux-x86.md §1, invariants 1–9).
struct ChangePageAttrTests {
    /// A direct-map address inside the 1G leaf [1G, 2G).
    let inGig = pageOffset + 0x4000_0000
    /// A direct-map address inside the 2M leaf [2M, 4M).
    let in2M = pageOffset + 0x20_0000

    @Test func fourKChangeInsideOneGigSplitsTwiceAsSplitPageCountSays() throws {
        var k = try exampleKernel()
        let before = k.directPagesCount
        try expectEqual(k.setMemoryRO(inGig + 5 * K, numpages: 1), .ok)
        // 1G −1, 2M +511, 4K +512 (split_page_count twice).
        expectEqual(k.directPagesCount, LeafCounts(size4K: before.size4K + 512, size2M: before.size2M + 511, size1G: before.size1G - 1))
        expectEqual(k.stats.splits, LeafCounts(size2M: 1, size1G: 1))
        expectEqual(k.stats.tlbSplitFlushes, 2)
        expectEqual(k.stats.tlbFullFlushes, 2)
        expectEqual(k.stats.tlbPageFlushRounds, 1)
        expectEqual(k.stats.tlbPagesFlushed, 1)
        expectEqual(k.pageTable.lookup(VirtAddr(inGig + 5 * K))?.attributes, Attributes.pageKernel(encrypted: true).subtracting(.writable))
        expectEqual(k.pageTable.lookup(VirtAddr(inGig + 2 * M2))?.size, .size2M)
        try k.checkInvariants()
    }

    @Test func sameProtectionMeansNoSplitAndNoFlush() throws {
        var k = try exampleKernel()
        try expectEqual(k.setMemoryRW(inGig + K, numpages: 3), .ok)
        try expectEqual(k.setMemoryNX(in2M + K, numpages: 1), .ok)
        expectEqual(k.stats, CPAStats())
        #expect(k.directPagesCount == (try exampleKernel()).directPagesCount)
    }

    @Test func wholeAlignedLargeLeafIsRewrittenInPlace() throws {
        var k = try exampleKernel()
        try expectEqual(k.setMemoryRO(in2M, numpages: 512), .ok)
        expectEqual(k.stats.splits, LeafCounts())
        expectEqual(k.pageTable.lookup(VirtAddr(in2M))?.size, .size2M)
        expectEqual(k.pageTable.lookup(VirtAddr(in2M))?.attributes.contains(.writable), false)
        // 512 pages > the 33-page ceiling: one full flush.
        expectEqual(k.stats.tlbFullFlushes, 1)
        expectEqual(k.stats.tlbPageFlushRounds, 0)
    }

    @Test func flushIsPerPageUpToTheCeilingAndFullAbove() throws {
        var k = try exampleKernel()
        try expectEqual(k.setMemoryRO(pageOffset + 0x10_0000, numpages: 33), .ok)
        expectEqual(k.stats.tlbPageFlushRounds, 1)
        expectEqual(k.stats.tlbPagesFlushed, 33)
        expectEqual(k.stats.tlbFullFlushes, 0)
        try expectEqual(k.setMemoryRO(pageOffset + 0x14_0000, numpages: 34), .ok)
        expectEqual(k.stats.tlbPageFlushRounds, 1)
        expectEqual(k.stats.tlbFullFlushes, 1)
    }

    @Test func setMemory4KForcesASplitAndMarksThePages() throws {
        var k = try exampleKernel()
        try expectEqual(k.setMemory4K(in2M, numpages: 1), .ok)
        expectEqual(k.stats.splits, LeafCounts(size2M: 1))
        let leaf = try #require(k.pageTable.lookup(VirtAddr(in2M)))
        expectEqual(leaf.size, .size4K)
        expectTrue(leaf.attributes.contains(.forced4K))
        expectEqual(k.pageTable.lookup(VirtAddr(in2M + K))?.attributes.contains(.forced4K), false)
        // The PTE changed (the _PAGE_KERNEL_4K bit), so one per-page flush follows the split's.
        expectEqual(k.stats.tlbSplitFlushes, 1)
        expectEqual(k.stats.tlbPageFlushRounds, 1)
        try k.checkInvariants()
    }

    @Test func setMemory4KOnFourKPageDoesNotSplit() throws {
        var k = try exampleKernel()
        try expectEqual(k.setMemory4K(pageOffset + 0x10_0000, numpages: 2), .ok)
        expectEqual(k.stats.splits, LeafCounts())
        expectEqual(k.stats.tlbSplitFlushes, 0)
    }

    @Test func notPresentAndBack() throws {
        var k = try exampleKernel()
        try expectEqual(k.setMemoryNP(in2M + K, numpages: 1), .ok)
        #expect(k.pageTable.translate(VirtAddr(in2M + K)) == nil)
        expectEqual(k.pageTable.lookup(VirtAddr(in2M + K))?.phys, PhysAddr(0x20_1000))
        expectEqual(k.pageTable.lookup(VirtAddr(in2M + K))?.attributes.contains(.global), false)  // pgprot_clear_protnone_bits
        try expectEqual(k.setMemoryP(in2M + K, numpages: 1), .ok)
        expectEqual(k.pageTable.translate(VirtAddr(in2M + K))?.phys, PhysAddr(0x20_1000))
        expectEqual(k.stats.splits, LeafCounts(size2M: 1))
    }

    @Test func executeBitFlips() throws {
        var k = try exampleKernel()
        try expectEqual(k.setMemoryX(in2M, numpages: 512), .ok)
        expectEqual(k.pageTable.lookup(VirtAddr(in2M))?.attributes.contains(.noExecute), false)
        try expectEqual(k.setMemoryNX(in2M, numpages: 512), .ok)
        expectEqual(k.pageTable.lookup(VirtAddr(in2M))?.attributes.contains(.noExecute), true)
    }

    @Test func holesInTheDirectMapAreSkipped() throws {
        var k = try exampleKernel()
        // [3G-4K, 3G+4K): the second page is in the hole above RAM's first range.
        try expectEqual(k.setMemoryRO(pageOffset + 0xc000_0000 - K, numpages: 2), .ok)
        expectEqual(k.pageTable.lookup(VirtAddr(pageOffset + 0xc000_0000 - K))?.attributes.contains(.writable), false)
    }

    @Test func splitWithoutMemoryFailsWithENOMEMAndChangesNothing() throws {
        var k = try exampleKernel()
        k.failPageTableAllocations = true
        try expectEqual(k.setMemoryRO(in2M, numpages: 1), .error(.ENOMEM))
        expectEqual(k.stats.allocationFailures, 1)
        #expect(k.stats.tlbFullFlushes == 0 && k.stats.tlbPageFlushRounds == 0)  // CPA_FLUSHTLB was never set
        expectEqual(k.pageTable.lookup(VirtAddr(in2M))?.size, .size2M)
        try k.checkInvariants()
    }

    @Test func failureAfterAChangeFlushesEverything() throws {
        var k = try exampleKernel()
        k.failPageTableAllocations = true
        // [2M-4K, 2M+4K): the 4K page before 2M changes, then the 2M leaf cannot split.
        try expectEqual(k.setMemoryRO(in2M - K, numpages: 2), .error(.ENOMEM))
        expectEqual(k.pageTable.lookup(VirtAddr(in2M - K))?.attributes.contains(.writable), false)
        expectEqual(k.stats.tlbFullFlushes, 1)  // cpa_flush_all
        expectEqual(k.stats.tlbPageFlushRounds, 0)
    }

    @Test func noflushVariantsNeverFlushButASplitStillDoes() throws {
        var k = try exampleKernel()
        try expectEqual(k.setDirectMapInvalidNoflush(pageOffset + 0x10_0000), .ok)
        expectEqual(k.stats.tlbFullFlushes, 0)
        expectEqual(k.stats.tlbPageFlushRounds, 0)
        #expect(k.pageTable.translate(VirtAddr(pageOffset + 0x10_0000)) == nil)
        try expectEqual(k.setDirectMapInvalidNoflush(in2M), .ok)
        expectEqual(k.stats.tlbFullFlushes, 1)
        expectEqual(k.stats.tlbSplitFlushes, 1)
        expectEqual(k.stats.tlbPageFlushRounds, 0)
        try expectEqual(k.setDirectMapDefaultNoflush(in2M), .ok)
        // PRESENT and RW are back; _PAGE_GLOBAL, dropped by pgprot_clear_protnone_bits when
        // the page went not-present, is not (__set_pages_p sets only PRESENT|RW).
        expectEqual(k.pageTable.translate(VirtAddr(in2M))?.leaf.attributes, Attributes.pageKernel(encrypted: true).subtracting(.global))
        expectEqual(k.stats.tlbFullFlushes, 1)
        expectEqual(k.stats.tlbPageFlushRounds, 0)
    }

    @Test func decryptFollowsTheDocumentedOrder() throws {
        var k = try exampleKernel(smeCoherent: false)
        k.eventLog = []
        try expectEqual(k.setMemoryDecrypted(inGig, numpages: 1), .ok)
        #expect(k.eventLog == [
            "flush_tlb_one_kernel x1", "clflush x1",  // cache flush before the flip
            "enc_status_change_prepare",
            "flush_tlb_all", "flush_tlb_all",  // __split_large_page: 1G to 2M, then 2M to 4K
            "pte change",
            "flush_tlb_one_kernel x1",
            "enc_status_change_finish",
        ])
        expectEqual(k.pageTable.lookup(VirtAddr(inGig))?.attributes.contains(.encrypted), false)
        expectEqual(k.stats.splits, LeafCounts(size2M: 1, size1G: 1))
        expectEqual(k.stats.cacheFlushPages, 1)
        try k.checkInvariants()
    }

    @Test func conversionsCountThePagesWhoseCBitFlipped() throws {
        var k = try exampleKernel()
        try expectEqual(k.setMemoryDecrypted(in2M, numpages: 512), .ok)  // a whole 2M leaf, in place
        try expectEqual(k.setMemoryDecrypted(inGig, numpages: 3), .ok)
        try expectEqual(k.setMemoryDecrypted(inGig, numpages: 3), .ok)   // already clear: nothing flips
        expectEqual(k.stats.encConversions, 515)
    }

    @Test func encryptionChangeFlushesEvenWhenNothingChanges() throws {
        var k = try exampleKernel()
        try expectEqual(k.setMemoryEncrypted(inGig, numpages: 1), .ok)
        // __set_memory_enc_pgtable flushes before and after unconditionally.
        expectEqual(k.stats.tlbPageFlushRounds, 2)
        expectEqual(k.stats.splits, LeafCounts())
        expectEqual(k.stats.cacheFlushPages, 0)  // SME_COHERENT
    }

    @Test func prepareHookFailureIsEIOAndLeavesThePTE() throws {
        var k = try exampleKernel()
        k.failingHook = .prepare
        try expectEqual(k.setMemoryDecrypted(inGig, numpages: 1), .error(.EIO))
        expectEqual(k.pageTable.lookup(VirtAddr(inGig))?.attributes.contains(.encrypted), true)
        expectEqual(k.stats.splits, LeafCounts())
    }

    @Test func finishHookFailureIsEIOAfterThePTEChange() throws {
        var k = try exampleKernel()
        k.failingHook = .finish
        try expectEqual(k.setMemoryDecrypted(inGig, numpages: 1), .error(.EIO))
        expectEqual(k.pageTable.lookup(VirtAddr(inGig))?.attributes.contains(.encrypted), false)
    }

    /// __set_memory_enc_dec with the direction as an argument: the same calls, hooks and
    /// errors as set_memory_encrypted/_decrypted, each error naming the function it stands for.
    @Test func setMemoryEncDecIsEncryptedOrDecrypted() throws {
        var k = try exampleKernel(), calls: [String] = []
        try expectEqual(k.setMemoryEncDec(inGig, numpages: 1, encrypt: false) { w, _, n, e in calls.append("\(w) \(n) \(e)"); return nil }, .ok)
        expectEqual(k.pageTable.lookup(VirtAddr(inGig))?.attributes.contains(.encrypted), false)
        try expectEqual(k.setMemoryEncDec(inGig, numpages: 1, encrypt: true) { w, _, n, e in calls.append("\(w) \(n) \(e)"); return w == .finish ? .EIO : nil }, .error(.EIO))
        expectEqual(k.pageTable.lookup(VirtAddr(inGig))?.attributes.contains(.encrypted), true)
        expectEqual(calls, ["prepare 1 false", "finish 1 false", "prepare 1 true", "finish 1 true"])
        #expect(throws: HostKernelError("set_memory_encrypted: numpages must be at least 1, got 0")) {
            try k.setMemoryEncDec(inGig, numpages: 0, encrypt: true) { _, _, _, _ in nil }
        }
        #expect(throws: HostKernelError("set_memory_decrypted: numpages must be at least 1, got -1")) {
            try k.setMemoryEncDec(inGig, numpages: -1, encrypt: false) { _, _, _, _ in nil }
        }
    }

    @Test func withoutMemoryEncryptionEncDecDoNothing() throws {
        var k = try exampleKernel(memEncrypt: false)
        try expectEqual(k.setMemoryDecrypted(inGig, numpages: 1), .ok)
        expectEqual(k.stats, CPAStats())
        expectEqual(k.pageTable.lookup(VirtAddr(inGig))?.size, .size1G)
    }

    @Test func vmallocChangeAlsoChangesTheDirectMapAlias() throws {
        var k = try exampleKernel()
        let v = try k.vmap(PhysAddr(0x4000_0000), pages: 2)
        expectEqual(v, VirtAddr(0xffff_c900_0000_0000))
        try expectEqual(k.setMemoryDecrypted(v.rawValue, numpages: 1), .ok)
        expectEqual(k.pageTable.lookup(v)?.attributes.contains(.encrypted), false)
        expectEqual(k.pageTable.lookup(VirtAddr(inGig))?.attributes.contains(.encrypted), false)
        expectEqual(k.pageTable.lookup(VirtAddr(inGig + K))?.attributes.contains(.encrypted), true)
        expectEqual(k.stats.splits, LeafCounts(size2M: 1, size1G: 1))  // the alias split the 1G leaf
        // force_flush_all from the alias: the post-change flush is a full one.
        expectEqual(k.stats.tlbFullFlushes, 2 + 1)
        expectEqual(k.stats.tlbPageFlushRounds, 1)
        try k.checkInvariants()
    }

    @Test func aliasChangeLeavesNXAlone() throws {
        var k = try exampleKernel()
        let v = try k.vmap(PhysAddr(0x4000_0000), pages: 1)
        try expectEqual(k.setMemoryX(v.rawValue, numpages: 1), .ok)
        expectEqual(k.pageTable.lookup(v)?.attributes.contains(.noExecute), false)
        expectEqual(k.pageTable.lookup(VirtAddr(inGig))?.attributes.contains(.noExecute), true)
        expectEqual(k.stats.splits, LeafCounts())
    }

    @Test func aliasOnlyChangeIsNotFlushed() throws {
        var k = try exampleKernel()
        let v = try k.vmap(PhysAddr(0x20_0000), pages: 1)
        try expectEqual(k.setMemoryRO(v.rawValue, numpages: 1), .ok)
        try expectEqual(k.setMemoryRW(in2M, numpages: 1), .ok)   // direct map back to RW
        let flushes = (k.stats.tlbFullFlushes, k.stats.tlbPageFlushRounds)
        // Primary already RO: only the alias changes, and its CPA_FLUSHTLB is lost.
        try expectEqual(k.setMemoryRO(v.rawValue, numpages: 1), .ok)
        expectEqual(k.pageTable.lookup(VirtAddr(in2M))?.attributes.contains(.writable), false)
        expectEqual(k.stats.tlbFullFlushes, flushes.0)
        expectEqual(k.stats.tlbPageFlushRounds, flushes.1)
    }

    @Test func vmallocHoleIsEFAULT() throws {
        var k = try exampleKernel()
        try expectEqual(k.setMemoryRO(0xffff_c900_0010_0000, numpages: 1), .error(.EFAULT))
    }

    @Test func roxCollapsesTwoMegThenOneGig() throws {
        var k = try exampleKernel()
        let start = k.directPagesCount
        try expectEqual(k.setMemoryRO(inGig + K, numpages: 1), .ok)  // 1G → 2M → 4K
        try expectEqual(k.setMemoryROX(inGig, numpages: Int(G1 / K)), .ok)
        expectEqual(k.stats.collapses, LeafCounts(size2M: 1, size1G: 1))
        expectEqual(k.directPagesCount, start)
        expectEqual(k.pageTable.lookup(VirtAddr(inGig))?.size, .size1G)
        try k.checkInvariants()
    }

    @Test func roxDoesNotCollapseForcedFourKPages() throws {
        var k = try exampleKernel()
        try expectEqual(k.setMemory4K(in2M, numpages: 1), .ok)
        try expectEqual(k.setMemoryROX(in2M, numpages: 512), .ok)
        expectEqual(k.stats.collapses, LeafCounts())
        expectEqual(k.pageTable.lookup(VirtAddr(in2M + K))?.size, .size4K)
    }

    @Test func roxWithoutGbpagesStopsAtTwoMeg() throws {
        var k = try exampleKernel(gbpages: false)
        try expectEqual(k.setMemoryRO(inGig + K, numpages: 1), .ok)
        try expectEqual(k.setMemoryROX(inGig, numpages: 512), .ok)
        expectEqual(k.stats.collapses, LeafCounts(size2M: 1))
    }

    @Test func unalignedAddressIsAnError() throws {
        var k = try exampleKernel()
        let e = #expect(throws: HostKernelError.self) { try k.setMemoryRO(in2M + 1, numpages: 1) }
        expectEqual(e?.message.contains("is not page-aligned"), true)
    }

    @Test func zeroPagesIsAnError() throws {
        var k = try exampleKernel()
        #expect(throws: HostKernelError("set_memory_np: numpages must be at least 1, got 0")) { try k.setMemoryNP(in2M, numpages: 0) }
    }

    @Test func addressOutsideDirectMapAndVmallocIsAnError() throws {
        var k = try exampleKernel()
        let e = #expect(throws: HostKernelError.self) { try k.setMemoryDecrypted(pageOffset + 0x6_4000_0000, numpages: 1) }
        expectEqual(e?.message.contains("is not inside the direct map [0xffff888000000000-0xffff888640000000)"), true)
        #expect(throws: HostKernelError.self) { try k.setMemoryRO(0x1000, numpages: 1) }
        #expect(throws: HostKernelError.self) { try k.setMemoryRO(pageOffset + 0x6_3fff_f000, numpages: 2) }
    }

    @Test func vmapOfNonRAMIsAnError() throws {
        var k = try exampleKernel()
        #expect(throws: HostKernelError.self) { try k.vmap(PhysAddr(0xc000_0000), pages: 1) }
        #expect(throws: HostKernelError.self) { try k.vmap(PhysAddr(0x1001), pages: 1) }
    }
}

/// The memory figure bytes_per_split_2m, which is exact: each 2M region split to 4K costs the
/// model one compact table (56 bytes) while its entries follow the split, and one 512-entry
/// table (4096 bytes, the kernel's page-table page) once they do not.
struct SplitMemoryTests {
    @Test(arguments: [true, false])
    func eachTwoMegSplitCostsOneCompactTableOrOneTablePage(compact: Bool) throws {
        var k = try Kernel(memory: PhysicalMemory.pc(size: 8 << 30), config: KernelConfig(gbpages: false))
        k.compactPageTables = compact
        let before = k.pageTable.usedBytes
        for i: UInt64 in 0..<100 { #expect(try k.setMemory4K(pageOffset + (1 << 30) + i << 21, numpages: 1) == .ok) }
        expectEqual(k.pageTable.usedBytes - before, 100 * (compact ? 56 : 4096))
        expectEqual(k.stats.splits, LeafCounts(size2M: 100))
    }
}
