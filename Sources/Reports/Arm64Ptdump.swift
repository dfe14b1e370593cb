import HostKernel
import PageTables

/// The arm64 kernel page table as /sys/kernel/debug/kernel_page_tables prints it (Linux
/// 6.12-6.18 arch/arm64/mm/ptdump.c, 4K granule, 48-bit VAs, no KASAN): `---[ name ]---` at
/// each marker; one line per run of entries with the same level and protection bits,
/// `0x%016lx-0x%016lx   `, the size as `%9lu%c` from KiB over KMGTPE, a space and the level
/// name (PGD, PUD, PMD, PTE: P4D is folded), then ` %s` for each of VALID (" "/"F"), USER,
/// RDONLY (ro/RW), PXN (NX/x ), SHARED, AF, NG, CONT, BLK, UXN, GP and the memory type; an
/// empty entry prints the level name alone.
///
/// The walk stops at the vmemmap marker: cocomem maps the linear map and vmap() areas only,
/// so the kernel image (at the start of the vmalloc area), modules, the vmemmap and the
/// fixmap, which a real dump shows, appear as holes or not at all.
public enum Arm64Ptdump {
    /// The markers up to the vmemmap, as ptdump_init lists them.
    static let markers: [(address: UInt64, name: String)] = [
        (0xffff_0000_0000_0000, "Linear Mapping start"), (0xffff_8000_0000_0000, "Linear Mapping end"),
        (0xffff_8000_0000_0000, "Modules start"), (0xffff_8000_8000_0000, "Modules end"),
        (0xffff_8000_8000_0000, "vmalloc() area"), (0xffff_fdff_bf80_0000, "vmalloc() end"),
        (0xffff_fdff_c000_0000, "vmemmap start"),
    ]

    public static func render(_ kernel: Kernel) -> String {
        var state = NoteState()
        state.out = "---[ \(markers[0].name) ]---\n"
        state.start = markers[0].address
        let end = markers[markers.count - 1].address
        var visitor = NoteVisitor(state: state)
        try? kernel.pageTable.read(start: markers[0].address, size: end - markers[0].address, &visitor)
        visitor.state.note(address: end, level: 0, prot: nil)
        return visitor.state.out
    }

    /// ptdump's level names by cocomem level (1 = PTE), P4D folded into PGD.
    static func levelName(_ level: Int) -> String { ["PTE", "PMD", "PUD", "PGD"][level - 1] }

    /// The protection columns of a leaf at `level`, or nil for an empty entry.
    static func bits(_ e: Descriptor, level: Int) -> String? {
        guard e.isLeaf else { return nil }
        let a = e.attributes
        var s = a.contains(.present) ? "  " : " F"
        s += a.contains(.user) ? " USR" : "    "
        s += a.contains(.writable) ? " RW" : " ro"
        s += a.contains(.noExecute) ? " NX" : " x "
        s += " SHD AF"  // PTE_MAYBE_SHARED and PTE_AF are in every kernel pgprot
        s += a.contains(.global) ? "   " : " NG"
        s += a.contains(.contiguous) ? " CON" : "    "
        s += level > 1 ? " BLK" : "    "
        s += " UXN"  // kernel mappings are never user-executable
        s += "   "  // GP: no BTI guarded pages
        if a.contains(.tagged) {
            s += " MEM/NORMAL-TAGGED"
        } else {
            switch a.memoryType {
            case .writeBack: s += " MEM/NORMAL"
            case .writeCombining: s += " MEM/NORMAL-NC"
            default: s += " DEVICE/nGnRE"
            }
        }
        return s
    }

    /// note_page's state: the run being gathered and the next marker.
    struct NoteState {
        var out = ""
        var start: UInt64 = 0
        var level = 0
        var prot: String?? = .none
        var marker = 0

        /// note_page: a new entry at `address` ends the run when its level or protection
        /// differs, or when it reaches the next marker.
        mutating func note(address: UInt64, level: Int, prot: String?) {
            let next = marker + 1 < Arm64Ptdump.markers.count ? Arm64Ptdump.markers[marker + 1].address : .max
            if case .some(let current) = self.prot {
                guard current != prot || level != self.level || address >= next else { return }
                out += hex(start, digits: 16) + "-" + hex(address, digits: 16) + "   "
                    + Ptdump.sizeField((address - start) >> 10, units: ["K", "M", "G", "T", "P", "E"]) + " " + Arm64Ptdump.levelName(self.level)
                    + (current ?? "") + "\n"
            }
            while marker + 1 < Arm64Ptdump.markers.count, address >= Arm64Ptdump.markers[marker + 1].address {
                marker += 1
                out += "---[ \(Arm64Ptdump.markers[marker].name) ]---\n"
            }
            start = address
            self.level = level
            self.prot = .some(prot)
        }
    }

    /// Calls note_page for every entry that is not a table, in address order.
    struct NoteVisitor: PageTableVisitor {
        typealias Store = ReadOnlyPageTable
        var state: NoteState
        var flags: VisitFlags { .leaf }
        mutating func visit(_ v: Visit, table: inout ReadOnlyPageTable) throws(PageTableError) {
            state.note(address: max(v.address, state.start), level: v.level, prot: Arm64Ptdump.bits(v.entry, level: v.level))
        }
    }
}
