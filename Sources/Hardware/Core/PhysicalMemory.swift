import PageTables

/// The machine's physical memory: the firmware's e820 map and the RAM it describes.
///
/// RAM is what the kernel puts in memblock.memory: the `usable` ranges, trimmed to whole
/// pages and merged where they touch (Linux arch/x86/kernel/e820.c e820__memblock_setup,
/// mm/memblock.c memblock_trim_memory).
public struct PhysicalMemory: Hashable, Sendable {
    /// The map as given, sorted by start address.
    public let entries: [E820Entry]
    /// Page-aligned RAM ranges, sorted and merged.
    public let ram: [Range<UInt64>]

    /// Builds the memory map from entries; they must not overlap.
    public init(entries: [E820Entry]) throws(MemoryMapError) {
        let sorted = entries.sorted { $0.start < $1.start }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.start <= a.last {
            throw MemoryMapError(line: nil, "ranges overlap: \(a) and \(b)")
        }
        var ram: [Range<UInt64>] = []
        for e in sorted where e.type == .usable {
            let start = (e.start + pageBytes - 1) & ~(pageBytes - 1)
            let end = (e.last &+ 1) & ~(pageBytes - 1)
            guard start < end else { continue }
            if let prev = ram.last, prev.upperBound == start {
                ram[ram.count - 1] = prev.lowerBound..<end
            } else {
                ram.append(start..<end)
            }
        }
        guard !ram.isEmpty else { throw MemoryMapError(line: nil, "no usable RAM") }
        self.entries = sorted
        self.ram = ram
    }

    /// The usual PC layout for `size` bytes of RAM: [0, 640K) and [1M, size) usable, the
    /// legacy hole between them reserved (VGA, option ROMs and the BIOS).
    public static func pc(size: UInt64) throws(MemoryMapError) -> PhysicalMemory {
        guard size > 0x10_0000, size & (pageBytes - 1) == 0 else {
            throw MemoryMapError(line: nil, "memory size \(ByteSize.format(size)) must be a multiple of 4K above 1M")
        }
        return try PhysicalMemory(entries: [
            E820Entry(start: 0, last: 0x9_ffff, type: .usable),
            E820Entry(start: 0xa_0000, last: 0xf_ffff, type: .reserved),
            E820Entry(start: 0x10_0000, last: size - 1, type: .usable),
        ])
    }

    /// First byte past the end of RAM (max_pfn << PAGE_SHIFT).
    public var endOfRAM: UInt64 { ram.last!.upperBound }
    /// Bytes of RAM.
    public var totalRAM: UInt64 { ram.reduce(0) { $0 + UInt64($1.count) } }

    /// Whether `range` lies entirely in one RAM range. Linux memblock_is_region_memory.
    public func isRAM(_ range: Range<UInt64>) -> Bool {
        guard let r = ramRange(containing: range.lowerBound) else { return false }
        return range.upperBound <= r.upperBound
    }

    /// The RAM range that holds `address`, if any (binary search).
    public func ramRange(containing address: UInt64) -> Range<UInt64>? {
        let i = firstRAMRange(endingAfter: address)
        return i < ram.count && ram[i].contains(address) ? ram[i] : nil
    }

    /// The index of the first RAM range that ends after `address` (binary search).
    func firstRAMRange(endingAfter address: UInt64) -> Int {
        var lo = 0, hi = ram.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ram[mid].upperBound <= address { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// Whether a pfn has a struct page: its 128 MiB memory section (SECTION_SIZE_BITS 27,
    /// arch/x86/include/asm/sparsemem.h) holds some RAM, as boot memory sections are valid
    /// whole. Linux include/linux/mmzone.h pfn_valid (SPARSEMEM, early sections).
    public func pfnValid(_ pfn: UInt64) -> Bool {
        let start = (pfn << 12) & ~((1 << 27) - 1)  // the section's first byte
        let i = firstRAMRange(endingAfter: start)
        return i < ram.count && ram[i].lowerBound < start + (1 << 27)
    }

    /// The e820 entry that holds `address`, if any.
    public func entry(containing address: UInt64) -> E820Entry? {
        entries.first { $0.start <= address && address <= $0.last }
    }
}
