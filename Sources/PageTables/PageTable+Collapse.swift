/// What a collapse walk did.
public struct CollapseResult: Hashable, Sendable {
    /// Leaves created by collapsing, by their new size.
    public var collapses = LeafCounts()
    /// The sizes of the leaves created, in order (for collapse_page_count).
    public var collapseLevels: [PageSize] = []
    public init() {}
}

/// Re-merges tables whose 512 entries could be one leaf.
///
/// Linux arch/x86/mm/pat/set_memory.c collapse_pmd_page / collapse_pud_page (the
/// CPA_COLLAPSE series): the first entry is present, not marked `_PAGE_KERNEL_4K`, and maps
/// a frame aligned to the larger size; all 512 are present leaves of the next size down,
/// map contiguous frames and carry identical attributes. Visiting after the children
/// (table-post) lets 512 freshly collapsed 2M leaves collapse again into 1G.
@usableFromInline struct CollapseVisitor: PageTableVisitor {
    @usableFromInline let sizes: [PageSize]
    /// Try a size only when a leaf one size down was just made under it, as x86
    /// collapse_large_pages tries collapse_pud_page only after collapse_pmd_page succeeds.
    @usableFromInline let onlyAfterLowerCollapse: Bool
    @usableFromInline var result = CollapseResult()
    /// The first address and size of the last leaf made.
    @usableFromInline var lastMade: (address: UInt64, size: PageSize)?
    @usableFromInline var flags: VisitFlags { .tablePost }
    @inlinable init(sizes: [PageSize], onlyAfterLowerCollapse: Bool) {
        self.sizes = sizes
        self.onlyAfterLowerCollapse = onlyAfterLowerCollapse
    }

    @inlinable mutating func visit(_ v: Visit, table: inout PageTable) throws(PageTableError) {
        guard let size = PageSize(level: v.level), sizes.contains(size), v.entry.isTable else { return }
        if onlyAfterLowerCollapse && size > .size2M {
            guard let made = lastMade, made.size == size.smaller!, made.address >= v.address, made.address <= v.last else { return }
        }
        let child = v.entry.tableNumber
        let first = table.entry(table: child, index: 0)
        guard first.isPresentLeaf, !first.attributes.contains(.forced4K),
              first.frame.rawValue & (size.pages - 1) == 0 else { return }
        let step = size.smaller!.pages
        // A compact table untouched since its split holds the formula: contiguous, alike.
        if table.compactTable(child)?.isUniform != true {
            for i in 1..<entriesPerTable {
                let e = table.entry(table: child, index: i)
                guard e.isLeaf, e.attributes == first.attributes, e.frame.rawValue == first.frame.rawValue + UInt64(i) * step else { return }
            }
        }
        table.store(.leaf(first.frame, first.attributes), slot: v.slot, level: v.level)
        result.collapses[size] += 1
        result.collapseLevels.append(size)
        lastMade = (v.address, size)
    }
}

extension PageTable {
    /// Collapses every table in `[virt, virt + size)` that can become one leaf of an allowed
    /// size (default: the format's large sizes), lower levels first. With
    /// `onlyAfterLowerCollapse`, a 1G collapse is tried only right after a 2M one under it.
    @inlinable @discardableResult
    public mutating func collapse(
        virt: VirtAddr, size: UInt64, sizes: [PageSize]? = nil, onlyAfterLowerCollapse: Bool = false
    ) throws(PageTableError) -> CollapseResult {
        var visitor = CollapseVisitor(
            sizes: (sizes ?? format.leafSizes).filter { $0 != .size4K && allows($0) }, onlyAfterLowerCollapse: onlyAfterLowerCollapse)
        try walk(start: virt.rawValue, size: size, &visitor)
        return visitor.result
    }
}
