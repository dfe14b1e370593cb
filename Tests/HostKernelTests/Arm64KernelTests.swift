import Testing
import Hardware
import PageTables
@testable import HostKernel
import Expectations

/// The arm64 host kernel: map_mem's linear map for each `host.arm64-linear-map`, set_memory_*
/// refused over a block and accepted at page granularity, the BBML2 split's exact shape, and
/// the TLBI flush threshold.
struct Arm64KernelTests {
    /// 4G at 1G (whole 1G blocks) and a ragged range: [0x1_8010_0000, 0x1_8421_0000).
    static let e820 = """
        BIOS-e820: [mem 0x0000000040000000-0x000000013fffffff] usable
        BIOS-e820: [mem 0x0000000180100000-0x000000018420ffff] usable
        """

    /// 1G at 1G: one 1G block, or 262,144 PTEs.
    static let small = "BIOS-e820: [mem 0x0000000040000000-0x000000007fffffff] usable"

    func kernel(_ map: Arm64LinearMap, cpus: Int = 1, e820: String = Arm64KernelTests.e820) throws -> Kernel {
        var config = KernelConfig(cpus: cpus)
        config.isa = .arm64
        config.linearMap = map
        return try Kernel(memory: PhysicalMemory.parse(e820: e820), config: config)
    }

    /// Leaves of each size, and how many carry the contiguous bit.
    func shape(_ k: Kernel) throws -> (LeafCounts, contiguous: Int) {
        let leaves = try k.pageTable.leaves(virt: VirtAddr(k.layout.pageOffset), size: k.directMapEnd - k.layout.pageOffset)
        var counts = LeafCounts()
        for l in leaves { counts[l.size] += 1 }
        return (counts, leaves.count { $0.attributes.contains(.contiguous) })
    }

    @Test func theLinearMapsLeavesForEachPolicy() throws {
        // blocks: four 1G blocks; the ragged range is 256 contiguous PTEs (1M head), 15 plain
        // 2M blocks up to the first 32M boundary, 16 contiguous ones, one more 2M block and 16
        // contiguous PTEs (the 64K tail).
        let blocks = try kernel(.blocks)
        #expect(try shape(blocks) == (LeafCounts(size4K: 272, size2M: 32, size1G: 4), 16 + 272))
        expectEqual(blocks.physOffset, 0x4000_0000)
        expectEqual(blocks.va(PhysAddr(0x4000_0000)).rawValue, 0xffff_0000_0000_0000)
        expectEqual(blocks.directPagesCount, LeafCounts(size4K: 272, size2M: 32, size1G: 4))
        // pte: every page 4K, no contiguous bit.
        let pte = try kernel(.pte)
        #expect(try shape(pte) == (LeafCounts(size4K: (4 << 30) / 4096 + 0x4110, size2M: 0, size1G: 0), 0))
        // bbml2-split boots as blocks.
        #expect(try shape(try kernel(.bbml2Split)) == shape(blocks))
        try blocks.checkInvariants()
        try pte.checkInvariants()
    }

    @Test func setMemoryValidIsRefusedOverABlockAndAcceptedOnPages() throws {
        let page = 0xffff_0000_0020_1000 as UInt64  // PA 0x40201000, inside the first 1G block
        var k = try kernel(.blocks)
        let before = k.pageTable
        k.eventLog = []
        try expectEqual(KernelOperation(name: "set_memory_valid", address: page, numpages: 1, enable: false).apply(to: &k) as? KernelStatus, .error(.EINVAL))
        expectEqual(k.eventLog, ["WARN: apply_to_page_range met a 1G block at 0xffff000000000000", "flush_tlb_one_kernel x1"])
        expectEqual(k.pageTable.lookup(VirtAddr(page)), before.lookup(VirtAddr(page)))
        // set_direct_map_* do nothing without can_set_direct_map().
        try expectEqual(KernelOperation(name: "set_direct_map_invalid_noflush", address: page, numpages: 1).apply(to: &k) as? KernelStatus, .ok)
        expectEqual(k.pageTable.lookup(VirtAddr(page))?.attributes.contains(.present), true)

        var p = try kernel(.pte, cpus: 2, e820: Self.small)
        _ = p.translate(cpu: 1, page)
        try expectEqual(KernelOperation(name: "set_memory_valid", address: page, numpages: 1, enable: false).apply(to: &p) as? KernelStatus, .ok)
        expectEqual(p.pageTable.lookup(VirtAddr(page))?.attributes.contains(.present), false)
        expectEqual(p.cpus[1].tlb.entry(page), nil)  // flushed on every CPU
        try expectEqual(KernelOperation(name: "set_direct_map_default_noflush", address: page, numpages: 1).apply(to: &p) as? KernelStatus, .ok)
        expectEqual(p.pageTable.lookup(VirtAddr(page))?.attributes, [.present, .writable, .noExecute, .global, .tagged])
        expectEqual(p.unflushed, [page..<page + pageBytes])
        try p.checkInvariants()
        try p.checkTLBInvariants()
    }

    @Test func aBBML2SplitHasExactlyTheKernelsShape() throws {
        var k = try kernel(.bbml2Split)
        let base = k.layout.pageOffset, page = base + 0x20_1000
        k.pageTable.replaceLog = []
        try expectEqual(KernelOperation(name: "set_memory_valid", address: page, numpages: 1, enable: false).apply(to: &k) as? KernelStatus, .ok)
        expectEqual(k.pageTable.breakBeforeMakes, 0)  // BBML2: no break-before-make
        // The split writes in place and invalidates nothing; the one invalidation is the
        // page's own change (which __change_memory_common's flush then covers).
        let invalidations = (k.pageTable.replaceLog ?? []).filter { if case .invalidate = $0 { true } else { false } }
        expectEqual(invalidations, [.invalidate(virt: page, level: 1)])
        expectEqual(k.stats.splits, LeafCounts(size2M: 1, size1G: 1))
        // The first 1G is now 512 2M entries: the first 16 (the run holding the split page)
        // without the contiguous bit, entry 1 a PTE table, the rest contiguous 2M blocks.
        let pud = k.pageTable.descriptor(at: VirtAddr(base), level: 3)!
        expectTrue(pud.isTable)
        let pmds = (0..<512).map { k.pageTable.entry(table: pud.tableNumber, index: $0) }
        let tagged: Attributes = [.present, .writable, .noExecute, .global, .tagged]
        for (i, e) in pmds.enumerated() where i != 1 {
            expectEqual(e, .leaf(PFN(0x40000 + UInt64(i) * 512), i < 16 ? tagged : tagged.union(.contiguous)), "PMD \(i)")
        }
        // The PTE table: the run of 16 holding the page without the contiguous bit, the page
        // itself invalid, the other 496 contiguous.
        expectTrue(pmds[1].isTable)
        for i in 0..<512 {
            let e = k.pageTable.entry(table: pmds[1].tableNumber, index: i)
            var a = i < 16 ? tagged : tagged.union(.contiguous)
            if i == 1 { a.remove(.present) }
            expectEqual(e, .leaf(PFN(0x40200 + UInt64(i)), a), "PTE \(i)")
        }
        expectEqual(k.directPagesCount, LeafCounts(size4K: 272 + 512, size2M: 32 + 511, size1G: 3))
        try k.checkInvariants()
    }

    @Test func aSplitThatCannotAllocateIsENOMEMAndChangesNothing() throws {
        var k = try kernel(.bbml2Split, e820: Self.small)
        let before = k.pageTable.leafCounts
        k.failPageTableAllocations = true
        try expectEqual(KernelOperation(name: "set_memory_valid", address: k.layout.pageOffset + 0x20_1000, numpages: 1, enable: false).apply(to: &k) as? KernelStatus, .error(.ENOMEM))
        expectEqual(k.stats.allocationFailures, 1)
        expectEqual(k.stats.splits, LeafCounts())
        expectEqual(k.pageTable.leafCounts, before)
        try k.checkInvariants()
    }

    @Test func aLocalTLBIReachesOneCPUAndAnISOneReachesAll() throws {
        var k = try kernel(.pte, cpus: 2, e820: Self.small)
        let va = k.layout.pageOffset + 0x5000
        for cpu in 0..<2 { _ = k.translate(cpu: cpu, va) }
        k.tlbi(.vaale1, va: va, cpu: 0)
        expectEqual(k.cpus.map { $0.tlb.entry(va) != nil }, [false, true])
        k.tlbi(.aside1is, va: 0, cpu: 0)  // global kernel entries stay
        expectNotEqual(k.cpus[1].tlb.entry(va), nil)
        k.tlbi(.vaale1is, va: va, cpu: 0)
        expectTrue(k.cpus.allSatisfy { $0.tlb.validEntries.isEmpty })
        expectEqual(k.cpus.map(\.stats.flushes), [3, 2])
        expectEqual(ArmTLBI.allCases.filter(\.broadcast).map(\.rawValue), ["vae1is", "vale1is", "vaae1is", "vaale1is", "aside1is", "vmalle1is"])
    }

    @Test func flushTLBKernelRangeFlushesEverythingFromTwoMegabytes() throws {
        var k = try kernel(.pte, e820: Self.small)
        k.flushTLBKernelRange(k.layout.pageOffset, pages: 511)
        expectEqual(k.stats.tlbPageFlushRounds, 1)
        expectEqual(k.stats.tlbPagesFlushed, 511)
        expectEqual(k.stats.tlbFullFlushes, 0)
        k.flushTLBKernelRange(k.layout.pageOffset, pages: 512)
        expectEqual(k.stats.tlbFullFlushes, 1)
    }
}
