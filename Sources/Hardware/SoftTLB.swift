import PageTables

/// A direct-mapped software TLB, as QEMU's accel/tcg/cputlb.c keeps one: 256 entries indexed
/// by the low bits of the virtual page number, one comparison decides a hit. An entry holds
/// the 4K page's translation and the size of the leaf it came from (the RMP check of a write
/// through a 2M or 1G leaf looks at the whole 2M region).
public struct SoftTLB: Sendable {
    public static let entries = 256

    /// One entry: the virtual page number it holds (all ones when empty) and the physical page
    /// base with the leaf's level in its low bits. Two words, so a hit reads one cache line.
    @usableFromInline struct Slot: Sendable {
        @usableFromInline var tag: UInt64
        @usableFromInline var page: UInt64
        @usableFromInline init(tag: UInt64, page: UInt64) { self.tag = tag; self.page = page }
    }

    @usableFromInline var slots: [Slot]

    public init() { slots = [Slot](repeating: Slot(tag: .max, page: 0), count: Self.entries) }

    /// The physical address for `va`, if the TLB holds its page.
    @inlinable public func lookup(_ va: UInt64) -> UInt64? {
        let vpn = va >> pageShift
        // The index is masked below `entries` and `slots` never changes size: no bounds check.
        let s = slots.withUnsafeBufferPointer { $0[Int(truncatingIfNeeded: vpn) & (Self.entries - 1)] }
        return s.tag == vpn ? (s.page & ~(pageBytes - 1)) | (va & (pageBytes - 1)) : nil
    }

    /// The size of the leaf `va`'s cached translation came from.
    @inlinable public func leafSize(_ va: UInt64) -> PageSize? {
        let vpn = va >> pageShift
        let s = slots[Int(truncatingIfNeeded: vpn) & (Self.entries - 1)]
        return s.tag == vpn ? PageSize(rawValue: Int(s.page & 3)) : nil
    }

    /// Caches the translation of `va`'s page.
    @inlinable public mutating func fill(_ va: UInt64, pa: UInt64, size: PageSize) {
        let vpn = va >> pageShift
        slots[Int(truncatingIfNeeded: vpn) & (Self.entries - 1)] = Slot(tag: vpn, page: (pa & ~(pageBytes - 1)) | UInt64(size.rawValue))
    }

    /// flush_tlb_all.
    public mutating func flushAll() {
        for i in slots.indices { slots[i].tag = .max }
    }

    /// flush_tlb_one_kernel / INVLPG of one page.
    public mutating func flush(_ va: UInt64) {
        let vpn = va >> pageShift
        let i = Int(truncatingIfNeeded: vpn) & (Self.entries - 1)
        if slots[i].tag == vpn { slots[i].tag = .max }
    }

    /// The slots as pairs of words (tag, page | level), for the C reference benchmarks run on
    /// the same layout.
    public func withStorage<R>(_ body: (UnsafePointer<UInt64>) -> R) -> R {
        slots.withUnsafeBufferPointer { $0.withMemoryRebound(to: UInt64.self) { body($0.baseAddress!) } }
    }
}
