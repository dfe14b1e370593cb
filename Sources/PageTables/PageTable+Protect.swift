/// What a protect or split walk did.
public struct ProtectResult: Hashable, Sendable {
    /// Base pages whose entry value changed (a large leaf rewritten in place counts all of its pages).
    public var pagesChanged: UInt64 = 0
    /// Leaves whose value changed.
    public var leavesChanged = 0
    /// Base pages in the range with no entry at all (holes).
    public var pagesUnmapped: UInt64 = 0
    /// Large leaves split, by the size of the leaf that was split.
    public var splits = LeafCounts()
    /// The levels of the leaves that were split, in order (for split_page_count).
    public var splitLevels = SplitLevels()

    public init() {}
}

/// The sizes of the leaves a walk split, in order: the first 32 packed in a word (two bits
/// each), the rest in an array. A one-page change_page_attr splits at most twice, so it
/// allocates nothing (an array here cost a malloc and a free per split).
public struct SplitLevels: Hashable, Sendable, Sequence {
    @usableFromInline var packed: UInt64 = 0
    @usableFromInline var stored = 0
    /// Splits recorded.
    @inlinable public var count: Int { stored }
    @usableFromInline var more: [PageSize] = []
    @inlinable public init() {}

    @inlinable public mutating func append(_ size: PageSize) {
        if count < 32 { packed |= UInt64(size.rawValue) << UInt64(2 * count) } else { more.append(size) }
        stored += 1
    }

    @inlinable public func makeIterator() -> Iterator { Iterator(levels: self) }

    public struct Iterator: IteratorProtocol {
        @usableFromInline let levels: SplitLevels
        @usableFromInline var i = 0
        @inlinable init(levels: SplitLevels) { self.levels = levels }
        @inlinable public mutating func next() -> PageSize? {
            guard i < levels.count else { return nil }
            defer { i += 1 }
            return i < 32 ? PageSize(rawValue: Int(levels.packed >> UInt64(2 * i) & 3)) : levels.more[i - 32]
        }
    }
}

/// Changes the attributes of every leaf in a range: `new = (old & ~clear) | set`.
///
/// The rules are those of x86 change_page_attr (arch/x86/mm/pat/set_memory.c
/// __change_page_attr and __should_split_large_page): a large leaf whose value would not
/// change is kept even when the range covers only part of it; a large leaf wholly inside the
/// range is rewritten in place; one partly inside is split one level and the walk goes on
/// below, so 1G→2M→4K happens only as far as needed. With `forceSplit` (set_memory_4k)
/// every large leaf met is split down to 4K.
@usableFromInline struct ProtectVisitor: PageTableVisitor {
    @usableFromInline let start: UInt64
    @usableFromInline let last: UInt64
    @usableFromInline let set: Attributes
    @usableFromInline let clear: Attributes
    @usableFromInline let forceSplit: Bool
    /// Drop `global` from entries that end up not present: x86 pgprot_clear_protnone_bits,
    /// applied by __change_page_attr and __should_split_large_page.
    @usableFromInline let notPresentClearsGlobal: Bool
    @usableFromInline var result = ProtectResult()
    @usableFromInline var flags: VisitFlags { .leaf }

    @inlinable init(start: UInt64, last: UInt64, set: Attributes, clear: Attributes, forceSplit: Bool, notPresentClearsGlobal: Bool) {
        self.start = start
        self.last = last
        self.set = set
        self.clear = clear
        self.forceSplit = forceSplit
        self.notPresentClearsGlobal = notPresentClearsGlobal
    }

    @inlinable mutating func visit(_ v: Visit, table: inout PageTable) throws(PageTableError) {
        let size = PageSize(level: v.level)
        guard v.entry.isLeaf, let size else {
            if v.entry.isNone {
                let lo = max(v.address, start), hi = min(v.last, last)
                result.pagesUnmapped += (hi - lo) / pageBytes + 1
            }
            return
        }
        let old = v.entry.attributes
        var new = old.subtracting(clear).union(set)
        if notPresentClearsGlobal && !new.contains(.present) { new.remove(.global) }
        if v.level > 1 && (forceSplit || (new != old && !v.isCovered(start: start, last: last))) {
            try table.splitLeaf(slot: v.slot, level: v.level)
            result.splits[size] += 1
            result.splitLevels.append(size)
            return
        }
        if new == old { return }
        table.store(v.entry.with(attributes: new), slot: v.slot, level: v.level, replacing: v.entry)
        result.leavesChanged += 1
        result.pagesChanged += size.pages
    }
}

extension PageTable {
    /// Sets and clears attributes over `[virt, virt + size)` by the CPA rules (see
    /// ProtectVisitor). With `forceSplit`, large leaves are split to 4K first.
    @inlinable @discardableResult
    public mutating func protect(
        virt: VirtAddr, size: UInt64, set: Attributes = [], clear: Attributes = [], forceSplit: Bool = false
    ) throws(PageTableError) -> ProtectResult {
        var result = ProtectResult()
        try protect(virt: virt, size: size, set: set, clear: clear, forceSplit: forceSplit, notPresentClearsGlobal: false, into: &result)
        return result
    }

    /// As `protect`, accumulating into `result`, which also holds what was done before an
    /// `outOfMemory` part way through.
    @inlinable
    public mutating func protect(
        virt: VirtAddr, size: UInt64, set: Attributes, clear: Attributes, forceSplit: Bool, notPresentClearsGlobal: Bool,
        into result: inout ProtectResult
    ) throws(PageTableError) {
        var visitor = ProtectVisitor(start: virt.rawValue, last: virt.rawValue &+ (size &- 1), set: set, clear: clear,
                                     forceSplit: forceSplit, notPresentClearsGlobal: notPresentClearsGlobal)
        swap(&visitor.result, &result)  // moved in and out: no copy of its split list
        defer { swap(&visitor.result, &result) }
        try walk(start: virt.rawValue, size: size, &visitor)
    }

    /// Splits every large leaf overlapping `[virt, virt + size)` down to `size` leaves.
    @inlinable @discardableResult
    public mutating func split(virt: VirtAddr, size: UInt64, to target: PageSize = .size4K) throws(PageTableError) -> ProtectResult {
        var visitor = SplitVisitor(target: target)
        try walk(start: virt.rawValue, size: size, &visitor)
        return visitor.result
    }
}

/// Splits large leaves above a target size. Linux set_memory.c split_large_page, repeated.
@usableFromInline struct SplitVisitor: PageTableVisitor {
    @usableFromInline let target: PageSize
    @usableFromInline var result = ProtectResult()
    @usableFromInline var flags: VisitFlags { .leaf }
    @inlinable init(target: PageSize) { self.target = target }

    @inlinable mutating func visit(_ v: Visit, table: inout PageTable) throws(PageTableError) {
        guard v.entry.isLeaf, v.level > target.level, let size = PageSize(level: v.level) else { return }
        try table.splitLeaf(slot: v.slot, level: v.level)
        result.splits[size] += 1
        result.splitLevels.append(size)
    }
}
