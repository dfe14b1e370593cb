import HostKernel
import PageTables

/// The whole x86-64 kernel page table (4-level paging, no KASLR, no PTI, no KASAN) in the
/// format of /sys/kernel/debug/page_tables/kernel, as the generic walker (mm/ptdump.c) feeds
/// x86's note_page (arch/x86/mm/dump_pagetables.c): every entry of the two walked ranges,
/// [0, 0x800000000000) and [GUARD_HOLE_END_ADDR, 2^64), is noted at its level (an empty
/// top-level entry as pgd, every pte of a present pte table), a run breaks when the flags,
/// the level or an address marker changes, at most one marker advances per entry (so a run
/// that crosses two shows the second one entry late), the ESPfix area prints 16 lines and
/// then "... N entries skipped ... ", and the final flush prints the last run ending at 0.
///
/// The direct map and the vmalloc area come from the model's table. The rest is drawn as a
/// kernel of the same RAM and CPU count maps it: the vmemmap (one 2M page per 128M section
/// with RAM, vmemmap_populate_hugepages), the CPU entry area (the RO IDT, then per CPU the
/// GDT, entry stack, TSS with I/O bitmaps, and the DF/NMI/DB/MCE exception stacks, on an
/// AMD host: no debug store, no #VC stacks), the ESPfix stacks with page_random and
/// slot_random 0 (the kernel draws them at boot), the kernel image after mark_rodata_ro
/// (when the machine has one), no modules, and the fixmap of a distribution config with one
/// IOAPIC in x2APIC mode and vsyscall=xonly. docs/notes/x86-ptdump-layout.md has the sources.
public enum KernelLayoutDump {
    // x86 PTE bits (arch/x86/include/asm/pgtable_types.h).
    static let P: UInt64 = 1 << 0, RW: UInt64 = 1 << 1, USR: UInt64 = 1 << 2, PWT: UInt64 = 1 << 3, PCD: UInt64 = 1 << 4
    static let A: UInt64 = 1 << 5, D: UInt64 = 1 << 6, PSE: UInt64 = 1 << 7, GLB: UInt64 = 1 << 8, NX: UInt64 = 1 << 63
    /// PAGE_KERNEL_RO and PAGE_KERNEL (set_memory_ro clears DIRTY with RW).
    static let kernelRO = P | A | GLB | NX, kernel = P | RW | A | D | GLB | NX
    /// PAGE_KERNEL_LARGE, and the image's __PAGE_KERNEL_LARGE_EXEC after set_memory_ro.
    static let kernelLarge = kernel | PSE, largeROX = P | A | PSE | GLB
    /// PAGE_KERNEL_IO_NOCACHE (set_fixmap_nocache): UC is PWT|PCD.
    static let ioNocache = kernel | PWT | PCD

    /// Fixed addresses of the 4-level layout (arch/x86/include/asm/pgtable_64_types.h,
    /// page_64_types.h, fixmap.h).
    static let ldtBase: UInt64 = 0xffff_8800_0000_0000
    static let cpuEntryArea: UInt64 = 0xffff_fe00_0000_0000
    static let espfixBase: UInt64 = 0xffff_ff00_0000_0000
    static let efiEnd: UInt64 = 0xffff_ffef_0000_0000
    static let modules: UInt64 = 0xffff_ffff_c000_0000
    static let modulesEnd: UInt64 = 0xffff_ffff_ff00_0000
    static let fixaddrTop: UInt64 = 0xffff_ffff_ff7f_f000
    /// __end_of_permanent_fixed_addresses with VSYSCALL_EMULATION, OHCI1394 early DMA, 128
    /// IOAPIC slots, PARAVIRT_XXL and APEI GHES (a distribution kernel): FIX_IO_APIC_BASE_0 is 516.
    static let fixmapEntries: UInt64 = 647, ioapicFix: UInt64 = 516
    static var fixaddrStart: UInt64 { fixaddrTop - fixmapEntries << 12 }

    /// address_markers, in the order of enum address_markers_idx; ESPfix shows 16 lines.
    static func markers(_ l: KernelLayout) -> [(start: UInt64, name: String, maxLines: Int)] {
        [(0, "User Space", 0), (1 << 63, "Kernel Space", 0), (ldtBase, "LDT remap", 0), (l.pageOffset, "Low Kernel Mapping", 0),
         (l.vmallocStart, "vmalloc() Area", 0), (l.vmemmapStart, "Vmemmap", 0), (cpuEntryArea, "CPU entry Area", 0),
         (espfixBase, "ESPfix Area", 16), (efiEnd, "EFI Runtime Services", 0), (KernelImage.startKernelMap, "High Kernel Mapping", 0),
         (modules, "Modules", 0), (modulesEnd, "End Modules", 0), (fixaddrStart, "Fixmap Area", 0), (.max, "", 0)]
    }

    /// Consecutive entries of one level with the same flags: `count` entries from `start`.
    /// `key` is what note_page compares (0 for an empty entry); `columns` what it prints.
    struct Run {
        let start: UInt64
        let count: UInt64
        let level: Int
        let key: UInt64
        let columns: String
    }

    /// note_page's state: the run being gathered, the marker, the lines under it.
    struct Notes {
        let markers: [(start: UInt64, name: String, maxLines: Int)]
        var marker = 0, lines = 0, started = false
        var start: UInt64 = 0, level = 0, key: UInt64 = 0, columns = ""
        var out = ""

        init(markers: [(start: UInt64, name: String, maxLines: Int)]) { self.markers = markers }

        /// One entry at `address`, as note_page sees it (level 0 is the final flush).
        mutating func note(_ address: UInt64, level: Int, key: UInt64, columns: String) {
            if !started {
                started = true
                out += "---[ \(markers[0].name) ]---\n"
            } else if key != self.key || level != self.level || address >= markers[marker + 1].start {
                let limit = markers[marker].maxLines
                if limit == 0 || lines < limit {
                    out += hex(start, digits: 16) + "-" + hex(address, digits: 16) + "   " + Ptdump.size(address &- start) + " "
                        + self.columns + Ptdump.levelName(self.level, la57: false) + "\n"
                }
                lines += 1
                if address >= markers[marker + 1].start {
                    if limit > 0 && lines > limit {
                        let n = lines - limit
                        out += "... \(n) entr\(n == 1 ? "y" : "ies") skipped ... \n"
                    }
                    marker += 1
                    lines = 0
                    out += "---[ \(markers[marker].name) ]---\n"
                }
            } else {
                return
            }
            start = address
            self.level = level
            self.key = key
            self.columns = columns
        }

        /// A run of entries: noted at its first entry, then wherever a marker falls due (the
        /// walker notes every entry; only these can break the run).
        mutating func feed(_ r: Run) {
            let size: UInt64 = 1 << (12 + 9 * UInt64(r.level - 1))
            var address = r.start, left = r.count
            note(address, level: r.level, key: r.key, columns: r.columns)
            while left > 1 {
                let due = markers[marker + 1].start
                let step: UInt64
                if due <= address {
                    step = 1  // a marker one behind: the next entry breaks
                } else if due == .max {
                    return
                } else {
                    step = (due - address + size - 1) / size
                }
                guard step < left else { return }
                address &+= step * size
                left -= step
                note(address, level: r.level, key: r.key, columns: r.columns)
            }
        }
    }

    /// The printed flag columns of x86 PTE bits at `level` (printk_prot).
    static func columns(_ bits: UInt64, level: Int) -> String {
        guard bits & P != 0 else { return String(repeating: " ", count: 30) }
        var s = bits & USR != 0 ? "USR " : "    "
        s += bits & RW != 0 ? "RW " : "ro "
        s += bits & PWT != 0 ? "PWT " : "    "
        s += bits & PCD != 0 ? "PCD " : "    "
        s += level > 1 && bits & PSE != 0 ? "PSE " : "    "
        s += "    "
        s += bits & GLB != 0 ? "GLB " : "    "
        s += bits & NX != 0 ? "NX " : "x  "
        return s
    }

    /// Runs of one level from a list of entry keys (x86 bits; 0 is empty).
    static func runs(_ keys: [UInt64], from start: UInt64, level: Int) -> [Run] {
        let size: UInt64 = 1 << (12 + 9 * UInt64(level - 1))
        var out: [Run] = []
        var i = 0
        while i < keys.count {
            var j = i + 1
            while j < keys.count && keys[j] == keys[i] { j += 1 }
            out.append(Run(start: start &+ UInt64(i) * size, count: UInt64(j - i), level: level, key: keys[i], columns: columns(keys[i], level: level)))
            i = j
        }
        return out
    }

    /// The runs of the model's table over [start, start + size): leaves and empty entries at
    /// their levels, keyed by the model's attributes (the C-bit included, though not printed).
    static func tableRuns(_ kernel: Kernel, from start: UInt64, size: UInt64) -> [Run] {
        var v = RunCollector()
        try? kernel.pageTable.read(start: start, size: size, &v)
        v.close()
        return v.runs
    }

    struct RunCollector: PageTableVisitor {
        typealias Store = ReadOnlyPageTable
        var flags: VisitFlags { .leaf }
        var runs: [Run] = []
        var current: (start: UInt64, count: UInt64, level: Int, key: UInt64, entry: Descriptor)?

        mutating func visit(_ v: Visit, table: inout ReadOnlyPageTable) throws(PageTableError) {
            let e = v.entry, key: UInt64 = e.isNone ? 0 : UInt64(e.attributes.rawValue) << 1 | 1
            if let c = current, c.level == v.level, c.key == key, c.start &+ c.count << (12 + 9 * UInt64(v.level - 1)) == v.address {
                current!.count += 1
                return
            }
            close()
            current = (v.address, 1, v.level, key, e)
        }

        mutating func close() {
            guard let c = current else { return }
            runs.append(Run(start: c.start, count: c.count, level: c.level, key: c.key, columns: Ptdump.flags(c.entry, level: c.level)))
            current = nil
        }
    }

    /// Pages of a region inside one pgd (512G from `base`), given by key per page from the
    /// start (pages past `pages.count` empty): pte tables where a page is mapped, empty
    /// pmds and puds elsewhere. `puds` limits the walk to the first puds of the pgd.
    static func pageRuns(_ pages: [UInt64], base: UInt64, puds: Int = 512) -> [Run] {
        var out: [Run] = []
        var hole: (start: UInt64, count: UInt64, level: Int)?
        func flushHole() {
            if let h = hole { out.append(Run(start: h.start, count: h.count, level: h.level, key: 0, columns: columns(0, level: h.level))) }
            hole = nil
        }
        func addHole(_ start: UInt64, level: Int) {
            if let h = hole, h.level == level { hole!.count += 1; return }
            flushHole()
            hole = (start, 1, level)
        }
        func mapped(_ from: Int, _ count: Int) -> Bool {
            from < pages.count && pages[from..<min(pages.count, from + count)].contains { $0 != 0 }
        }
        for u in 0..<puds {
            let pudStart = base + UInt64(u) << 30
            guard mapped(u << 18, 1 << 18) else { addHole(pudStart, level: 3); continue }
            for m in 0..<512 {
                let first = u << 18 + m << 9, pmdStart = pudStart + UInt64(m) << 21
                guard mapped(first, 512) else { addHole(pmdStart, level: 2); continue }
                flushHole()
                let keys = (first..<first + 512).map { $0 < pages.count ? pages[$0] : 0 }
                out += runs(keys, from: pmdStart, level: 1)
            }
        }
        flushHole()
        return out
    }

    /// The vmemmap: a 2M page of struct pages for each 128M section holding RAM, in the pgd
    /// at VMEMMAP_START; empty pgds after it up to the CPU entry area.
    static func vmemmapRuns(_ kernel: Kernel) -> [Run] {
        let base = kernel.layout.vmemmapStart
        var present: [Range<UInt64>] = []  // sections
        for r in kernel.memory.ram {
            let s = r.lowerBound >> 27, e = (r.upperBound - 1) >> 27 + 1
            if let last = present.last, last.upperBound >= s { present[present.count - 1] = last.lowerBound..<max(e, last.upperBound) } else { present.append(s..<e) }
        }
        var out: [Run] = []
        var holeStart: UInt64?, holeCount: UInt64 = 0
        func flush() {
            if let h = holeStart { out.append(Run(start: h, count: holeCount, level: 3, key: 0, columns: columns(0, level: 3))) }
            holeStart = nil
            holeCount = 0
        }
        // The vmemmap spans two pgds (1T): a pgd without a section of RAM is one empty pgd.
        for g in UInt64(0)..<2 {
            let pgdSections = g * 512 * 512..<(g + 1) * 512 * 512
            guard present.contains(where: { $0.overlaps(pgdSections) }) else {
                out.append(Run(start: base + g << 39, count: 1, level: 4, key: 0, columns: columns(0, level: 4)))
                continue
            }
            for u in g * 512..<g * 512 + 512 {
                let sections = u * 512..<u * 512 + 512
                let here = present.filter { $0.overlaps(sections) }.map { max($0.lowerBound, sections.lowerBound)..<min($0.upperBound, sections.upperBound) }
                guard !here.isEmpty else {
                    if holeStart == nil { holeStart = base + u << 30 }
                    holeCount += 1
                    continue
                }
                flush()
                var keys = [UInt64](repeating: 0, count: 512)
                for r in here { for s in r { keys[Int(s - sections.lowerBound)] = kernelLarge } }
                out += runs(keys, from: base + u << 30, level: 2)
            }
            flush()
        }
        let next = base + (2 << 39)
        out.append(Run(start: next, count: (cpuEntryArea - next) >> 39, level: 4, key: 0, columns: columns(0, level: 4)))
        return out
    }

    /// Pages of one CPU's struct cpu_entry_area on an AMD host (64-bit, IOPERM, AMD memory
    /// encryption): GDT (RO), entry stack, the TSS with both I/O bitmaps (5 pages, RO),
    /// then the exception stacks: guard, DF, guard, NMI, guard, DB, guard, MCE (8K each),
    /// and the #VC stacks, their guards, the debug store and its buffers unmapped (40 pages).
    /// arch/x86/include/asm/cpu_entry_area.h; arch/x86/mm/cpu_entry_area.c setup_cpu_entry_area.
    static let cpuArea: [UInt64] = [kernelRO, kernel] + [UInt64](repeating: kernelRO, count: 5)
        + [0, kernel, kernel, 0, kernel, kernel, 0, kernel, kernel, 0, kernel, kernel] + [UInt64](repeating: 0, count: 40)

    /// The CPU entry area: the RO IDT page, then each possible CPU's area (cea_offset(cpu) is
    /// the CPU without KASLR); then the empty pgd before ESPfix.
    static func cpuEntryRuns(cpus: Int) -> [Run] {
        var pages: [UInt64] = [kernelRO]
        for _ in 0..<cpus { pages += cpuArea }
        return pageRuns(pages, base: cpuEntryArea)
            + [Run(start: cpuEntryArea + (1 << 39), count: 1, level: 4, key: 0, columns: columns(0, level: 4))]
    }

    /// ESPfix with page_random 0: puds 0-3 share one pmd table whose 512 pmds share one pte
    /// table mapping every 16th page (RO): 65,536 aliases; then the empty puds of its pgd.
    /// arch/x86/kernel/espfix_64.c init_espfix_ap.
    static func espfixRuns() -> [Run] {
        var out: [Run] = []
        out.reserveCapacity(4 * 512 * 64 + 1)
        let ro = columns(kernelRO, level: 1), none = columns(0, level: 1)
        for i in UInt64(0)..<(4 * 512 * 32) {
            let page = espfixBase + i << 16
            out.append(Run(start: page, count: 1, level: 1, key: kernelRO, columns: ro))
            out.append(Run(start: page + (1 << 12), count: 15, level: 1, key: 0, columns: none))
        }
        out.append(Run(start: espfixBase + (4 << 30), count: 508, level: 3, key: 0, columns: columns(0, level: 3)))
        return out
    }

    /// The last pgd: EFI's area empty (its maps live in efi_mm), the kernel image's pud, and
    /// the pud of modules and the fixmap.
    static func topRuns(_ image: KernelImage?) -> [Run] {
        let pgd: UInt64 = 0xffff_ff80_0000_0000
        var out = [Run(start: pgd, count: 510, level: 3, key: 0, columns: columns(0, level: 3))]
        // level2_kernel_pgt after cleanup_highmap and mark_rodata_ro.
        var pmds = [UInt64](repeating: 0, count: 512)
        var split: [Int: [UInt64]] = [:]  // pmd index → its 512 ptes
        if let image {
            let base = KernelImage.startKernelMap
            func pmd(_ v: UInt64) -> Int { Int((v - base) >> 21) }
            func pfnAlign(_ v: UInt64) -> UInt64 { (v + 0xfff) & ~0xfff }
            let textEnd = pfnAlign(image.etext), rodataEnd = pfnAlign(image.endRodata)
            let allEnd = (image.brkEnd + 0x1f_ffff) & ~0x1f_ffff
            // set_memory_ro cleared RW and DIRTY; free_init_pages sets RW again, not DIRTY.
            let freed = P | RW | A | PSE | GLB | NX
            // Each 4K page's bits; a 2M page stays whole when all its pages agree.
            func page(_ v: UInt64) -> UInt64 {
                if v < textEnd { return largeROX }                     // text: ro x
                if v < image.startRodata { return freed }              // freed text/rodata gap
                if v < rodataEnd { return largeROX | NX }              // rodata: ro NX
                if v < image.sdata { return freed }                    // freed rodata/data gap
                return kernel | PSE                                    // data, init, bss, brk: RW NX
            }
            var v = image.text & ~0x1f_ffff
            while v < allEnd {
                let bits = (0..<512).map { page(v + UInt64($0) << 12) }
                if Set(bits).count == 1 { pmds[pmd(v)] = bits[0] } else { split[pmd(v)] = bits.map { $0 & ~PSE } }
                v += 1 << 21
            }
        }
        var m = 0
        let kernelPud = KernelImage.startKernelMap
        while m < 512 {
            if let ptes = split[m] {
                out += runs(ptes, from: kernelPud + UInt64(m) << 21, level: 1)
                m += 1
                continue
            }
            var e = m + 1
            while e < 512 && split[e] == nil && pmds[e] == pmds[m] { e += 1 }
            out.append(Run(start: kernelPud + UInt64(m) << 21, count: UInt64(e - m), level: 2, key: pmds[m], columns: columns(pmds[m], level: 2)))
            m = e
        }
        // level2_fixmap_pgt: modules (none loaded) and pmd 504 empty, pte tables at 505
        // (early_ioremap's bm_pte) and 506-507 (level1_fixmap_pgt), 508-511 empty.
        out.append(Run(start: modules, count: 505, level: 2, key: 0, columns: columns(0, level: 2)))
        var ptes = [UInt64](repeating: 0, count: 3 * 512)
        let first: UInt64 = 0xffff_ffff_ff20_0000
        ptes[Int((fixaddrTop - ioapicFix << 12 - first) >> 12)] = ioNocache
        out += runs(ptes, from: first, level: 1)
        out.append(Run(start: 0xffff_ffff_ff80_0000, count: 4, level: 2, key: 0, columns: columns(0, level: 2)))
        return out
    }

    public static func render(_ kernel: Kernel) -> String {
        var notes = Notes(markers: markers(kernel.layout))
        let l = kernel.layout
        for r in tableRuns(kernel, from: 0, size: 1 << 47) { notes.feed(r) }
        for r in tableRuns(kernel, from: ldtBase, size: l.vmemmapStart - ldtBase) { notes.feed(r) }
        for r in vmemmapRuns(kernel) + cpuEntryRuns(cpus: kernel.cpuCount) + espfixRuns() + topRuns(kernel.config.image) { notes.feed(r) }
        notes.note(0, level: 0, key: 1, columns: "")
        return notes.out
    }
}
