import Hardware
import PageTables

/// A folio's flags the user-mapping code reads. Linux include/linux/page-flags.h.
public struct FolioFlags: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// PageAnon: mapped through an anon_vma (private anonymous or a COW copy).
    public static let anon = FolioFlags(rawValue: 1 << 0)
    /// PG_dirty: written since the last writeback.
    public static let dirty = FolioFlags(rawValue: 1 << 1)
    /// PG_writeback: a writeback is in flight.
    public static let writeback = FolioFlags(rawValue: 1 << 2)
    /// A page-cache page of a file (it stays in the cache when unmapped).
    public static let pageCache = FolioFlags(rawValue: 1 << 3)
    /// PG_anon_exclusive: the only mapping of an anonymous page (no fork shares it).
    public static let anonExclusive = FolioFlags(rawValue: 1 << 4)
    /// PG_arch_1: on s390 a small folio that "might be secure" (set before an import,
    /// cleared by a successful export, pin or destroy). arch/s390/kernel/uv.c.
    public static let arch1 = FolioFlags(rawValue: 1 << 5)
    /// PG_locked, held by another task (folio_trylock fails).
    public static let locked = FolioFlags(rawValue: 1 << 6)
    /// PG_swapcache: the folio is in the swap cache (one reference of its own).
    public static let swapCache = FolioFlags(rawValue: 1 << 7)
}

/// struct folio, as much as the user-mapping code needs: its order, reference count,
/// mappings and pins. Linux include/linux/mm_types.h.
public struct Folio: Hashable, Sendable {
    /// 0 (4K) or 9 (a 2M THP).
    public var order: UInt8
    /// _refcount: the allocation's reference, one per GUP FOLL_GET, GUP_PIN_COUNTING_BIAS per
    /// FOLL_PIN of a small folio, the page cache's.
    public var refcount: Int32
    /// Page-table mappings of the folio (a PMD mapping counts once).
    public var mapcount: Int32
    /// _pincount of a large folio (5.7, 3faa52c03f44); a small folio's pins are in refcount.
    public var pincount: Int32
    public var flags: FolioFlags
    /// FOLL_GET references outstanding (part of `refcount`), so put_page drops only those.
    public var gets: Int32 = 0

    /// GUP_PIN_COUNTING_BIAS. include/linux/mm.h.
    public static let pinBias: Int32 = 1024

    /// folio_maybe_dma_pinned. include/linux/mm.h.
    public var maybeDMAPinned: Bool { order > 0 ? pincount > 0 : refcount >= Self.pinBias }
    /// Pins, as folio_maybe_dma_pinned counts them.
    public var pins: Int32 { order > 0 ? pincount : refcount / Self.pinBias }
}

/// The page allocator behind user memory: 4K pages and naturally aligned 2M blocks taken
/// from the top of RAM downward (ranges a platform reserved, such as guests' memory, are
/// skipped), with free lists. Not the buddy allocator: which frame a page gets is the model's
/// choice, and no figure depends on it.
public struct UserPageAllocator: Hashable, Sendable {
    /// RAM, sorted, less the reserved ranges.
    var ranges: [Range<UInt64>]
    /// The next frame from the top (exclusive), within `ranges[current]`.
    var cursor: UInt64
    var current: Int
    var free4K: [UInt64] = []
    var free2M: [UInt64] = []
    public private(set) var allocated: UInt64 = 0
    /// Frames of RAM (less reserved ranges) this allocator hands out in all.
    var total: UInt64 = 0
    /// Frames still free.
    var available: UInt64 { total - allocated }

    init(ram: [Range<UInt64>]) {
        ranges = ram.map { ($0.lowerBound >> pageShift)..<($0.upperBound >> pageShift) }.filter { !$0.isEmpty }
        current = ranges.count - 1
        cursor = ranges.last?.upperBound ?? 0
        total = ranges.reduce(0) { $0 + UInt64($1.count) }
    }

    /// Takes `range` (bytes) out of what is handed out (a guest's memory), before any allocation.
    mutating func reserve(_ range: Range<UInt64>) {
        let r = (range.lowerBound >> pageShift)..<((range.upperBound + pageBytes - 1) >> pageShift)
        var out: [Range<UInt64>] = []
        for x in ranges {
            if x.upperBound <= r.lowerBound || x.lowerBound >= r.upperBound { out.append(x); continue }
            if x.lowerBound < r.lowerBound { out.append(x.lowerBound..<r.lowerBound) }
            if r.upperBound < x.upperBound { out.append(r.upperBound..<x.upperBound) }
        }
        ranges = out
        // Reserved at machine setup, before any allocation: start again from the top.
        current = ranges.count - 1
        cursor = ranges.last?.upperBound ?? 0
        total = ranges.reduce(0) { $0 + UInt64($1.count) }
    }

    /// A 4K frame, or nil when memory is exhausted.
    mutating func alloc4K() -> UInt64? {
        if let p = free4K.popLast() { allocated += 1; return p }
        while current >= 0 {
            if cursor > ranges[current].lowerBound {
                cursor -= 1
                allocated += 1
                return cursor
            }
            current -= 1
            if current >= 0 { cursor = ranges[current].upperBound }
        }
        if let b = free2M.popLast() {  // break a free 2M block
            free4K.append(contentsOf: (b + 1..<b + 512).reversed())
            allocated += 1
            return b
        }
        return nil
    }

    /// The first frame of a naturally aligned 2M block, or nil.
    mutating func alloc2M() -> UInt64? {
        if let b = free2M.popLast() { allocated += 512; return b }
        while current >= 0 {
            let top = cursor & ~511
            if top >= 512 && top - 512 >= ranges[current].lowerBound {
                // The frames between the block and the cursor stay usable as 4K pages.
                free4K.append(contentsOf: (top..<cursor).reversed())
                cursor = top - 512
                allocated += 512
                return cursor
            }
            free4K.append(contentsOf: (ranges[current].lowerBound..<cursor).reversed())
            current -= 1
            if current >= 0 { cursor = ranges[current].upperBound }
        }
        return nil
    }

    mutating func free(_ pfn: UInt64, order: UInt8) {
        if order == 0 { free4K.append(pfn); allocated -= 1 } else { free2M.append(pfn); allocated -= 512 }
    }
}
