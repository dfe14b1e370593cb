import Testing
import Hardware
import HostKernel
import PageTables
@testable import Reports
import Expectations

/// The whole /sys/kernel/debug/page_tables/kernel layout (4-level, no KASLR, no PTI):
/// markers in address_markers order, the one-entry-late markers of the generic walker,
/// ESPfix's 16 lines and the skipped count, the kernel image after mark_rodata_ro and its
/// alias in the direct map, the fixmap's IOAPIC page, the final flush ending at 0.
struct PtdumpLayoutTests {
    static func dump(cpus: Int = 2, image: KernelImage? = .typical) throws -> String {
        var config = KernelConfig(cpus: cpus)
        config.image = image
        return Ptdump.render(try Kernel(memory: PhysicalMemory.pc(size: 4 << 30), config: config))
    }

    @Test func theWholeLayoutOfA4GiBTwoCPUMachine() throws {
        let out = try Self.dump()
        let lines = out.split(separator: "\n").map(String.init)
        // The walker notes LDT's empty pgd and the first pte of the direct map each past a
        // marker, so "Kernel Space" shows one pgd and "LDT remap" one 4K page.
        expectEqual(Array(lines.prefix(8)), [
            "---[ User Space ]---",
            "0x0000000000000000-0xffff880000000000    16777096T                               pgd",
            "---[ Kernel Space ]---",
            "0xffff880000000000-0xffff888000000000         512G                               pgd",
            "---[ LDT remap ]---",
            "0xffff888000000000-0xffff888000001000           4K     RW                 GLB NX pte",
            "---[ Low Kernel Mapping ]---",
            "0xffff888000001000-0xffff888000200000        2044K     RW                 GLB NX pte",
        ])
        // The image's alias: text and rodata read-only, the freed gaps writable again, NX kept.
        #expect(out.contains("""
            0xffff888000200000-0xffff888001000000          14M     RW         PSE     GLB NX pmd
            0xffff888001000000-0xffff888001e00000          14M     ro         PSE     GLB NX pmd
            0xffff888001e00000-0xffff888001e03000          12K     ro                 GLB NX pte
            0xffff888001e03000-0xffff888002000000        2036K     RW                 GLB NX pte
            0xffff888002000000-0xffff888002800000           8M     ro         PSE     GLB NX pmd
            0xffff888002800000-0xffff888002813000          76K     ro                 GLB NX pte
            0xffff888002813000-0xffff888002a00000        1972K     RW                 GLB NX pte
            0xffff888002a00000-0xffff888040000000         982M     RW         PSE     GLB NX pmd

            """))
        // struct pages for 32 sections of 128M in 2M pages; the second vmemmap pgd is empty.
        #expect(out.contains("""
            ---[ Vmemmap ]---
            0xffffea0000000000-0xffffea0004000000          64M     RW         PSE     GLB NX pmd
            0xffffea0004000000-0xffffea0040000000         960M                               pmd
            0xffffea0040000000-0xffffea8000000000         511G                               pud
            0xffffea8000000000-0xfffffe0000000000       19968G                               pgd
            ---[ CPU entry Area ]---

            """))
        // The RO IDT page merges with CPU 0's GDT; each CPU: entry stack, 5 TSS pages, then
        // DF, NMI, DB and MCE stacks between guard pages; 40 pages unmapped on AMD.
        #expect(out.contains("""
            ---[ CPU entry Area ]---
            0xfffffe0000000000-0xfffffe0000002000           8K     ro                 GLB NX pte
            0xfffffe0000002000-0xfffffe0000003000           4K     RW                 GLB NX pte
            0xfffffe0000003000-0xfffffe0000008000          20K     ro                 GLB NX pte
            0xfffffe0000008000-0xfffffe0000009000           4K                               pte
            0xfffffe0000009000-0xfffffe000000b000           8K     RW                 GLB NX pte
            0xfffffe000000b000-0xfffffe000000c000           4K                               pte
            0xfffffe000000c000-0xfffffe000000e000           8K     RW                 GLB NX pte
            0xfffffe000000e000-0xfffffe000000f000           4K                               pte
            0xfffffe000000f000-0xfffffe0000011000           8K     RW                 GLB NX pte
            0xfffffe0000011000-0xfffffe0000012000           4K                               pte
            0xfffffe0000012000-0xfffffe0000014000           8K     RW                 GLB NX pte
            0xfffffe0000014000-0xfffffe000003c000         160K                               pte
            0xfffffe000003c000-0xfffffe000003d000           4K     ro                 GLB NX pte
            0xfffffe000003d000-0xfffffe000003e000           4K     RW                 GLB NX pte

            """))
        #expect(out.contains("""
            0xfffffe000004d000-0xfffffe000004f000           8K     RW                 GLB NX pte
            0xfffffe000004f000-0xfffffe0000200000        1732K                               pte
            0xfffffe0000200000-0xfffffe0040000000        1022M                               pmd
            0xfffffe0040000000-0xfffffe8000000000         511G                               pud
            0xfffffe8000000000-0xffffff0000000000         512G                               pgd
            ---[ ESPfix Area ]---
            0xffffff0000000000-0xffffff0000001000           4K     ro                 GLB NX pte
            0xffffff0000001000-0xffffff0000010000          60K                               pte

            """))
        // 65,536 aliases and 65,535 gaps, the last page table's tail and the empty puds up to
        // EFI: 131,073 lines, 16 printed.
        #expect(out.contains("""
            0xffffff0000071000-0xffffff0000080000          60K                               pte
            ... 131057 entries skipped ... 
            ---[ EFI Runtime Services ]---
            0xffffffef00000000-0xffffffff80000000          66G                               pud
            ---[ High Kernel Mapping ]---
            0xffffffff80000000-0xffffffff81000000          16M                               pmd
            0xffffffff81000000-0xffffffff81e00000          14M     ro         PSE     GLB x  pmd
            0xffffffff81e00000-0xffffffff81e03000          12K     ro                 GLB x  pte
            0xffffffff81e03000-0xffffffff82000000        2036K     RW                 GLB NX pte
            0xffffffff82000000-0xffffffff82800000           8M     ro         PSE     GLB NX pmd
            0xffffffff82800000-0xffffffff82813000          76K     ro                 GLB NX pte
            0xffffffff82813000-0xffffffff82a00000        1972K     RW                 GLB NX pte
            0xffffffff82a00000-0xffffffff84a00000          32M     RW         PSE     GLB NX pmd
            0xffffffff84a00000-0xffffffffc0000000         950M                               pmd
            ---[ Modules ]---
            0xffffffffc0000000-0xffffffffff000000        1008M                               pmd
            ---[ End Modules ]---
            0xffffffffff000000-0xffffffffff200000           2M                               pmd
            0xffffffffff200000-0xffffffffff578000        3552K                               pte
            ---[ Fixmap Area ]---
            0xffffffffff578000-0xffffffffff5fb000         524K                               pte
            0xffffffffff5fb000-0xffffffffff5fc000           4K     RW PWT PCD         GLB NX pte
            0xffffffffff5fc000-0xffffffffff800000        2064K                               pte
            0xffffffffff800000-0x0000000000000000           8M                               pmd

            """))
        expectTrue(out.hasSuffix("8M                               pmd\n"))
        // Every marker, in address_markers order, once.
        let markers = lines.filter { $0.hasPrefix("---[") }
        #expect(markers == ["User Space", "Kernel Space", "LDT remap", "Low Kernel Mapping", "vmalloc() Area", "Vmemmap", "CPU entry Area",
                            "ESPfix Area", "EFI Runtime Services", "High Kernel Mapping", "Modules", "End Modules", "Fixmap Area"].map { "---[ \($0) ]---" })
    }

    /// Without an image the high mapping is one empty pud's worth of pmds and the direct map
    /// has no read-only alias.
    @Test func withoutAnImageTheHighMappingIsEmpty() throws {
        let out = try Self.dump(cpus: 1, image: nil)
        expectTrue(out.contains("---[ High Kernel Mapping ]---\n0xffffffff80000000-0xffffffffc0000000           1G                               pmd\n---[ Modules ]---\n"))
        expectTrue(!out.contains(" ro         PSE     GLB NX pmd"))
    }

    /// The image's alias split two 2M pages of the direct map (the pages holding _etext and
    /// __end_rodata): DirectMap4k grows by 4096 kB.
    @Test func theImageAliasSplitsTheDirectMap() throws {
        var config = KernelConfig()
        let plain = try Kernel(memory: PhysicalMemory.pc(size: 4 << 30), config: config)
        config.image = .typical
        let withImage = try Kernel(memory: PhysicalMemory.pc(size: 4 << 30), config: config)
        expectEqual(withImage.directPagesCount.size4K, plain.directPagesCount.size4K + 1024)
        expectEqual(withImage.stats.splits.size2M, 2)
        expectEqual(plain.stats.splits.size2M, 0)
    }

    /// System.map: the section symbols read, a missing or misaligned one refused by name.
    @Test func systemMapsAreReadAndChecked() throws {
        let map = """
            ffffffff81000000 T _text
            ffffffff81000000 T startup_64
            ffffffff81e02e51 T _etext
            ffffffff82000000 D __start_rodata
            ffffffff82813000 D __end_rodata
            ffffffff82a00000 D __end_rodata_hpage_align
            ffffffff82a00000 D _sdata
            ffffffff83300000 D __init_begin
            ffffffff83800000 D __init_end
            ffffffff8482c000 B _brk_end
            """
        try expectEqual(KernelImage(systemMap: map), .typical)
        #expect(throws: HostKernelError("System.map: no _etext, _brk_end; it needs _text, _etext, __start_rodata, __end_rodata, __init_begin, __init_end, _brk_end")) {
            try KernelImage(systemMap: map.split(separator: "\n").filter { !$0.hasSuffix(" _etext") && !$0.hasSuffix(" _brk_end") }.joined(separator: "\n"))
        }
        #expect(throws: HostKernelError("System.map: _text, __start_rodata and __end_rodata_hpage_align must be 2M-aligned (a kernel built without KASLR relocation)")) {
            try KernelImage(systemMap: map.replacingOccurrences(of: "ffffffff82000000 D __start_rodata", with: "ffffffff82001000 D __start_rodata"))
        }
    }
}
