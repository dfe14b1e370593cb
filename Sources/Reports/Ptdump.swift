import HostKernel
import PageTables

/// The kernel page table in the format of /sys/kernel/debug/page_tables/kernel.
///
/// Linux arch/x86/mm/dump_pagetables.c: a `---[ name ]---` line per marker; one line per run
/// of entries with the same level and the same flags (frame numbers are ignored, the
/// C-bit is part of the flags though not printed); `0x%016lx-0x%016lx   `, the size as
/// `%9lu%c ` in the largest exact unit of BKMGTPE, then USR, RW/ro, PWT, PCD, PSE, PAT,
/// GLB, NX/x columns (30 spaces when not present), then the level name.
public enum Ptdump {
    /// The kernel page table. With 4-level paging the whole of
    /// /sys/kernel/debug/page_tables/kernel: user space, the LDT remap, the direct map
    /// ("Low Kernel Mapping"), the vmalloc area and the vmemmap from the model's table, then
    /// the CPU entry area, the ESPfix stacks, the EFI area, the kernel image ("High Kernel
    /// Mapping"), modules and the fixmap as a kernel booted that way maps them
    /// (`KernelLayoutDump`). With 5-level paging the direct map and the vmalloc area only;
    /// on arm64 its own format.
    public static func render(_ kernel: Kernel) -> String {
        if kernel.config.isa == .arm64 { return Arm64Ptdump.render(kernel) }
        // The model keeps no s390 DAT tables for the kernel's identity mapping.
        if kernel.config.isa == .s390x { return "(no kernel page table on s390x: the model keeps no DAT tables for the identity mapping; --process prints a process's)\n" }
        if !kernel.config.la57 { return KernelLayoutDump.render(kernel) }
        let l = kernel.layout
        var out = ""
        section(kernel, "Low Kernel Mapping", from: l.pageOffset, to: l.vmallocStart, into: &out)
        section(kernel, "vmalloc() Area", from: l.vmallocStart, to: l.vmemmapStart, into: &out)
        out += "---[ Vmemmap ]---\n"
        return out
    }

    static func section(_ kernel: Kernel, _ name: String, from start: UInt64, to end: UInt64, into out: inout String) {
        section(kernel.pageTable, la57: kernel.config.la57, name, from: start, to: end, into: &out)
    }

    static func section(_ table: PageTable, la57: Bool, _ name: String, from start: UInt64, to end: UInt64, into out: inout String) {
        out += "---[ \(name) ]---\n"
        var visitor = RunVisitor(la57: la57)
        try? table.read(start: start, size: end - start, &visitor)
        visitor.flush(upTo: end)
        out += visitor.text
    }

    /// A process's page table as /sys/kernel/debug/page_tables/current_user shows its user
    /// half (runs merge on every attribute, the C-bit included, though ptdump prints no
    /// column for it), then each leaf with its raw x86 value, which does show it.
    public static func renderUser(_ p: UserProcess) -> String {
        var out = ""
        section(p.pageTable, la57: false, "User Space", from: 0, to: 1 << 47, into: &out)
        out += "---[ entries ]---\n"
        for leaf in (try? p.pageTable.leaves(virt: VirtAddr(0), size: 1 << 47)) ?? [] {
            out += hex(leaf.virt.rawValue, digits: 16) + " " + UserPTEOutcome(level: leaf.size.level, entry: leaf.descriptor).description + "\n"
        }
        return out
    }

    /// The level names of the generic ptdump walker, by cocomem level (1 = PTE). With 4-level
    /// paging the p4d is folded: the top level's entries are reported at depth 0 and print as
    /// pgd, and a p4d line never appears (mm/pagewalk.c real_depth; arch/x86/mm/dump_pagetables.c).
    static func levelName(_ level: Int, la57: Bool) -> String {
        if level == 4 && !la57 { return "pgd" }
        return ["pte", "pmd", "pud", "p4d", "pgd"][level - 1]
    }

    /// `%9lu%c` over B, K, M, G, T, P, E: divide by 1024 while exact.
    static func size(_ bytes: UInt64) -> String {
        sizeField(bytes, units: ["B", "K", "M", "G", "T", "P", "E"])
    }

    /// `%9lu%c`: `bytes` in the first unit, divided by 1024 while exact.
    static func sizeField(_ bytes: UInt64, units: [Character]) -> String {
        var v = bytes, u = 0
        while v & 1023 == 0 && v != 0 && u < units.count - 1 {
            v >>= 10
            u += 1
        }
        let n = String(v)
        return String(repeating: " ", count: max(0, 9 - n.count)) + n + String(units[u])
    }

    /// The flag columns for an entry at `level`. PWT/PCD/PAT follow Linux's PAT layout
    /// (WB 0, WC PWT, UC- PCD, UC PCD|PWT; arch/x86/mm/pat/memtype.c).
    static func flags(_ e: Descriptor, level: Int) -> String {
        let a = e.attributes
        guard e.isLeaf, a.contains(.present) else { return String(repeating: " ", count: 30) }
        let mt = a.memoryType
        var s = a.contains(.user) ? "USR " : "    "
        s += a.contains(.writable) ? "RW " : "ro "
        s += mt == .writeCombining || mt == .uncached ? "PWT " : "    "
        s += mt == .uncachedMinus || mt == .uncached ? "PCD " : "    "
        s += level > 1 ? "PSE " : "    "
        s += "    "  // PAT: none of the four PAT entries used needs it
        s += a.contains(.global) ? "GLB " : "    "
        s += a.contains(.noExecute) ? "NX " : "x  "
        return s
    }
}

/// Walks leaves and holes in address order, merging runs as note_page does.
struct RunVisitor: PageTableVisitor {
    typealias Store = ReadOnlyPageTable
    let la57: Bool
    var text = ""
    var runStart: UInt64?
    var runKey: (level: Int, flags: UInt16, present: Bool)?
    var flags: VisitFlags { .leaf }

    init(la57: Bool) { self.la57 = la57 }

    mutating func visit(_ v: Visit, table: inout ReadOnlyPageTable) throws(PageTableError) {
        let e = v.entry
        let key = (level: v.level, flags: e.isLeaf ? e.attributes.rawValue : 0, present: e.isLeaf && e.attributes.contains(.present))
        if let k = runKey, k.level == key.level, k.flags == key.flags, k.present == key.present { return }
        flush(upTo: v.address)
        runStart = v.address
        runKey = key
        pending = e
    }

    var pending: Descriptor = .none

    mutating func flush(upTo end: UInt64) {
        guard let start = runStart, let key = runKey else { return }
        text += hex(start, digits: 16) + "-" + hex(end, digits: 16) + "   " + Ptdump.size(end - start) + " "
            + Ptdump.flags(pending, level: key.level) + Ptdump.levelName(key.level, la57: la57) + "\n"
        runStart = nil
        runKey = nil
    }
}
