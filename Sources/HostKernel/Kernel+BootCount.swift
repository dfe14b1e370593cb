import Hardware
import PageTables

/// The x86-64 kernel's own count of direct-map pages after boot (direct_pages_count, what
/// /proc/meminfo's DirectMap lines print), which is not a walk of the table: init_mem_mapping
/// maps [0, 1M) at 4K, then memory_map_top_down maps RAM in chunks from the top (a first 2M
/// chunk, then steps growing 256-fold: 2M, 512M, 128G, …), each through split_mem_range,
/// whose adjust_range_page_size_mask gives a partial range the 1G (or 2M) page size when the
/// whole aligned region around it is RAM. A later chunk that reaches a large leaf an earlier
/// chunk made counts it again (phys_pud_init/phys_pmd_init/phys_pte_init: `if
/// (!after_bootmem) pages++` on an entry already present), so a machine can report more
/// than its RAM. Linux arch/x86/mm/init.c (init_mem_mapping, memory_map_top_down,
/// split_mem_range, adjust_range_page_size_mask) and init_64.c (phys_*_init).
struct BootCounter {
    let ram: [Range<UInt64>]
    let mask1G: Bool
    var counts = LeafCounts()
    /// 1G regions holding a 1G leaf, and those holding a PMD table (by 1G index).
    var pudLeaf = Set<UInt64>(), pudTable = Set<UInt64>()
    /// Per 1G region with a PMD table: its 2M leaves and its PTE tables, as bitmaps.
    var pmdLeaf: [UInt64: [UInt64]] = [:], pmdTable: [UInt64: [UInt64]] = [:]
    /// Per 2M region with a PTE table: its present 4K entries.
    var ptes: [UInt64: [UInt64]] = [:]

    static let g: UInt64 = 1 << 30, m: UInt64 = 1 << 21, k: UInt64 = 1 << 12

    /// memblock_is_region_memory: the whole range lies in one RAM range.
    func isMemory(_ start: UInt64, _ end: UInt64) -> Bool { ram.contains { $0.lowerBound <= start && end <= $0.upperBound } }

    /// split_mem_range for [start, end): 4K head, 2M, 1G, 2M tail, 4K tail; then the page
    /// sizes widened where the aligned region is RAM; then neighbours of one size merged.
    func split(_ start: UInt64, _ end: UInt64) -> [(start: UInt64, end: UInt64, m2: Bool, g1: Bool)] {
        func up(_ x: UInt64, _ a: UInt64) -> UInt64 { (x + a - 1) & ~(a - 1) }
        func down(_ x: UInt64, _ a: UInt64) -> UInt64 { x & ~(a - 1) }
        var mr: [(start: UInt64, end: UInt64, m2: Bool, g1: Bool)] = []
        func save(_ s: UInt64, _ e: UInt64, _ m2: Bool, _ g1: Bool) { if s < e { mr.append((s, e, m2, g1)) } }
        var p = start
        var e = min(up(p, Self.m), end)
        if p < e { save(p, e, false, false); p = e }
        var s = up(p, Self.m)
        e = min(up(p, Self.g), down(end, Self.m))
        if s < e { save(s, e, true, false); p = e }
        s = up(p, Self.g)
        e = down(end, Self.g)
        if s < e { save(s, e, true, mask1G); p = e }
        s = up(p, Self.m)
        e = down(end, Self.m)
        if s < e { save(s, e, true, false); p = e }
        save(p, end, false, false)
        for i in mr.indices {
            if !mr[i].m2, isMemory(down(mr[i].start, Self.m), up(mr[i].end, Self.m)) { mr[i].m2 = true }
            if mask1G, !mr[i].g1, isMemory(down(mr[i].start, Self.g), up(mr[i].end, Self.g)) { mr[i].g1 = true }
        }
        var i = 0
        while i + 1 < mr.count {
            if mr[i].end == mr[i + 1].start && mr[i].m2 == mr[i + 1].m2 && mr[i].g1 == mr[i + 1].g1 {
                mr[i].end = mr[i + 1].end
                mr.remove(at: i + 1)
            } else {
                i += 1
            }
        }
        return mr
    }

    /// init_memory_mapping(start, end): each range of split_mem_range through the levels.
    mutating func map(_ start: UInt64, _ end: UInt64) {
        for r in split(start, end) { pud(r.start, r.end, m2: r.m2, g1: r.g1) }
    }

    /// phys_pud_init over [start, end).
    mutating func pud(_ start: UInt64, _ end: UInt64, m2: Bool, g1: Bool) {
        var a = start
        while a < end {
            let r = a / Self.g, next = min((r + 1) * Self.g, end)
            if pudLeaf.contains(r) {
                if g1 {
                    counts.size1G += 1  // already present: counted again
                    a = next
                    continue
                }
                pudLeaf.remove(r)  // split, keeping the leaf's protection; the count stays
                pudTable.insert(r)
                pmd(a, next, region: r, m2: m2)
            } else if pudTable.contains(r) {
                pmd(a, next, region: r, m2: m2)
            } else if g1 {
                pudLeaf.insert(r)
                counts.size1G += 1
            } else {
                pudTable.insert(r)
                pmd(a, next, region: r, m2: m2)
            }
            a = next
        }
    }

    /// phys_pmd_init over [start, end) inside 1G region `region`.
    mutating func pmd(_ start: UInt64, _ end: UInt64, region: UInt64, m2: Bool) {
        var leaves = pmdLeaf[region] ?? [UInt64](repeating: 0, count: 8), tables = pmdTable[region] ?? [UInt64](repeating: 0, count: 8)
        defer {
            pmdLeaf[region] = leaves
            pmdTable[region] = tables
        }
        var a = start
        while a < end {
            let i = Int((a / Self.m) & 511), next = min((a / Self.m + 1) * Self.m, end), bit: UInt64 = 1 << UInt64(i & 63)
            if leaves[i >> 6] & bit != 0 {
                if m2 {
                    counts.size2M += 1
                    a = next
                    continue
                }
                leaves[i >> 6] &= ~bit
                tables[i >> 6] |= bit
                pte(a, next)
            } else if tables[i >> 6] & bit != 0 {
                pte(a, next)
            } else if m2 {
                leaves[i >> 6] |= bit
                counts.size2M += 1
            } else {
                tables[i >> 6] |= bit
                pte(a, next)
            }
            a = next
        }
    }

    /// phys_pte_init over [start, end) inside one 2M region.
    mutating func pte(_ start: UInt64, _ end: UInt64) {
        let block = start / Self.m
        var present = ptes[block] ?? [UInt64](repeating: 0, count: 8)
        for p in stride(from: start / Self.k, to: (end + Self.k - 1) / Self.k, by: 1) {
            let i = Int(p & 511)
            present[i >> 6] |= 1 << UInt64(i & 63)
            counts.size4K += 1  // a new entry, or one already present counted again
        }
        ptes[block] = present
    }

    /// init_mem_mapping on x86-64: [0, ISA_END_ADDRESS) first, then memory_map_top_down
    /// from the top 2M block memblock would hand out (the highest 2M-aligned RAM block;
    /// the model knows no other reservation), then the part above it.
    static func count(_ memory: PhysicalMemory, gbpages: Bool) -> LeafCounts {
        var c = BootCounter(ram: memory.ram, mask1G: gbpages)
        let isaEnd: UInt64 = 1 << 20, mapEnd = memory.endOfRAM
        c.map(0, isaEnd)
        guard mapEnd > isaEnd else { return c.counts }
        let top = memory.ram.reversed().lazy.compactMap { r -> UInt64? in
            let b = (r.upperBound & ~(m - 1)) &- m
            return r.upperBound >= m && b >= max(r.lowerBound, isaEnd) && b + m <= r.upperBound ? b : nil
        }.first ?? isaEnd
        let realEnd = top + m
        var step = m, mapped: UInt64 = 0, last = realEnd
        while last > isaEnd {
            var start = last > step ? (last - 1) & ~(step - 1) : isaEnd
            if start < isaEnd { start = isaEnd }
            mapped += c.rangeMapping(start, last)
            last = start
            if mapped >= step { step <<= 9 - 1 }  // get_new_step_size: PMD_SHIFT - PAGE_SHIFT - 1
        }
        if realEnd < mapEnd { _ = c.rangeMapping(realEnd, mapEnd) }
        return c.counts
    }

    /// init_range_memory_mapping: init_memory_mapping for each RAM range's part inside
    /// [start, end); the RAM mapped.
    mutating func rangeMapping(_ start: UInt64, _ end: UInt64) -> UInt64 {
        var mapped: UInt64 = 0
        for r in ram {
            let s = max(r.lowerBound, start), e = min(r.upperBound, end)
            guard s < e else { continue }
            map(s, e)
            mapped += e - s
        }
        return mapped
    }
}

extension Kernel {
    /// How direct_pages_count counts, for `--count kernel`.
    public enum DirectMapCount: String, CaseIterable, Sendable {
        /// A walk of the direct map (what the model's counters keep; the default).
        case walk
        /// As the running kernel counts: its boot counts (BootCounter), changed since by
        /// splits and collapses exactly as the walk's.
        case kernel
    }

    /// The kernel's own direct_pages_count right after boot (x86-64 only; the walk's on arm64).
    public var bootDirectPagesCountAsKernel: LeafCounts {
        config.isa == .x86_64 ? BootCounter.count(memory, gbpages: config.gbpages) : bootDirectPagesCount
    }

    /// direct_pages_count as `count` has it: the walk's now, or the kernel's (its boot count
    /// plus what splits and collapses changed since).
    public func directPagesCount(_ count: DirectMapCount) -> LeafCounts {
        guard count == .kernel else { return directPagesCount }
        let boot = bootDirectPagesCountAsKernel, walkBoot = bootDirectPagesCount, now = directPagesCount
        return LeafCounts(size4K: boot.size4K + now.size4K - walkBoot.size4K,
                          size2M: boot.size2M + now.size2M - walkBoot.size2M,
                          size1G: boot.size1G + now.size1G - walkBoot.size1G)
    }
}
