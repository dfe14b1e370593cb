import Testing
import PageTables
@testable import Hardware
import Expectations

struct PhysicalMemoryTests {
    static let example = """
        [    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
        [    0.000000] BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved
        BIOS-e820: [mem 0x00000000000f0000-0x00000000000fffff] reserved
        BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable
        BIOS-e820: [mem 0x00000000fed1c000-0x00000000fed1ffff] ACPI data
        BIOS-e820: [mem 0x00000000fee00000-0x00000000fee00fff] ACPI NVS
        BIOS-e820: [mem 0x00000000ff000000-0x00000000ffffffff] unusable
        BIOS-e820: [mem 0x0000000100000000-0x000000063fffffff] usable
        """

    @Test func readsDmesgLinesWithAndWithoutTimestamps() throws {
        let m = try PhysicalMemory.parse(e820: Self.example)
        expectEqual(m.entries.count, 8)
        expectEqual(m.entries[4], E820Entry(start: 0xfed1c000, last: 0xfed1ffff, type: .acpiData))
        expectEqual(m.entries[5].type, .acpiNVS)
        expectEqual(m.entries[6].type, .unusable)
        expectEqual(m.ram, [0..<0x9f000, 0x100000..<0xc000_0000, 0x1_0000_0000..<0x6_4000_0000])
        expectEqual(m.endOfRAM, 0x6_4000_0000)
        expectEqual(m.entries[0].description, "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable")
    }

    @Test func pcLayoutHasTheLegacyHole() throws {
        let m = try PhysicalMemory.pc(size: ByteSize.parse("64G")!)
        expectEqual(m.ram, [0..<0xa0000, 0x100000..<(64 << 30)])
        expectEqual(m.entry(containing: 0xb8000)?.type, .reserved)
        expectEqual(m.totalRAM, (64 << 30) - 0x60000)
    }

    @Test func isRAMNeedsOneWholeRange() throws {
        let m = try PhysicalMemory.parse(e820: Self.example)
        expectTrue(m.isRAM(0x100000..<0x200000))
        expectTrue(!m.isRAM(0..<0x200000))  // crosses the hole at 0x9f000
        expectTrue(!m.isRAM(0xbfe0_0000..<0xc020_0000))
    }

    @Test func unknownTypeIsAnErrorNamingTheLineAndTheValidTypes() {
        let text = "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable\nBIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] free\n"
        #expect(throws: MemoryMapError(line: 2, "unknown type 'free': valid types are 'usable', 'reserved', 'soft reserved', 'ACPI data', 'ACPI NVS', 'unusable', 'persistent (type 7)', 'persistent (type 12)', 'type N'")) {
            try PhysicalMemory.parse(e820: text)
        }
    }

    @Test func malformedLineIsAnError() {
        #expect(throws: MemoryMapError.self) { try PhysicalMemory.parse(e820: "usable 0-1000") }
        let error = #expect(throws: MemoryMapError.self) {
            try PhysicalMemory.parse(e820: "BIOS-e820: [mem 0x0000000000000000-0x00000000000zfbff] usable")
        }
        expectEqual(error?.line, 1)
        expectEqual(error?.description.hasPrefix("e820 line 1: cannot read the range"), true)
    }

    @Test func reversedRangeIsAnError() {
        let error = #expect(throws: MemoryMapError.self) {
            try PhysicalMemory.parse(e820: "BIOS-e820: [mem 0x0000000000200000-0x00000000001fffff] usable")
        }
        expectEqual(error?.message, "range ends (0x1fffff) before it starts (0x200000)")
    }

    @Test func overlappingLinesAreAnErrorNamingBoth() {
        let text = """
            BIOS-e820: [mem 0x0000000000000000-0x00000000bfffffff] usable
            BIOS-e820: [mem 0x0000000000100000-0x00000000001fffff] reserved
            """
        let error = #expect(throws: MemoryMapError.self) { try PhysicalMemory.parse(e820: text) }
        expectEqual(error?.line, 2)
        expectEqual(error?.message.contains("overlaps line 1"), true)
    }

    @Test func mapWithoutRAMIsAnError() {
        #expect(throws: MemoryMapError(line: nil, "no usable RAM")) {
            try PhysicalMemory.parse(e820: "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] reserved")
        }
        #expect(throws: MemoryMapError(line: nil, "no 'BIOS-e820:' lines found")) { try PhysicalMemory.parse(e820: "\n# nothing\n") }
    }

    @Test func tooSmallPCIsAnError() {
        #expect(throws: MemoryMapError.self) { try PhysicalMemory.pc(size: 0x80000) }
    }

    @Test(arguments: [
        ("4K", 4096), ("2M", 2 << 20), ("1G", 1 << 30), ("3G-1M", (3 << 30) - (1 << 20)), ("0x1000", 4096),
        ("64G", 64 << 30), ("1T", 1 << 40), ("1_000", 1000), ("1G+4K", (1 << 30) + 4096),
    ] as [(String, UInt64)])
    func byteSizesParse(_ text: String, _ value: UInt64) {
        expectEqual(ByteSize.parse(text), value)
    }

    @Test(arguments: ["", "G", "4X", "1M-2M", "0x", "99999999999999999999", "16384P", "4KB"])
    func badByteSizesAreRefused(_ text: String) {
        expectEqual(ByteSize.parse(text), nil)
    }

    /// pfn_valid by 128 MiB section: a section with any RAM is valid whole (the one holding
    /// the 640K hole too), the PCI hole's sections and anything past RAM are not.
    @Test func pfnValidFollowsMemorySections() throws {
        let m = try PhysicalMemory.parse(e820: Self.example)
        expectTrue(m.pfnValid(0x9f))  // below the 640K hole
        expectTrue(m.pfnValid(0xa0))  // in it, same section as RAM
        #expect(m.pfnValid(0xbfff_f000 >> 12) && !m.pfnValid(0xc000_0000 >> 12))  // the PCI hole's sections
        expectTrue(!m.pfnValid(0xfed1_c000 >> 12))  // ACPI data is not memblock memory
        expectTrue(m.pfnValid(m.endOfRAM / 4096 - 1))
        expectTrue(!m.pfnValid(m.endOfRAM / 4096 + (1 << 15)))
    }
}
