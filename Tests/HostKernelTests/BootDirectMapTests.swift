import Testing
import Hardware
import PageTables
@testable import HostKernel
import Expectations

/// The boot direct map, as init_mem_mapping builds it (settled.md §8).
struct BootDirectMapTests {
    @Test func issueExampleWithGbpages() throws {
        let k = try exampleKernel()
        // DirectMap4k 2048 kB, DirectMap2M 1046528 kB, DirectMap1G 24117248 kB.
        expectEqual(k.directPagesCount, LeafCounts(size4K: 512, size2M: 511, size1G: 23))
        try k.checkInvariants()
    }

    @Test func issueExampleWithoutGbpages() throws {
        let k = try exampleKernel(gbpages: false)
        expectEqual(k.directPagesCount, LeafCounts(size4K: 512, size2M: 511 + 1024 + 21 * 512, size1G: 0))
        try k.checkInvariants()
    }

    @Test func isaRangeIsMappedWithItsHoles() throws {
        let k = try exampleKernel()
        // 0xa0000 is reserved (VGA) yet mapped, 4K, PAGE_KERNEL.
        let leaf = try #require(k.pageTable.lookup(VirtAddr(pageOffset + 0xa0000)))
        expectEqual(leaf.size, .size4K)
        expectEqual(leaf.attributes, .pageKernel(encrypted: true))
        expectEqual(k.pageTable.translate(VirtAddr(pageOffset + 0x1ff000))?.leaf.size, .size4K)
        expectEqual(k.pageTable.translate(VirtAddr(pageOffset + 0x200000))?.leaf.size, .size2M)
        expectEqual(k.pageTable.translate(VirtAddr(pageOffset + 0x4000_0000))?.leaf.size, .size1G)
    }

    @Test func holesAboveOneMegAreNotMapped() throws {
        let k = try exampleKernel()
        expectEqual(k.pageTable.lookup(VirtAddr(pageOffset + 0xc000_0000)), nil)
        expectEqual(k.pageTable.lookup(VirtAddr(pageOffset + 0x6_4000_0000)), nil)
    }

    @Test func splitMemRangeMakesHeadBigMiddleAndTail() throws {
        let m = try PhysicalMemory.parse(e820: exampleE820)
        let r = Kernel.splitMemRange(start: 0x100000, end: 0xc000_0000, sizes: [.size2M, .size1G], memory: m)
        #expect(r == [
            MapRange(start: 0x100000, end: 0x200000, sizes: []),
            MapRange(start: 0x200000, end: 0x4000_0000, sizes: [.size2M]),
            MapRange(start: 0x4000_0000, end: 0xc000_0000, sizes: [.size2M, .size1G]),
        ])
        let tail = Kernel.splitMemRange(start: 0x1_0000_0000, end: 0x1_4020_1000, sizes: [.size2M, .size1G], memory: m)
        // The 2M and 4K tails lie in a 1G region that is all RAM: both are promoted to 1G,
        // and the three equal ranges merge into one.
        expectEqual(tail, [MapRange(start: 0x1_0000_0000, end: 0x1_4020_1000, sizes: [.size2M, .size1G])])
    }

    @Test func rangesArePromotedWhenTheWholeRegionIsRAM() throws {
        // No legacy hole: [0, 4G) is RAM, so even the ISA range becomes part of a 1G leaf.
        let m = try PhysicalMemory.parse(e820: "BIOS-e820: [mem 0x0000000000000000-0x00000000ffffffff] usable")
        let k = try Kernel(memory: m)
        expectEqual(k.directPagesCount, LeafCounts(size1G: 4))
        expectEqual(k.pageTable.tablePages, 2)
        try k.checkInvariants()
    }

    @Test func unalignedRAMEndGetsFourKTail() throws {
        let m = try PhysicalMemory.parse(e820: """
            BIOS-e820: [mem 0x0000000000000000-0x000000000009ffff] usable
            BIOS-e820: [mem 0x0000000000100000-0x00000000403fefff] usable
            """)
        let k = try Kernel(memory: m)
        // 4K: ISA 256 + [1M,2M) 256 + [1G+2M, 1G+4M-4K) 511; 2M: [2M,1G) 511 + [1G, 1G+2M) 1.
        expectEqual(k.directPagesCount, LeafCounts(size4K: 256 + 256 + 511, size2M: 512, size1G: 0))
        try k.checkInvariants()
    }

    @Test func fiveLevelPagingUsesItsOwnPageOffset() throws {
        let k = try Kernel(memory: PhysicalMemory.pc(size: 4 << 30), config: KernelConfig(la57: true))
        expectEqual(k.layout.pageOffset, 0xff11_0000_0000_0000)
        expectEqual(k.pageTable.translate(VirtAddr(0xff11_0000_4000_0000))?.phys, PhysAddr(0x4000_0000))
        expectEqual(k.directPagesCount, LeafCounts(size4K: 512, size2M: 511, size1G: 3))
    }

    @Test func ramPastTheFourLevelDirectMapIsRefused() throws {
        let m = try PhysicalMemory.pc(size: 65 << 40)
        #expect(throws: HostKernelError.self) { try Kernel(memory: m) }
        let k = try Kernel(memory: m, config: KernelConfig(la57: true))
        expectEqual(k.directPagesCount.size1G, 65 * 1024 - 1)
    }
}

/// direct_pages_count as the kernel keeps it after boot, not a walk (BootCounter).
struct KernelBootCountTests {
    /// The e820 of the 24 GiB machine this was written on: the kernel's boot count counts the
    /// top 1G page three times (the first 2M chunk, the 512M chunk, the 128G chunk) and is
    /// 2 GiB more than the walk; that machine's /proc/meminfo (DirectMap4k 30720 kB, 2M
    /// 2066432 kB, 1G 25165824 kB) has the same total after one 1G and fourteen 2M splits.
    @Test func theTopGigabyteIsCountedThreeTimes() throws {
        let memory = try PhysicalMemory.parse(e820: """
            BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
            BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved
            BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable
            BIOS-e820: [mem 0x00000000eec00000-0x00000000febfffff] reserved
            BIOS-e820: [mem 0x0000000100000000-0x000000063fffffff] usable
            """)
        let k = try Kernel(memory: memory)
        expectEqual(k.directPagesCount, LeafCounts(size4K: 512, size2M: 511, size1G: 23))
        let boot = k.directPagesCount(.kernel)
        expectEqual(boot, LeafCounts(size4K: 512, size2M: 511, size1G: 25))
        let total = boot.size4K * 4 + boot.size2M * 2048 + boot.size1G * 1_048_576
        expectEqual(total, 30720 + 2_066_432 + 25_165_824)  // the real machine's kB after its splits
        // Without gbpages nothing is counted twice here: every chunk boundary is 2M-aligned.
        let no1G = try Kernel(memory: memory, config: KernelConfig(gbpages: false))
        expectEqual(no1G.directPagesCount(.kernel), no1G.directPagesCount)
    }

    /// After boot the kernel's count moves as the walk's does (a split counts the same).
    @Test func splitsMoveBothCountsAlike() throws {
        var k = try Kernel(memory: PhysicalMemory.pc(size: 4 << 30))
        expectEqual(k.directPagesCount(.kernel), LeafCounts(size4K: 512, size2M: 511, size1G: 5))
        _ = try k.setMemory4K(k.layout.pageOffset + (3 << 30) + 0x5000, numpages: 1)
        expectEqual(k.directPagesCount, LeafCounts(size4K: 1024, size2M: 1022, size1G: 2))
        expectEqual(k.directPagesCount(.kernel), LeafCounts(size4K: 1024, size2M: 1022, size1G: 4))
    }
}
