import Testing
import Hardware
import HostKernel
import PageTables
@testable import Reports
import Expectations

let exampleE820 = """
    BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
    BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable
    BIOS-e820: [mem 0x0000000100000000-0x000000063fffffff] usable
    """

struct MeminfoTests {
    @Test func issueExampleByteForByteWithGbpages() throws {
        let k = try Kernel(memory: PhysicalMemory.parse(e820: exampleE820))
        #expect(Meminfo.directMap(k) == """
            DirectMap4k:        2048 kB
            DirectMap2M:     1046528 kB
            DirectMap1G:    24117248 kB

            """)
    }

    @Test func withoutGbpagesThereIsNoDirectMap1GLine() throws {
        let k = try Kernel(memory: PhysicalMemory.parse(e820: exampleE820), config: KernelConfig(gbpages: false))
        #expect(Meminfo.directMap(k) == """
            DirectMap4k:        2048 kB
            DirectMap2M:    25163776 kB

            """)
    }

    @Test func wideValuesOverflowTheFieldAsPrintfDoes() {
        expectEqual(Meminfo.line("DirectMap1G:", 123_456_789_012), "DirectMap1G:    123456789012 kB\n")
    }
}

struct PtdumpTests {
    @Test func sizesUseTheLargestExactUnit() {
        // %9lu then the unit letter.
        expectEqual(Ptdump.size(4096), "        4K")
        expectEqual(Ptdump.size(2 << 20), "        2M")
        expectEqual(Ptdump.size(2036 << 10), "     2036K")
        expectEqual(Ptdump.size(64 << 40), "       64T")
        expectEqual(Ptdump.size(1000), "     1000B")
    }

    @Test func smallMachineDumpsExactly() throws {
        var k = try Kernel(memory: PhysicalMemory.pc(size: 4 << 30))
        try expectEqual(k.setMemoryRO(k.layout.pageOffset + 0x20_0000, numpages: 3), .ok)
        try expectEqual(k.setMemoryNP(k.layout.pageOffset + 0x4000_0000, numpages: 512), .ok)
        let expected = """
            ---[ User Space ]---
            0x0000000000000000-0xffff880000000000    16777096T                               pgd
            ---[ Kernel Space ]---
            0xffff880000000000-0xffff888000000000         512G                               pgd
            ---[ LDT remap ]---
            0xffff888000000000-0xffff888000001000           4K     RW                 GLB NX pte
            ---[ Low Kernel Mapping ]---
            0xffff888000001000-0xffff888000200000        2044K     RW                 GLB NX pte
            0xffff888000200000-0xffff888000203000          12K     ro                 GLB NX pte
            0xffff888000203000-0xffff888000400000        2036K     RW                 GLB NX pte
            0xffff888000400000-0xffff888040000000        1020M     RW         PSE     GLB NX pmd
            0xffff888040000000-0xffff888040200000           2M                               pmd
            0xffff888040200000-0xffff888080000000        1022M     RW         PSE     GLB NX pmd
            0xffff888080000000-0xffff888100000000           2G     RW         PSE     GLB NX pud
            0xffff888100000000-0xffff890000000000         508G                               pud
            0xffff890000000000-0xffffc90000000000          64T                               pgd
            ---[ vmalloc() Area ]---
            0xffffc90000000000-0xffffea0000000000          33T                               pgd
            ---[ Vmemmap ]---

            """
        expectTrue(Ptdump.render(k).hasPrefix(expected))
    }

    @Test func cacheModesShowAsPWTAndPCD() {
        let wc = Descriptor.leaf(PFN(0), Attributes.pageKernel(encrypted: false).with(memoryType: .writeCombining))
        let uc = Descriptor.leaf(PFN(0), Attributes.pageKernel(encrypted: false).with(memoryType: .uncached))
        let user = Descriptor.leaf(PFN(0), [.present, .user])
        expectEqual(Ptdump.flags(wc, level: 1), "    RW PWT             GLB NX ")
        expectEqual(Ptdump.flags(uc, level: 2), "    RW PWT PCD PSE     GLB NX ")
        expectEqual(Ptdump.flags(user, level: 1), "USR ro                     x  ")
    }
}

/// arm64's /sys/kernel/debug/kernel_page_tables, byte for byte, and its empty DirectMap lines.
struct Arm64PtdumpTests {
    @Test func aSmallBlockMappedMachine() throws {
        var config = KernelConfig()
        config.isa = .arm64
        var k = try Kernel(memory: PhysicalMemory.parse(e820: "BIOS-e820: [mem 0x0000000040100000-0x000000004220ffff] usable"), config: config)
        _ = try k.vmap(PhysAddr(0x4020_0000), pages: 2)
        expectEqual(Meminfo.directMap(k), "")
        #expect(Ptdump.render(k) == """
            ---[ Linear Mapping start ]---
            0xffff000000000000-0xffff000000100000           1M PTE
            0xffff000000100000-0xffff000000200000           1M PTE       RW NX SHD AF    CON     UXN    MEM/NORMAL-TAGGED
            0xffff000000200000-0xffff000002200000          32M PMD       RW NX SHD AF        BLK UXN    MEM/NORMAL-TAGGED
            0xffff000002200000-0xffff000002210000          64K PTE       RW NX SHD AF    CON     UXN    MEM/NORMAL-TAGGED
            0xffff000002210000-0xffff000002400000        1984K PTE
            0xffff000002400000-0xffff000040000000         988M PMD
            0xffff000040000000-0xffff008000000000         511G PUD
            0xffff008000000000-0xffff800000000000      130560G PGD
            ---[ Linear Mapping end ]---
            ---[ Modules start ]---
            0xffff800000000000-0xffff800080000000           2G PUD
            ---[ Modules end ]---
            ---[ vmalloc() area ]---
            0xffff800080000000-0xffff800080002000           8K PTE       RW NX SHD AF            UXN    MEM/NORMAL
            0xffff800080002000-0xffff800080200000        2040K PTE
            0xffff800080200000-0xffff8000c0000000        1022M PMD
            0xffff8000c0000000-0xffff808000000000         509G PUD
            0xffff808000000000-0xfffffdffc0000000      128511G PGD
            ---[ vmalloc() end ]---
            ---[ vmemmap start ]---

            """)
    }
}
