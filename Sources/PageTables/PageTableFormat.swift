/// The geometry of a radix page table: how many levels, and which levels may hold leaves.
/// Plain values only (no arrays or strings), so copying a table copies no reference.
public struct PageTableFormat: Hashable, Sendable, CustomStringConvertible {
    /// Number of levels, root included (4 or 5).
    public let levels: Int
    /// Bit `n` set when leaves of level `n` (PageSize raw value) are allowed.
    @usableFromInline let leafMask: UInt8
    @usableFromInline let kind: UInt8
    /// log2 of the number of concatenated root tables (0 to 4: 1 to 16 tables).
    @usableFromInline let rootConcatenation: UInt8

    @usableFromInline init(levels: Int, leafSizes: [PageSize], kind: UInt8, rootConcatenation: UInt8 = 0) {
        self.levels = levels
        self.leafMask = leafSizes.reduce(0) { $0 | 1 << UInt8($1.rawValue) }
        self.kind = kind
        self.rootConcatenation = rootConcatenation
    }

    /// arm64 stage 2 with a 4K granule for an IPA size of `ipaBits` (32 to 48): as many
    /// levels as ARM64_HW_PGTABLE_LEVELS(ipaBits - 4) gives, the root concatenated (up to 16
    /// tables) for the bits the levels leave, so the walk starts one level lower (KVM
    /// kvm_get_vtcr / stage2_pgtable_levels; Arm ARM D8.2.7, concatenated translation
    /// tables). A 52-bit IPA with LPA2 (start level -1) is out of scope. Nil outside 32-48.
    public static func arm64Stage2(ipaBits: Int) -> PageTableFormat? {
        guard (32...48).contains(ipaBits) else { return nil }
        let levels = (ipaBits - 8) / 9
        let concat = max(0, ipaBits - (12 + 9 * levels))
        return PageTableFormat(levels: levels, leafSizes: [.size4K, .size2M, .size1G], kind: 3, rootConcatenation: UInt8(concat))
    }

    /// Root tables, concatenated (tables 0 to rootTables - 1).
    @inlinable @inline(__always) public var rootTables: Int { 1 << Int(rootConcatenation) }

    /// The format's level count as Arm numbers the start level (4 levels start at 0).
    public var startLevel: Int { 4 - levels }

    /// x86-64 4-level paging (48-bit virtual addresses). Intel SDM Vol 3 §4.5.
    public static let x86_64 = PageTableFormat(levels: 4, leafSizes: [.size4K, .size2M, .size1G], kind: 0)
    /// x86-64 5-level paging (LA57, 57-bit virtual addresses). Intel SDM Vol 3 §4.5.
    public static let x86_64_la57 = PageTableFormat(levels: 5, leafSizes: [.size4K, .size2M, .size1G], kind: 1)
    /// arm64 with a 4K granule and 48-bit VAs: levels 0-3, blocks at levels 1 (1G) and 2 (2M).
    /// Arm ARM D8.2 (VMSAv8-64 translation table format).
    public static let arm64_4K = PageTableFormat(levels: 4, leafSizes: [.size4K, .size2M, .size1G], kind: 2)

    /// Leaf sizes the hardware allows in this format, smallest first.
    public var leafSizes: [PageSize] { PageSize.allCases.filter(allows) }
    /// Whether leaves of `size` are allowed.
    @inlinable @inline(__always) public func allows(_ size: PageSize) -> Bool { leafMask >> UInt8(size.rawValue) & 1 != 0 }
    public var name: String {
        kind == 3 ? "arm64 stage 2 4K granule, start level \(startLevel), \(rootTables) root table\(rootTables == 1 ? "" : "s")"
            : ["x86-64 4-level", "x86-64 5-level", "arm64 4K granule"][Int(kind)]
    }
    /// Bits of input address the table translates.
    @inlinable @inline(__always) public var addressBits: UInt64 { 12 + 9 * UInt64(levels) + UInt64(rootConcatenation) }
    /// Whether replacing a live entry needs break-before-make: arm64 (Arm ARM D8.16.1), not
    /// x86 (which allows a live rewrite followed by INVLPG).
    @inlinable public var requiresBreakBeforeMake: Bool { kind >= 2 }
    public var description: String { name }
}

/// Number of entries in every table of every format cocomem models.
public let entriesPerTable = 512

/// log2 of the bytes one entry at `level` covers (level 1 = PTE = 4K).
@inlinable @inline(__always) public func levelShift(_ level: Int) -> UInt64 { 12 &+ 9 &* UInt64(truncatingIfNeeded: level &- 1) }

/// The index of `address` in a table at `level`. Hafnium src/mm.c mm_index.
@inlinable @inline(__always) public func tableIndex(_ address: UInt64, level: Int) -> Int {
    Int((address &>> levelShift(level)) & 511)
}
