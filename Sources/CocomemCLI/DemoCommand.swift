import ArgumentParser
import Hardware
import HostKernel
import PageTables
import Reports

/// `cocomem demo` (and `cocomem` alone): a built-in showcase.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the built-in showcase: what one set_memory_decrypted does to the direct map.")

    /// The machine of the showcase: 25 GiB of RAM around the usual PCI hole.
    static let e820 = """
        BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
        BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved
        BIOS-e820: [mem 0x00000000000f0000-0x00000000000fffff] reserved
        BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable
        BIOS-e820: [mem 0x00000000c0000000-0x00000000ffffffff] reserved
        BIOS-e820: [mem 0x0000000100000000-0x000000063fffffff] usable
        """

    func run() throws {
        print(try Self.text())
    }

    /// The showcase's whole output.
    static func text() throws -> String {
        var k = try Kernel(memory: PhysicalMemory.parse(e820: e820))
        var out = "cocomem demo: one 4K page of the host direct map changes its C-bit.\n\n"
        out += "Boot: 25 GiB of RAM, gbpages on. The direct map after init_mem_mapping:\n"
        out += Reports.Meminfo.directMap(k).indented() + "\n"
        let va = k.va(PhysAddr(0x4000_1000)).rawValue
        out += "set_memory_decrypted(\(hex(va)), 1) = \(try k.setMemoryDecrypted(va, numpages: 1))\n"
        out += "The page sat in a 1G leaf: it split 1G -> 2M -> 4K (split_page_count twice):\n"
        out += Reports.Meminfo.directMap(k).indented() + "\n"
        let leaves = try k.pageTable.leaves(virt: VirtAddr(va - pageBytes), size: 3 * pageBytes)
        for l in leaves { out += "  \(l)\n" }
        out += "\nCounters:\n"
        for (name, value) in k.stats.fields where value != 0 { out += "  \(name) \(value)\n" }
        out += "\nTry: cocomem meminfo --memory 64G --apply 'set_memory_4k pa:0x40000000 1'\n"
        out += "     cocomem ptdump --memory 4G\n"
        return out
    }
}

extension String {
    func indented() -> String {
        split(separator: "\n", omittingEmptySubsequences: false).map { $0.isEmpty ? "" : "  " + $0 }.joined(separator: "\n")
    }
}
