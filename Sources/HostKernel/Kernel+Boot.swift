import Hardware
import PageTables

/// One range to map at boot with the leaf sizes it may use. Linux arch/x86/mm/init.c
/// struct map_range.
public struct MapRange: Hashable, Sendable, CustomStringConvertible {
    public var start: UInt64
    public var end: UInt64
    /// Sizes allowed beyond 4K (page_size_mask).
    public var sizes: [PageSize]

    public var description: String {
        "[\(hex(start, digits: 10))-\(hex(end - 1, digits: 10))] page \((sizes.max() ?? .size4K))"
    }
}

extension Kernel {
    /// Leaf sizes the boot CPU allows (2M always, 1G with gbpages). Linux
    /// arch/x86/mm/init.c probe_page_size_mask.
    var pageSizeMask: [PageSize] { config.gbpages ? [.size2M, .size1G] : [.size2M] }

    /// Maps the ISA range regardless of holes, then every RAM range above it. Linux
    /// arch/x86/mm/init.c init_mem_mapping / init_range_memory_mapping.
    ///
    /// memory_map_top_down maps RAM in step-sized chunks; chunking is not modelled here, as it
    /// does not change the leaf sizes chosen; the count the kernel keeps, which it does
    /// change, is BootCounter's (`--count kernel`).
    mutating func bootDirectMap() {
        initMemoryMapping(start: 0, end: Self.isaEnd)
        for r in mappedRanges.dropFirst() { initMemoryMapping(start: r.lowerBound, end: r.upperBound) }
        // A range that began at 0 and runs past 1M also holds [1M, end).
        if let first = mappedRanges.first, first.upperBound > Self.isaEnd {
            initMemoryMapping(start: Self.isaEnd, end: first.upperBound)
        }
        directPagesCount = directMapLeafCounts()
        bootDirectPagesCount = directPagesCount
    }

    /// Maps one physical range into the direct map. Linux arch/x86/mm/init.c
    /// init_memory_mapping → split_mem_range → kernel_physical_mapping_init.
    mutating func initMemoryMapping(start: UInt64, end: UInt64) {
        for mr in Self.splitMemRange(start: start, end: end, sizes: pageSizeMask, memory: memory) {
            let big = mr.sizes.max() ?? .size4K
            // A promoted range maps the whole aligned region it lies in (phys_pmd_init and
            // phys_pud_init map from the region's start); existing tables are reused.
            let lo = mr.start & ~(big.bytes - 1)
            let hi = (mr.end + big.bytes - 1) & ~(big.bytes - 1)
            do {
                try pageTable.map(virt: va(PhysAddr(lo)), phys: PhysAddr(lo), size: hi - lo, attributes: pageKernel,
                                  sizes: [.size4K] + mr.sizes, reuseTables: true)
            } catch {
                preconditionFailure("boot mapping of \(mr) failed: \(error)")  // ranges are checked at init
            }
        }
    }

    /// Splits `[start, end)` into a 4K head, 2M up to a 1G boundary, 1G, a 2M tail and a 4K
    /// tail, then promotes each range whose whole enclosing 2M or 1G region is RAM, then
    /// merges neighbours of equal size. Linux arch/x86/mm/init.c split_mem_range (x86-64)
    /// and adjust_range_page_size_mask.
    public static func splitMemRange(start: UInt64, end limit: UInt64, sizes: [PageSize], memory: PhysicalMemory) -> [MapRange] {
        let m2 = PageSize.size2M.bytes, g1 = PageSize.size1G.bytes
        func up(_ x: UInt64, _ a: UInt64) -> UInt64 { (x + a - 1) & ~(a - 1) }
        func down(_ x: UInt64, _ a: UInt64) -> UInt64 { x & ~(a - 1) }
        let allow2M = sizes.contains(.size2M), allow1G = sizes.contains(.size1G)
        var ranges: [MapRange] = []
        func save(_ s: UInt64, _ e: UInt64, _ sz: [PageSize]) {
            if s < e { ranges.append(MapRange(start: s, end: e, sizes: sz)) }
        }
        var pos = start & ~(pageBytes - 1)
        // Head, up to the first 2M boundary.
        var e = min(up(pos, m2), limit)
        if pos < e { save(pos, e, []); pos = e }
        // 2M pages up to the first 1G boundary.
        var s = up(pos, m2)
        e = min(up(pos, g1), down(limit, m2))
        if s < e { save(s, e, allow2M ? [.size2M] : []); pos = e }
        // 1G pages.
        s = up(pos, g1)
        e = down(limit, g1)
        if s < e { save(s, e, (allow2M ? [.size2M] : []) + (allow1G ? [.size1G] : [])); pos = e }
        // 2M tail.
        s = up(pos, m2)
        e = down(limit, m2)
        if s < e { save(s, e, allow2M ? [.size2M] : []); pos = e }
        // 4K tail.
        save(pos, limit, [])

        // adjust_range_page_size_mask: promote when the enclosing region is all RAM.
        for i in ranges.indices {
            if allow2M && !ranges[i].sizes.contains(.size2M)
                && memory.isRAM(down(ranges[i].start, m2)..<up(ranges[i].end, m2)) {
                ranges[i].sizes.append(.size2M)
            }
            if allow1G && !ranges[i].sizes.contains(.size1G)
                && memory.isRAM(down(ranges[i].start, g1)..<up(ranges[i].end, g1)) {
                ranges[i].sizes.append(.size1G)
            }
        }
        // Merge neighbours with the same sizes.
        var merged: [MapRange] = []
        for r in ranges {
            if let last = merged.last, last.end == r.start, Set(last.sizes) == Set(r.sizes) {
                merged[merged.count - 1].end = r.end
            } else {
                merged.append(r)
            }
        }
        return merged
    }

    /// Leaves of each size in the direct map's window, counted by a walk.
    public func directMapLeafCounts() -> LeafCounts {
        guard directMapEnd > layout.pageOffset else { return LeafCounts() }
        return (try? pageTable.leafCounts(virt: VirtAddr(layout.pageOffset), size: directMapEnd - layout.pageOffset)) ?? LeafCounts()
    }
}
