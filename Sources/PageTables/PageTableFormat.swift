/// The geometry of a radix page table: how many levels, and which levels may hold leaves.
public struct PageTableFormat: Hashable, Sendable, CustomStringConvertible {
    /// Number of levels, root included (4 or 5).
    public let levels: Int
    /// Leaf sizes the hardware allows in this format.
    public let leafSizes: [PageSize]
    public let name: String

    /// x86-64 4-level paging (48-bit virtual addresses). Intel SDM Vol 3 §4.5.
    public static let x86_64 = PageTableFormat(levels: 4, leafSizes: [.size4K, .size2M, .size1G], name: "x86-64 4-level")
    /// x86-64 5-level paging (LA57, 57-bit virtual addresses). Intel SDM Vol 3 §4.5.
    public static let x86_64_la57 = PageTableFormat(levels: 5, leafSizes: [.size4K, .size2M, .size1G], name: "x86-64 5-level")
    /// arm64 with a 4K granule and 48-bit VAs: levels 0-3, blocks at levels 1 (1G) and 2 (2M).
    /// Arm ARM D8.2 (VMSAv8-64 translation table format).
    public static let arm64_4K = PageTableFormat(levels: 4, leafSizes: [.size4K, .size2M, .size1G], name: "arm64 4K granule")

    /// Bits of input address the table translates.
    public var addressBits: UInt64 { 12 + 9 * UInt64(levels) }
    public var description: String { name }
}

/// Number of entries in every table of every format cocomem models.
public let entriesPerTable = 512

/// log2 of the bytes one entry at `level` covers (level 1 = PTE = 4K).
@inlinable public func levelShift(_ level: Int) -> UInt64 { 12 + 9 * UInt64(level - 1) }

/// The index of `address` in a table at `level`. Hafnium src/mm.c mm_index.
@inlinable public func tableIndex(_ address: UInt64, level: Int) -> Int {
    Int((address >> levelShift(level)) & 511)
}
