import PageTables

/// A direct-mapped software TLB, as QEMU's accel/tcg/cputlb.c keeps one: 256 entries indexed
/// by the low bits of the virtual page number, one comparison decides a hit. An entry holds
/// the 4K page's translation and the size of the leaf it came from (the RMP check of a write
/// through a 2M or 1G leaf looks at the whole 2M region).
public struct SoftTLB: Sendable {
    public static let entries = 256
    @usableFromInline var tags: [UInt64]
    @usableFromInline var pages: [UInt64]
    @usableFromInline var levels: [UInt8]
    public private(set) var hits = 0
    public private(set) var misses = 0

    public init() {
        tags = [UInt64](repeating: .max, count: Self.entries)
        pages = [UInt64](repeating: 0, count: Self.entries)
        levels = [UInt8](repeating: 0, count: Self.entries)
    }

    /// The physical address and leaf size for `va`, if the TLB holds its page.
    @inlinable public func lookup(_ va: UInt64) -> (pa: UInt64, size: PageSize)? {
        let vpn = va >> pageShift
        let i = Int(truncatingIfNeeded: vpn) & (Self.entries - 1)
        guard tags[i] == vpn else { return nil }
        return (pages[i] | (va & (pageBytes - 1)), PageSize(rawValue: Int(levels[i]))!)
    }

    /// Caches the translation of `va`'s page.
    @inlinable public mutating func fill(_ va: UInt64, pa: UInt64, size: PageSize) {
        let vpn = va >> pageShift
        let i = Int(truncatingIfNeeded: vpn) & (Self.entries - 1)
        tags[i] = vpn
        pages[i] = pa & ~(pageBytes - 1)
        levels[i] = UInt8(size.rawValue)
    }

    /// flush_tlb_all.
    public mutating func flushAll() {
        for i in tags.indices { tags[i] = .max }
    }

    /// flush_tlb_one_kernel / INVLPG of one page.
    public mutating func flush(_ va: UInt64) {
        let vpn = va >> pageShift
        let i = Int(truncatingIfNeeded: vpn) & (Self.entries - 1)
        if tags[i] == vpn { tags[i] = .max }
    }

    /// The raw arrays, for the C reference that benchmarks run on the same layout.
    public func withStorage<R>(_ body: (UnsafePointer<UInt64>, UnsafePointer<UInt64>) -> R) -> R {
        tags.withUnsafeBufferPointer { t in pages.withUnsafeBufferPointer { p in body(t.baseAddress!, p.baseAddress!) } }
    }
}
