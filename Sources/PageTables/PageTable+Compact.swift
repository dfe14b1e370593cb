/// A table made by splitting a large leaf, held as that split's formula instead of 512 entries.
///
/// Linux __split_large_page (arch/x86/mm/pat/set_memory.c) fills the new table with
/// `pfn + i * lpinc` and one pgprot; arm64 and kvm_pgtable's stage2_split do the same. Until
/// entries change, that table is the first leaf plus the step, so cocomem keeps it so:
/// entry `i` is `first + i << stepShift` frames, except for up to `capacity` entries that
/// differ (kept in `indices`/`values`). When a fifth difference would not fit but every
/// difference is the same change of the formula (the encryption bit cleared, `forced4K`
/// set, or the entry emptied), the differences become bits of a `ToggleSet`: entry `i` is
/// the formula's value changed that way where bit `i` is set (a guest's direct map after
/// many conversions, a stage-2 table of 4K leaves faulted in one by one); up to `capacity`
/// other differences can still sit beside it. Compact table `t`'s set is `toggles[t]`, so a
/// lookup finds the bit's address without the table's record (the two cache misses can
/// overlap instead of following each other; docs/PERFORMANCE.md). A write that fits
/// neither makes the table dense: its 512 entries move to a table page of the dense array
/// (`dense`), and the compact number forwards there until the walk ends, so the walk in
/// progress is undisturbed; then the parent entry is pointed at the dense page and the
/// compact number freed (`unforward`). A write that restores the formula's value drops the
/// difference. What a table holds is the same either way; only the model's memory and time
/// differ (docs/PERFORMANCE.md).
public struct CompactTable: Sendable {
    /// Differing entries kept before the table becomes dense.
    public static let capacity = 4
    /// What every lookup reads, stored apart from the differences (`CompactTables`).
    @usableFromInline var head: CompactHead
    @usableFromInline var diffs = CompactDiffs()

    @inlinable init(first: UInt64, stepShift: UInt8) {
        head = CompactHead(first: first, stepShift: stepShift)
    }
    @inlinable init(_ head: CompactHead, _ diffs: CompactDiffs) {
        self.head = head
        self.diffs = diffs
    }

    /// The leaf in entry 0, whose frame the formula steps from.
    @inlinable var first: UInt64 { get { head.first } set { head.first = newValue } }
    /// log2 of the 4K frames each entry covers (0 for a table of 4K leaves, 9 for 2M).
    @inlinable var stepShift: UInt8 { get { head.stepShift } set { head.stepShift = newValue } }
    /// Differing entries in use.
    @inlinable var count: UInt8 { get { head.count } set { head.count = newValue } }
    /// The dense table that holds the entries once there are too many differences (≥ 0);
    /// -1 for none; -2 for no dense table but a toggle set (the table's own, `toggles[t]`).
    @inlinable var dense: Int32 { get { head.dense } set { head.dense = newValue } }
    @inlinable var indices: (UInt16, UInt16, UInt16, UInt16) { get { diffs.indices } set { diffs.indices = newValue } }
    @inlinable var values: (UInt64, UInt64, UInt64, UInt64) { get { diffs.values } set { diffs.values = newValue } }

    /// The formula's value for entry `index`.
    @inlinable func formula(_ index: Int) -> UInt64 { head.formula(index) }

    @inlinable func index(_ k: Int) -> Int {
        withUnsafeBytes(of: indices) { Int($0.load(fromByteOffset: k &* 2, as: UInt16.self)) }
    }

    @inlinable func value(_ k: Int) -> UInt64 {
        withUnsafeBytes(of: values) { $0.load(fromByteOffset: k &* 8, as: UInt64.self) }
    }

    @inlinable mutating func set(_ k: Int, index: Int, value: UInt64) {
        withUnsafeMutableBytes(of: &indices) { $0.storeBytes(of: UInt16(index), toByteOffset: k &* 2, as: UInt16.self) }
        withUnsafeMutableBytes(of: &values) { $0.storeBytes(of: value, toByteOffset: k &* 8, as: UInt64.self) }
    }

    /// Whether this table uses its toggle set.
    @inlinable var hasToggle: Bool { head.hasToggle }

    /// The explicit difference at `index`, if there is one.
    @inlinable func explicit(_ index: Int) -> UInt64? {
        var k = 0
        while k < Int(count) {
            if self.index(k) == index { return value(k) }
            k &+= 1
        }
        return nil
    }

    /// Entry `index` of a table that is not dense; `toggle` is where its toggle set is when
    /// it has one (an address from the table's number alone, so the bit's load need not wait
    /// for this record's).
    @inlinable func entry(_ index: Int, toggle: UnsafePointer<ToggleSet>?) -> UInt64 {
        withUnsafePointer(to: diffs) { Self.entry(head, $0, index, toggle: toggle) }
    }

    /// Entry `index` of the table with `head` (not dense), its differences at `diffs` (read
    /// only when it has some), its toggle set at `toggle`.
    @inlinable static func entry(_ head: CompactHead, _ diffs: UnsafePointer<CompactDiffs>, _ index: Int, toggle: UnsafePointer<ToggleSet>?) -> UInt64 {
        if head.count > 0, let v = CompactTable(head, diffs.pointee).explicit(index) { return v }
        let f = head.formula(index)
        if head.hasToggle, let toggle, ToggleSet.isSet(toggle, index) { return head.alternate(f, toggle) }
        return f
    }

    /// Removes the explicit difference at `index`, if there is one.
    @inlinable mutating func removeExplicit(_ index: Int) {
        var k = 0
        while k < Int(count) {
            if self.index(k) == index {
                let last = Int(count) &- 1
                set(k, index: self.index(last), value: self.value(last))
                count &-= 1
                return
            }
            k &+= 1
        }
    }

    /// The one change of the formula that every explicit difference and (`index`, `value`)
    /// make, as a toggle set's mask, or nil when they differ.
    @inlinable func commonChange(with index: Int, _ value: UInt64) -> UInt64? {
        func change(_ i: Int, _ v: UInt64) -> UInt64 { v == 0 ? ToggleSet.emptied : v ^ formula(i) }
        let mask = change(index, value)
        // Only attribute changes, or emptying: a toggle never turns a leaf into a table.
        guard mask != 0, mask == ToggleSet.emptied || mask & (Descriptor.leafBit | Descriptor.tableBit) == 0 else { return nil }
        for k in 0..<Int(count) where change(self.index(k), self.value(k)) != mask { return nil }
        return mask
    }

    /// The leaves among the 512 entries, from the record alone; nil when the table is dense
    /// or a difference is a table (the caller walks it). The formula's entries are leaves; a
    /// toggle keeps the leaf bit unless it empties the entry; a difference never sits on a
    /// toggled entry (`checkCompact`). `toggle` is the table's set, when it has one.
    @inlinable func leafCount(toggle: UnsafePointer<ToggleSet>?) -> Int? {
        guard dense < 0 else { return nil }
        var n = entriesPerTable
        if hasToggle, let toggle, toggle.pointee.mask == ToggleSet.emptied { n -= toggle.pointee.population }
        var k = 0
        while k < Int(count) {
            let v = Descriptor(rawValue: value(k))
            if v.isTable { return nil }
            if !v.isLeaf { n -= 1 }
            k &+= 1
        }
        return n
    }

    /// Whether every entry follows the formula (a table fresh from a split, or restored).
    @inlinable public var isUniform: Bool { dense == -1 && count == 0 }

    /// Writes entry `index` of a table that is not dense; false when a new difference does
    /// not fit (the caller makes the table dense).
    @inlinable mutating func write(_ index: Int, _ value: UInt64) -> Bool {
        let same = value == formula(index)
        var k = 0
        while k < Int(count) {
            if self.index(k) == index {
                if same {
                    let last = Int(count) &- 1
                    set(k, index: self.index(last), value: self.value(last))
                    count &-= 1
                } else {
                    set(k, index: index, value: value)
                }
                return true
            }
            k &+= 1
        }
        if same { return true }
        guard Int(count) < Self.capacity else { return false }
        set(Int(count), index: index, value: value)
        count &+= 1
        return true
    }
}

/// A compact table's 16 bytes every lookup reads. Stored 16 to an array element, so one never
/// crosses a cache line (the whole record, 56 bytes, did at six of its eight offsets in a line).
@usableFromInline struct CompactHead: Sendable {
    @usableFromInline var first: UInt64
    @usableFromInline var dense: Int32 = -1
    @usableFromInline var stepShift: UInt8
    @usableFromInline var count: UInt8 = 0
    /// The toggle set's mask as the lookup needs it, so it reads no second line of the set:
    /// `emptiedMask` for an emptying set, a bit number below 64 for a one-bit mask (the
    /// C-bit, `forced4K`), `otherMask` for any other (read from the set).
    @usableFromInline var maskBit: UInt8 = Self.otherMask
    @usableFromInline static var emptiedMask: UInt8 { 0xff }
    @usableFromInline static var otherMask: UInt8 { 0xfe }
    @inlinable init(first: UInt64, stepShift: UInt8) {
        self.first = first
        self.stepShift = stepShift
    }
    /// The formula's value for entry `index`.
    @inlinable func formula(_ index: Int) -> UInt64 {
        first &+ (UInt64(index) << (UInt64(stepShift) &+ Descriptor.frameShift))
    }
    /// Whether the table uses its toggle set.
    @inlinable var hasToggle: Bool { dense == -2 }

    /// The alternate of formula value `f` under the toggle set at `toggle` (its mask read
    /// only when it is neither emptying nor one bit).
    @inlinable func alternate(_ f: UInt64, _ toggle: UnsafePointer<ToggleSet>) -> UInt64 {
        if maskBit == Self.emptiedMask { return 0 }
        if maskBit < 64 { return f ^ (1 << UInt64(maskBit)) }
        return toggle.pointee.alternate(f)
    }

    /// `maskBit` for a set of mask `mask`.
    @inlinable static func maskBit(_ mask: UInt64) -> UInt8 {
        if mask == ToggleSet.emptied { return emptiedMask }
        return mask.nonzeroBitCount == 1 ? UInt8(mask.trailingZeroBitCount) : otherMask
    }
}

/// A compact table's explicit differences (`CompactTable.capacity` of them).
@usableFromInline struct CompactDiffs: Sendable {
    @usableFromInline var indices: (UInt16, UInt16, UInt16, UInt16) = (0, 0, 0, 0)
    @usableFromInline var values: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
    @inlinable init() {}
}

/// The compact tables of one page table, each stored as its head and its differences in two
/// arrays; a table is read and written whole through the subscript, the head alone on the
/// lookup and toggle paths.
@usableFromInline struct CompactTables: Sendable {
    @usableFromInline var heads: [CompactHead] = []
    @usableFromInline var diffs: [CompactDiffs] = []
    @inlinable init() {}
    @inlinable subscript(t: Int) -> CompactTable {
        get { CompactTable(heads[t], diffs[t]) }
        set {
            heads[t] = newValue.head
            diffs[t] = newValue.diffs
        }
    }
    @inlinable var count: Int { heads.count }
    @inlinable var capacity: Int { heads.capacity }
    @inlinable mutating func append(_ c: CompactTable) {
        heads.append(c.head)
        diffs.append(c.diffs)
    }
}

/// The entries of a compact table that take one alternate value: the formula's value with
/// `mask` flipped in, or an empty entry (`mask == emptied`). 512 bits and the mask; the
/// table's head mirrors the mask (`CompactHead.maskBit`) and no count is kept, so a toggle's
/// read and write touch one word of the set.
public struct ToggleSet: Sendable {
    /// The mask that stands for "the entry is empty" rather than a flip of bits.
    public static let emptied = UInt64.max
    /// The bits, first, so a bit can be read in place through a pointer (`isSet(_:_:)`).
    @usableFromInline var bits: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
    @usableFromInline var mask: UInt64

    @inlinable init(mask: UInt64) { self.mask = mask }

    /// Bits set, counted.
    @inlinable var population: Int {
        withUnsafeBytes(of: bits) { b in (0..<8).reduce(0) { $0 + b.load(fromByteOffset: $1 * 8, as: UInt64.self).nonzeroBitCount } }
    }

    /// Bit `index` of the set at `p`, read in place (the bits are the first 64 bytes).
    @inlinable static func isSet(_ p: UnsafePointer<ToggleSet>, _ index: Int) -> Bool {
        UnsafeRawPointer(p).load(fromByteOffset: (index >> 6) &* 8, as: UInt64.self) >> UInt64(index & 63) & 1 != 0
    }

    @inlinable func isSet(_ index: Int) -> Bool {
        withUnsafeBytes(of: bits) { $0.load(fromByteOffset: (index >> 6) &* 8, as: UInt64.self) } >> UInt64(index & 63) & 1 != 0
    }

    /// Sets or clears bit `index`; whether no bit is left set (the other words read only
    /// when this one became zero).
    @inlinable @inline(__always) @discardableResult mutating func set(_ index: Int, _ on: Bool) -> Bool {
        withUnsafeMutableBytes(of: &bits) {
            let at = (index >> 6) &* 8, bit: UInt64 = 1 << UInt64(index & 63)
            let old = $0.load(fromByteOffset: at, as: UInt64.self)
            let w = on ? old | bit : old & ~bit
            if w != old { $0.storeBytes(of: w, toByteOffset: at, as: UInt64.self) }
            if w != 0 { return false }
            var k = 0
            while k < 64 {
                if $0.load(fromByteOffset: k, as: UInt64.self) != 0 { return false }
                k &+= 8
            }
            return true
        }
    }

    /// The alternate of a formula value.
    @inlinable func alternate(_ formula: UInt64) -> UInt64 { mask == Self.emptied ? 0 : formula ^ mask }
}

extension PageTable {
    /// Set in a table number (bit 40) when the table is compact: the rest is its number in
    /// `compacts`. Slots of compact tables therefore start at `compactSlotBase`.
    @inlinable public static var compactTableFlag: Int { 1 << 40 }
    @inlinable static var compactSlotBase: Int { 1 << 49 }
    /// The index in `compacts` a table number names, or nil for a dense table.
    @inlinable static func compactIndex(_ table: Int) -> Int? {
        table & compactTableFlag != 0 ? table & ~compactTableFlag : nil
    }
    /// Model bytes of one compact table.
    public static let compactTableBytes = MemoryLayout<CompactTable>.stride

    /// The compact table and entry index a compact slot names.
    @inlinable static func compactPosition(_ slot: Int) -> (table: Int, index: Int) {
        ((slot &- compactSlotBase) >> 9, slot & (entriesPerTable &- 1))
    }

    /// Reads a slot of a compact table, out of line (see ReadOnlyPageTable.loadCompact). It
    /// takes the arrays, not the table: a table reached through `inout` would be copied
    /// (130 bytes) to pass it to a function that is not inlined.
    @inline(never) @usableFromInline
    static func loadCompact(_ slot: Int, _ entries: [UInt64], _ compacts: CompactTables, _ toggles: [ToggleSet]) -> UInt64 {
        let (t, index) = compactPosition(slot)
        let h = compacts.heads[t]
        if h.dense >= 0 { return entries[Int(h.dense) &* entriesPerTable &+ index] }
        return compacts.diffs.withUnsafeBufferPointer { diffs in
            toggles.withUnsafeBufferPointer { CompactTable.entry(h, diffs.baseAddress! + t, index, toggle: $0.baseAddress.map { $0 + t }) }
        }
    }

    /// Entry `index` of compact table `t`, `c`, which is not dense, with its toggle set from
    /// `toggles`.
    @inlinable static func compactEntry(_ c: CompactTable, _ t: Int, _ index: Int, _ toggles: [ToggleSet]) -> UInt64 {
        toggles.withUnsafeBufferPointer { c.entry(index, toggle: $0.baseAddress.map { $0 + t }) }
    }

    /// Writes a slot of a compact table: a toggle bit when the value is the formula's or its
    /// toggle set's alternate, else an explicit difference, else (when all differences are one
    /// change) a new toggle set, else the table goes dense.
    @usableFromInline mutating func writeCompact(_ slot: Int, _ value: UInt64) {
        let (t, index) = Self.compactPosition(slot)
        let c = compacts.heads[t]
        if c.dense >= 0 {
            entries[Int(c.dense) &* entriesPerTable &+ index] = value
            return
        }
        if c.hasToggle {
            let f = c.formula(index)
            // The common write: a toggle bit, the set changed in place.
            let emptied: Bool? = toggles.withUnsafeMutableBufferPointer { ts in
                let p = ts.baseAddress.unsafelyUnwrapped + t
                guard value == f || value == c.alternate(f, p) else { return nil }
                return p.pointee.set(index, value != f)
            }
            if let emptied {
                if c.count > 0 { compacts[t].removeExplicit(index) }
                if emptied { freeToggle(t) }
                return
            }
            if compacts[t].write(index, value) {
                setToggle(t, index, false)  // the explicit difference stands alone
                return
            }
        } else {
            if compacts[t].write(index, value) { return }
            if let mask = compacts[t].commonChange(with: index, value) {
                var set = ToggleSet(mask: mask)
                for k in 0..<Int(compacts[t].count) { set.set(compacts[t].index(k), true) }
                set.set(index, true)
                compacts[t].count = 0
                storeToggle(t, set)
                return
            }
        }
        makeDense(t)
        entries[Int(compacts[t].dense) &* entriesPerTable &+ index] = value
    }

    /// Sets or clears toggle bit `index` of table `t`'s set, dropping the set when no bit is
    /// left (so a restored table is uniform again).
    @inlinable mutating func setToggle(_ t: Int, _ index: Int, _ on: Bool) {
        if toggles[t].set(index, on) { freeToggle(t) }
    }

    /// Table `t` stops using its toggle set.
    @usableFromInline mutating func freeToggle(_ t: Int) {
        guard compacts[t].hasToggle else { return }
        dropToggle(t)
    }

    /// Marks table `t`'s set unused: its mask 0, which no set in use has, so a table that
    /// still said it had one would fail `checkCompact`.
    @usableFromInline mutating func dropToggle(_ t: Int) {
        togglesInUse -= 1
        toggles[t].mask = 0
        compacts[t].dense = -1
    }

    /// Moves compact table `t`'s entries to a page of the dense array. It stays one table:
    /// `tablePages` does not change and no allocation failure is injected (the kernel's
    /// table page was allocated at the split).
    @usableFromInline mutating func makeDense(_ t: Int) {
        let d = takeDenseTable()
        let c = compacts[t]
        let base = d &* entriesPerTable
        for i in 0..<entriesPerTable { entries[base &+ i] = Self.compactEntry(c, t, i, toggles) }
        freeToggle(t)
        compacts[t].count = 0
        compacts[t].dense = Int32(d)
        forwarded += 1
    }

    /// A new compact table of leaves one `step` apart from `first`, with every entry empty
    /// but `index`: the PTE table a stage-2 fault makes for its first 4K leaf, which later
    /// faults fill by clearing bits. Counts the table page and the one leaf. Returns its table
    /// number (with `compactTableFlag`).
    @usableFromInline mutating func newSparseCompact(first: UInt64, stepShift: UInt8, present index: Int) -> Int {
        var set = ToggleSet(mask: ToggleSet.emptied)
        _ = withUnsafeMutableBytes(of: &set.bits) { $0.initializeMemory(as: UInt8.self, repeating: 0xff) }
        set.set(index, false)
        let t = storeCompact(CompactTable(first: first, stepShift: stepShift))
        storeToggle(t, set)
        tablePages += 1
        leafCounts[PageSize(level: Int(stepShift) / 9 + 1)!] += 1
        return Self.compactTableFlag | t
    }

    /// Gives compact table `t` (which has none) the toggle set `set`, in `toggles[t]`.
    @usableFromInline mutating func storeToggle(_ t: Int, _ set: ToggleSet) {
        precondition(!compacts[t].hasToggle && compacts[t].dense < 0, "a second toggle set, or one for a dense table")
        if t >= toggles.count {
            // Grown as compacts grows: doubling, so a run of new sets never copies each time.
            if t >= toggles.capacity { toggles.reserveCapacity(max(compacts.capacity, t + 1)) }
            toggles.append(contentsOf: repeatElement(ToggleSet(mask: 0), count: t + 1 - toggles.count))
        }
        toggles[t] = set
        compacts.heads[t].maskBit = CompactHead.maskBit(set.mask)
        compacts[t].dense = -2
        togglesInUse += 1
    }

    /// Keeps `c` in a free slot of `compacts` (or a new one); its index.
    @usableFromInline mutating func storeCompact(_ c: CompactTable) -> Int {
        if let t = freeCompacts.popLast() { compacts[t] = c; return t }
        compacts.append(c)
        return compacts.count - 1
    }

    /// After a walk that made compact tables dense: points their parent entries in
    /// `[start, last]` at the dense pages and frees the compact numbers.
    @usableFromInline mutating func unforward(rootBase: UInt64, start: UInt64, last: UInt64) {
        var visitor = UnforwardVisitor()
        let (first, base) = root(start), final = root(last).table
        for k in first...final {  // allocates nothing
            try? Self.walkTable(&self, k, level: rootLevel, base: base &+ (UInt64(k - first) &<< (levelShift(rootLevel) &+ 9)),
                                start: start, last: last, &visitor)
        }
        forwarded = 0
    }

    /// A zeroed page of the dense array, from the free list or new.
    @usableFromInline mutating func takeDenseTable() -> Int {
        if let t = freeTables.popLast() { return t }
        let t = entries.count / entriesPerTable
        if entries.count + entriesPerTable > entries.capacity { HugePages.reserve(&entries, capacity: Self.grownCapacity(entries.count)) }
        entries.append(contentsOf: repeatElement(0, count: entriesPerTable))
        return t
    }

    /// The entry array's next capacity: doubling up to 64 MiB of entries, then a quarter
    /// more each time, so a large table never asks for twice its size (and never holds
    /// more than a quarter of it unused) while growth stays amortised.
    static func grownCapacity(_ count: Int) -> Int {
        let doublingLimit = 8 << 20  // entries: 64 MiB
        return count + max(entriesPerTable, count < doublingLimit ? count : count / 4)
    }

    /// The compact table a table number names, if it is one.
    public func compactTable(_ table: Int) -> CompactTable? {
        Self.compactIndex(table).map { compacts[$0] }
    }

    /// Compact tables in use.
    public var compactTableCount: Int { compacts.count - freeCompacts.count }
}

/// Replaces a pointer to a compact table that became dense by a pointer to its dense page.
@usableFromInline struct UnforwardVisitor: PageTableVisitor {
    @usableFromInline var flags: VisitFlags { .tablePre }
    @inlinable init() {}
    @inlinable mutating func visit(_ v: Visit, table: inout PageTable) throws(PageTableError) {
        guard let t = PageTable.compactIndex(v.entry.tableNumber) else { return }
        let d = table.compacts[t].dense
        guard d >= 0 else { return }
        table.write(v.slot, Descriptor.table(Int(d)).rawValue)  // replaces a difference: never a new one
        table.freeCompacts.append(t)
    }
}
