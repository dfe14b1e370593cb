import PageTables

/// The Reverse Map Table: one `RMPEntry` per 4K page of the RAM it covers.
///
/// Entries are held in chunks of 512 (one 2M region) that exist only once some entry in the
/// region differs from the hypervisor default; a region that is one 2M RMP page is held as a
/// single entry (its 512 entries agree, GPAs contiguous). A chunk keeps one byte per entry
/// (`RMPFlags`: assigned, page size, immutable, VMSA, validated) and one formula for the
/// region (the GPA of its first page and the ASID), from which an assigned entry's GPA,
/// ASID and permissions follow; an entry that does not follow it (another ASID or GPA,
/// permissions RMPADJUST changed) is kept whole aside. Beside each chunk is the count of
/// assigned 4K entries in the region, the `subpage_count` AMD-ASPFW keeps in bits 3-11 of
/// the 2M-aligned entry, on which FAIL_OVERLAP rests. The index from a 2M region to its
/// chunk has three levels (512G, 1G, 2M) made as regions are touched, so memory grows with
/// what guests and firmware own, not with RAM, up to 52-bit physical addresses (x86's
/// MAXPHYADDR). Linux arch/x86/virt/svm/sev.c; AMD APM Vol 2 §15.36.3.
public struct RMP: Sendable {
    /// First byte past the covered memory (RMP_END's reach).
    public let end: UInt64
    /// The largest physical address an RMP covers here: 52 bits (MAXPHYADDR's limit).
    public static let maxEnd: UInt64 = 1 << 52
    /// Per 512G: the block of `mid` for its 1G regions, or -1.
    @usableFromInline var top: [Int32]
    /// Blocks of 512 (one per 512G touched): per 1G, the block of `codes` for its 2M regions, or -1.
    @usableFromInline var mid: [Int32] = []
    /// Blocks of 512 (one per 1G touched): per 2M region, the chunk holding its entries
    /// (≥ 0, with `headLargeBit` set when the chunk's first entry is 2M), -1 when all are the
    /// default, or -2 - k when the region is one 2M page whose entry is `largeEntries[k]`.
    @usableFromInline var codes: [Int32] = []
    /// In a chunk's code: its 2M-aligned entry has page size 2M (the `large` bit of its first
    /// flag byte, mirrored), so the region's page size is read from the code, not a second
    /// line of flags.
    @usableFromInline static var headLargeBit: Int32 { 1 << 30 }
    /// The 2M-aligned entries of regions held as one 2M page.
    @usableFromInline var largeEntries: [RMPEntry] = []
    var freeLarge: [Int32] = []
    /// 512 flag bytes per chunk.
    @usableFromInline var flags: [RMPFlags] = []
    /// Per chunk: the low word an assigned entry of the region's first page would have (its
    /// GPA and ASID); entry i's GPA is that GPA plus i pages.
    @usableFromInline var formula: [UInt64] = []
    /// Entries that do not follow their chunk's formula, whole, by PFN.
    @usableFromInline var aside: [UInt64: RMPEntry] = [:]
    /// Assigned 4K (non-2M) entries per chunk.
    @usableFromInline var subpageCount: [UInt16] = []
    var freeChunks: [Int32] = []
    /// Pages in use by a running vCPU (VMSA, VMCB): RMPUPDATE and PSMASH on them give FAIL_INUSE.
    public internal(set) var inUse: [UInt64] = []

    /// An RMP covering physical memory `[0, end)`, `end` at most `maxEnd`.
    public init(end: UInt64) {
        precondition(end <= Self.maxEnd, "an RMP covers at most 52-bit physical addresses")
        self.end = (end + PageSize.size2M.bytes - 1) & ~(PageSize.size2M.bytes - 1)
        top = [Int32](repeating: -1, count: Int((self.end + (1 << 39) - 1) >> 39))
    }

    /// Whether the RMP covers `pfn`.
    @inlinable public func covers(_ pfn: UInt64) -> Bool { pfn < end >> pageShift }

    /// The code of 2M region `region` (PFN >> 9): a chunk, -1, or a 2M page.
    @inlinable @inline(__always) func code(_ region: Int) -> Int32 {
        let c = storedCode(region)
        return c & (c >> 31 | ~Self.headLargeBit)  // a chunk's without its head bit
    }

    /// The code as stored: a chunk's with its `headLargeBit`.
    @inlinable @inline(__always) func storedCode(_ region: Int) -> Int32 {
        let t = top[region >> 18]
        if t < 0 { return -1 }
        let m = mid[Int(t) << 9 | (region >> 9) & 511]
        if m < 0 { return -1 }
        return codes[Int(m) << 9 | region & 511]
    }

    /// Mirrors the page size of chunk region `region`'s first flag byte, `f`, in its code.
    mutating func noteHead(_ region: Int, _ f: RMPFlags) {
        let c = code(region)
        setCode(region, f.contains(.large) ? c | Self.headLargeBit : c)
    }

    /// Sets the code of region `region`, making index blocks on the way.
    mutating func setCode(_ region: Int, _ c: Int32) {
        var t = top[region >> 18]
        if t < 0 {
            if c == -1 { return }
            t = Int32(mid.count >> 9)
            mid.append(contentsOf: repeatElement(-1, count: 512))
            top[region >> 18] = t
        }
        let mi = Int(t) << 9 | (region >> 9) & 511
        var m = mid[mi]
        if m < 0 {
            if c == -1 { return }
            m = Int32(codes.count >> 9)
            codes.append(contentsOf: repeatElement(-1, count: 512))
            mid[mi] = m
        }
        codes[Int(m) << 9 | region & 511] = c
    }

    /// Every region whose code is not -1, in address order, with its code.
    func regionsInUse() -> [(region: Int, code: Int32)] {
        var out: [(Int, Int32)] = []
        for (ti, t) in top.enumerated() where t >= 0 {
            for mi in 0..<512 {
                let m = mid[Int(t) << 9 | mi]
                guard m >= 0 else { continue }
                for ri in 0..<512 where codes[Int(m) << 9 | ri] != -1 {
                    out.append((ti << 18 | mi << 9 | ri, code(ti << 18 | mi << 9 | ri)))
                }
            }
        }
        return out
    }

    /// The entry for a 4K frame (the default for frames never touched).
    @inlinable public subscript(pfn: UInt64) -> RMPEntry {
        let c = code(Int(pfn >> 9))
        if c >= 0 {
            let f = flags[Int(c) << 9 | Int(pfn & 511)]
            if f.rawValue == 0 { return .hypervisor }
            if f.contains(.aside) { return aside[pfn]! }
            return Self.entry(f, formula: formula[Int(c)], index: pfn & 511)
        }
        if c == -1 { return .hypervisor }
        var e = largeEntries[Int(-2 - c)]
        e.gpa += (pfn & 511) << pageShift
        return e
    }

    /// The entry a chunk's flags and formula give for page `index` of the region: the GPA
    /// the formula's plus `index` pages, its ASID, VMPL0 every permission when the ASID is a
    /// guest's (what RMPUPDATE gives), none otherwise.
    @inlinable static func entry(_ f: RMPFlags, formula: UInt64, index: UInt64) -> RMPEntry {
        var e = RMPEntry(lo: f.loBits | formula & RMPEntry.asidMask)
        e.gpa = (formula &+ index << pageShift) & RMPEntry.gpaMask
        if e.asid != 0 { e.hi = RMPEntry.defaultHi }
        return e
    }

    /// Whether every page of `pages` has flag `f` set (`value` true) or clear (false), read
    /// from the flag bytes and 2M entries without building entries.
    public func pages(_ pages: Range<UInt64>, allHave f: RMPFlags, _ value: Bool) -> Bool {
        var p = pages.lowerBound
        while p < pages.upperBound {
            let region = p >> 9, end = min(pages.upperBound, (region + 1) << 9)
            let c = code(Int(region))
            if c >= 0 {
                let b = Int(c) << 9
                for q in p..<end where flags[b | Int(q & 511)].contains(f) != value { return false }
            } else if (c <= -2 ? RMPFlags(largeEntries[Int(-2 - c)]).contains(f) : false) != value {
                return false
            }
            p = end
        }
        return true
    }

    /// The 2M-aligned entry of the region holding `pfn`, which decides its page size.
    public func largeEntry(_ pfn: UInt64) -> RMPEntry { self[pfn & ~511] }

    /// Whether the 2M-aligned entry of `pfn`'s region has page size 2M (`largeEntry(pfn).isLarge`),
    /// from the region's code alone (its `headLargeBit`, or the 2M page's one entry).
    @inlinable public func isLarge(regionOf pfn: UInt64) -> Bool {
        let c = storedCode(Int(pfn >> 9))
        if c >= 0 { return c & Self.headLargeBit != 0 }
        return c <= -2 && largeEntries[Int(-2 - c)].isLarge
    }

    /// The count of assigned 4K entries in the 2M region of `pfn` (subpage_count).
    public func assigned4KCount(_ pfn: UInt64) -> Int {
        let c = code(Int(pfn >> 9))
        return c < 0 ? 0 : Int(subpageCount[Int(c)])
    }

    /// How many of the 512 entries of the 2M region holding `pfn` are assigned.
    public func assignedPages(inRegionOf pfn: UInt64) -> Int {
        let c = code(Int(pfn >> 9))
        if c == -1 { return 0 }
        if c <= -2 { return 512 }
        let b = Int(c) << 9
        return (b..<b + 512).count { flags[$0].contains(.assigned) }
    }

    /// Whether `pfn`'s own entry is assigned (the 4K host-write check), without building it.
    @inlinable public func isAssigned(_ pfn: UInt64) -> Bool {
        let c = code(Int(pfn >> 9))
        if c >= 0 { return flags[Int(c) << 9 | Int(pfn & 511)].contains(.assigned) }
        return c != -1
    }

    /// Whether any page of the 2M region holding `pfn` is assigned: the host-write check
    /// through a large mapping. O(1): a 2M page, or the region's count of assigned 4K entries.
    @inlinable public func regionHasAssigned(_ pfn: UInt64) -> Bool {
        let c = code(Int(pfn >> 9))
        if c >= 0 { return subpageCount[Int(c)] != 0 }
        return c != -1
    }

    /// 2M regions holding non-default entries (as 512 entries or as one 2M page).
    public var chunksInUse: Int { subpageCount.count - freeChunks.count + largeEntries.count - freeLarge.count }

    /// Bytes the table takes in the model (the aside entries counted at their 16 bytes and key).
    public var storageBytes: Int {
        (top.capacity + mid.capacity + codes.capacity) * 4 + flags.capacity + formula.capacity * 8
            + subpageCount.capacity * 2 + freeChunks.capacity * 4 + largeEntries.capacity * 16 + freeLarge.capacity * 4
            + aside.capacity * 24
    }

    /// The index levels, the per-chunk 4K counts and the flag bytes, for the C reference
    /// benchmarks run on the same layout.
    public func withStorage<R>(_ body: (UnsafePointer<Int32>, UnsafePointer<Int32>, UnsafePointer<Int32>, UnsafePointer<UInt16>, UnsafePointer<UInt8>) -> R) -> R {
        let m = mid.isEmpty ? [-1] : mid, c = codes.isEmpty ? [-1] : codes
        let counts = subpageCount.isEmpty ? [0] : subpageCount
        let bytes = flags.isEmpty ? [0] : flags.map(\.rawValue)
        return top.withUnsafeBufferPointer { t in
            m.withUnsafeBufferPointer { m in
                c.withUnsafeBufferPointer { c in
                    counts.withUnsafeBufferPointer { s in
                        bytes.withUnsafeBufferPointer { f in body(t.baseAddress!, m.baseAddress!, c.baseAddress!, s.baseAddress!, f.baseAddress!) }
                    }
                }
            }
        }
    }

    /// Makes the region of `base` one 2M page with entry `head` (its 2M-aligned entry), or the
    /// default when `head` is nil, dropping whatever the region held.
    mutating func setRegion(_ base: UInt64, _ head: RMPEntry?) {
        let region = Int(base >> 9)
        let c = code(region)
        if c >= 0 {
            freeChunk(c, region: region)
        }
        if let head {
            if c <= -2 {
                largeEntries[Int(-2 - c)] = head
                return
            }
            let k: Int32
            if let free = freeLarge.popLast() { k = free; largeEntries[Int(k)] = head } else { k = Int32(largeEntries.count); largeEntries.append(head) }
            setCode(region, -2 - k)
        } else if c <= -2 {
            freeLarge.append(-2 - c)
            setCode(region, -1)
        }
    }

    /// Returns chunk `c` of `region` to the free list, its entries default again.
    mutating func freeChunk(_ c: Int32, region: Int) {
        let b = Int(c) << 9
        for i in 0..<512 where flags[b + i].contains(.aside) { aside[UInt64(region) << 9 | UInt64(i)] = nil }
        for i in b..<b + 512 { flags[i] = [] }
        subpageCount[Int(c)] = 0
        freeChunks.append(c)
        setCode(region, -1)
    }

    /// Turns a region held as one 2M page into 512 entries, so single entries can change;
    /// with `as4K` they become 4K entries (PSMASH). Writes the chunk in one pass.
    mutating func expand(_ region: Int, as4K: Bool = false) {
        let c = code(region)
        guard c <= -2 else { return }
        var head = largeEntries[Int(-2 - c)]
        freeLarge.append(-2 - c)
        if as4K { head.isLarge = false }
        let chunk = allocateChunk()
        setCode(region, chunk)
        formula[Int(chunk)] = head.lo & (RMPEntry.gpaMask | RMPEntry.asidMask)
        let f = RMPFlags(head)
        let follows = Self.entry(f, formula: formula[Int(chunk)], index: 0) == head
        noteHead(region, f)
        let base = Int(chunk) << 9
        if follows {
            flags.withUnsafeMutableBufferPointer { $0[base..<base + 512].update(repeating: f) }
        } else {
            for i in 0..<512 {
                var e = head
                e.gpa += UInt64(i) << pageShift
                flags[base + i] = f.union(.aside)
                aside[UInt64(region) << 9 | UInt64(i)] = e
            }
        }
        subpageCount[Int(chunk)] = as4K ? 512 : 0
    }

    /// Applies `change` to every entry of `pages`: to the one entry of a region held as a 2M
    /// page when `pages` is that whole region, else entry by entry.
    mutating func modify(_ pages: Range<UInt64>, _ change: (inout RMPEntry) -> Void) {
        if pages.count == 512 && pages.lowerBound & 511 == 0, case let c = code(Int(pages.lowerBound >> 9)), c <= -2 {
            change(&largeEntries[Int(-2 - c)])
            return
        }
        for p in pages {
            var e = self[p]
            change(&e)
            set(p, e)
        }
    }

    /// Sets or clears Validated on a 4K entry held as a flag byte that follows its chunk's
    /// formula: the byte alone changes, since Validated touches neither the formula, the
    /// per-2M count nor an aside entry (what `set` would conclude). Whether it changed; nil
    /// when the entry is held otherwise, for the general path.
    @inline(__always) mutating func setValidatedFlag(_ pfn: UInt64, _ on: Bool) -> Bool? {
        let c = code(Int(pfn >> 9))
        guard c >= 0 else { return nil }
        let i = Int(c) << 9 | Int(pfn & 511)
        let f = flags[i]
        guard f.rawValue != 0, !f.contains(.aside) else { return nil }
        if f.contains(.validated) == on { return false }
        flags[i] = f.symmetricDifference(.validated)
        return true
    }

    /// A chunk of 512 default entries with a zero count and no formula, from the free list or new.
    mutating func allocateChunk() -> Int32 {
        if let free = freeChunks.popLast() {
            formula[Int(free)] = 0
            return free
        }
        // Doubling, and on huge pages once large (HugePages): the flags are read at random.
        if flags.count + 512 > flags.capacity { HugePages.reserve(&flags, capacity: max(2 * flags.count, 512)) }
        flags.append(contentsOf: repeatElement([], count: 512))
        formula.append(0)
        subpageCount.append(0)
        return Int32(subpageCount.count - 1)
    }

    /// Writes one entry, keeping the per-2M count and the chunk storage exact: as flags when
    /// it follows the chunk's formula (which a chunk with no assigned entry following it
    /// takes from this one), else whole aside.
    mutating func set(_ pfn: UInt64, _ e: RMPEntry) {
        let region = Int(pfn >> 9)
        if code(region) <= -2 { expand(region) }
        var c = code(region)
        if c < 0 {
            if e == .hypervisor { return }
            c = allocateChunk()
            setCode(region, c)
            formula[Int(c)] = Self.formula(of: e, index: pfn & 511)
        }
        let i = Int(c) << 9 | Int(pfn & 511)
        let old = flags[i]
        if old.contains(.aside) { aside[pfn] = nil }
        if old.contains(.assigned) && !old.contains(.large) { subpageCount[Int(c)] -= 1 }
        if e.assigned && !e.isLarge { subpageCount[Int(c)] += 1 }
        var f = e == .hypervisor ? RMPFlags() : RMPFlags(e)
        if f.rawValue != 0 && Self.entry(f, formula: formula[Int(c)], index: pfn & 511) != e {
            flags[i] = []
            if e.assigned, !flagsFollowFormula(chunk: c) {
                rebase(chunk: c, region: region, to: Self.formula(of: e, index: pfn & 511))
            }
            if Self.entry(f, formula: formula[Int(c)], index: pfn & 511) != e {
                f.insert(.aside)
                aside[pfn] = e
            }
        }
        flags[i] = f
        if pfn & 511 == 0 { noteHead(region, f) }
        if f.rawValue == 0 && subpageCount[Int(c)] == 0 { releaseIfEmpty(region, chunk: c) }
    }

    /// The formula that makes `e` follow it at page `index` of its region.
    static func formula(of e: RMPEntry, index: UInt64) -> UInt64 {
        ((e.gpa &- index << pageShift) & RMPEntry.gpaMask) | e.lo & RMPEntry.asidMask
    }

    /// Gives chunk `c` (none of whose entries its formula holds) a new formula, and holds
    /// by it the aside entries that now follow it.
    mutating func rebase(chunk c: Int32, region: Int, to new: UInt64) {
        formula[Int(c)] = new
        let b = Int(c) << 9
        for i in 0..<512 where flags[b + i].contains(.aside) {
            let pfn = UInt64(region) << 9 | UInt64(i), e = aside[pfn]!
            if Self.entry(RMPFlags(e), formula: new, index: UInt64(i)) == e {
                aside[pfn] = nil
                flags[b + i] = RMPFlags(e)
            }
        }
    }

    /// Whether any entry of chunk `c` is held by the formula (so it cannot change).
    func flagsFollowFormula(chunk c: Int32) -> Bool {
        let b = Int(c) << 9
        for i in b..<b + 512 where flags[i].rawValue != 0 && !flags[i].contains(.aside) { return true }
        return false
    }

    mutating func releaseIfEmpty(_ region: Int, chunk c: Int32) {
        let base = Int(c) << 9
        for i in base..<base + 512 where flags[i].rawValue != 0 { return }
        setCode(region, -1)
        freeChunks.append(c)
    }

    mutating func setInUse(_ pfn: UInt64, _ running: Bool) {
        if running {
            if !inUse.contains(pfn) { inUse.append(pfn); inUse.sort() }
        } else {
            inUse.removeAll { $0 == pfn }
        }
    }

    func isInUse(_ pfn: UInt64) -> Bool { inUse.contains(pfn) }
}

/// One RMP entry's state bits as a chunk holds them: a byte per 4K page. An entry with
/// `aside` set is held whole in `RMP.aside`; its other bits still say whether it is assigned
/// and its size, for the fast checks.
public struct RMPFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    @inlinable public static var assigned: RMPFlags { RMPFlags(rawValue: 1 << 0) }
    @inlinable public static var large: RMPFlags { RMPFlags(rawValue: 1 << 1) }
    @inlinable public static var immutable: RMPFlags { RMPFlags(rawValue: 1 << 2) }
    @inlinable public static var vmsa: RMPFlags { RMPFlags(rawValue: 1 << 3) }
    @inlinable public static var validated: RMPFlags { RMPFlags(rawValue: 1 << 4) }
    @inlinable public static var aside: RMPFlags { RMPFlags(rawValue: 1 << 7) }

    /// The flags of entry `e`.
    @inlinable public init(_ e: RMPEntry) {
        var r: UInt8 = 0
        if e.assigned { r |= 1 << 0 }
        if e.isLarge { r |= 1 << 1 }
        if e.immutable { r |= 1 << 2 }
        if e.vmsa { r |= 1 << 3 }
        if e.validated { r |= 1 << 4 }
        rawValue = r
    }

    /// The entry's low-word bits these flags stand for (assigned, page size, immutable, VMSA,
    /// validated: bits 0, 1, 2, 61 and 62).
    @inlinable public var loBits: UInt64 {
        let r = UInt64(rawValue)
        return r & 0b111 | (r >> 3 & 1) << 61 | (r >> 4 & 1) << 62
    }
}
