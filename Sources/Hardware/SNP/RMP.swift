import PageTables

/// The Reverse Map Table: one `RMPEntry` per 4K page of the RAM it covers.
///
/// Entries are held in chunks of 512 (one 2M region) that exist only once some entry in the
/// region differs from the hypervisor default; a region that is one 2M RMP page is held as a
/// single entry (its 512 entries agree, GPAs contiguous). Memory grows with what guests and
/// firmware own at 4K, plus four bytes of index per 2M of covered RAM. Beside each chunk is the count of
/// assigned 4K entries in the region, the `subpage_count` AMD-ASPFW keeps in bits 3-11 of
/// the 2M-aligned entry, on which FAIL_OVERLAP rests. Linux arch/x86/virt/svm/sev.c;
/// AMD APM Vol 2 §15.36.3.
public struct RMP: Sendable {
    /// First byte past the covered memory (RMP_END's reach).
    public let end: UInt64
    /// Per 2M region: the chunk holding its entries (≥ 0), -1 when all are the default, or
    /// -2 - k when the region is one 2M page whose entry is `largeEntries[k]`.
    @usableFromInline var chunkOf: [Int32]
    /// The 2M-aligned entries of regions held as one 2M page.
    @usableFromInline var largeEntries: [RMPEntry] = []
    var freeLarge: [Int32] = []
    /// 512 entries per chunk.
    @usableFromInline var entries: [RMPEntry] = []
    /// Assigned 4K (non-2M) entries per chunk.
    @usableFromInline var subpageCount: [UInt16] = []
    var freeChunks: [Int32] = []
    /// Pages in use by a running vCPU (VMSA, VMCB): RMPUPDATE and PSMASH on them give FAIL_INUSE.
    public internal(set) var inUse: [UInt64] = []

    /// An RMP covering physical memory `[0, end)`.
    public init(end: UInt64) {
        self.end = (end + PageSize.size2M.bytes - 1) & ~(PageSize.size2M.bytes - 1)
        chunkOf = [Int32](repeating: -1, count: Int(self.end / PageSize.size2M.bytes))
    }

    /// Whether the RMP covers `pfn`.
    @inlinable public func covers(_ pfn: UInt64) -> Bool { pfn < end >> pageShift }

    /// The entry for a 4K frame (the default for frames never touched).
    @inlinable public subscript(pfn: UInt64) -> RMPEntry {
        let c = chunkOf[Int(pfn >> 9)]
        if c >= 0 { return entries[Int(c) * 512 + Int(pfn & 511)] }
        if c == -1 { return .hypervisor }
        var e = largeEntries[Int(-2 - c)]
        e.gpa += (pfn & 511) << pageShift
        return e
    }

    /// The 2M-aligned entry of the region holding `pfn`, which decides its page size.
    public func largeEntry(_ pfn: UInt64) -> RMPEntry { self[pfn & ~511] }

    /// The count of assigned 4K entries in the 2M region of `pfn` (subpage_count).
    public func assigned4KCount(_ pfn: UInt64) -> Int {
        let c = chunkOf[Int(pfn >> 9)]
        return c < 0 ? 0 : Int(subpageCount[Int(c)])
    }

    /// Whether `pfn`'s own entry is assigned (the 4K host-write check), without building it.
    @inlinable public func isAssigned(_ pfn: UInt64) -> Bool {
        let c = chunkOf[Int(pfn >> 9)]
        if c >= 0 { return entries[Int(c) * 512 + Int(pfn & 511)].lo & 1 != 0 }
        return c != -1
    }

    /// Whether any page of the 2M region holding `pfn` is assigned: the host-write check
    /// through a large mapping. O(1): a 2M page, or the region's count of assigned 4K entries.
    @inlinable public func regionHasAssigned(_ pfn: UInt64) -> Bool {
        let c = chunkOf[Int(pfn >> 9)]
        if c >= 0 { return subpageCount[Int(c)] != 0 }
        return c != -1
    }

    /// 2M regions holding non-default entries (as 512 entries or as one 2M page).
    public var chunksInUse: Int { subpageCount.count - freeChunks.count + largeEntries.count - freeLarge.count }

    /// Bytes the table takes in the model.
    public var storageBytes: Int {
        chunkOf.capacity * 4 + entries.capacity * 16 + subpageCount.capacity * 2 + freeChunks.capacity * 4
            + largeEntries.capacity * 16 + freeLarge.capacity * 4
    }

    /// The region index, the per-chunk 4K counts and the entries (two words each), for the C
    /// reference benchmarks run on the same layout.
    public func withStorage<R>(_ body: (UnsafePointer<Int32>, UnsafePointer<UInt16>, UnsafePointer<UInt64>) -> R) -> R {
        let counts = subpageCount.isEmpty ? [0] : subpageCount
        let flat = entries.isEmpty ? [RMPEntry()] : entries
        return chunkOf.withUnsafeBufferPointer { c in
            counts.withUnsafeBufferPointer { s in
                flat.withUnsafeBufferPointer { e in
                    e.withMemoryRebound(to: UInt64.self) { body(c.baseAddress!, s.baseAddress!, $0.baseAddress!) }
                }
            }
        }
    }

    /// Makes the region of `base` one 2M page with entry `head` (its 2M-aligned entry), or the
    /// default when `head` is nil, dropping whatever the region held.
    mutating func setRegion(_ base: UInt64, _ head: RMPEntry?) {
        let region = Int(base >> 9)
        let c = chunkOf[region]
        if c >= 0 {
            let b = Int(c) * 512
            for i in b..<b + 512 { entries[i] = .hypervisor }
            subpageCount[Int(c)] = 0
            freeChunks.append(c)
            chunkOf[region] = -1
        }
        if let head {
            if c <= -2 {
                largeEntries[Int(-2 - c)] = head
                return
            }
            let k: Int32
            if let free = freeLarge.popLast() { k = free; largeEntries[Int(k)] = head } else { k = Int32(largeEntries.count); largeEntries.append(head) }
            chunkOf[region] = -2 - k
        } else if c <= -2 {
            freeLarge.append(-2 - c)
            chunkOf[region] = -1
        }
    }

    /// Turns a region held as one 2M page into 512 entries, so single entries can change;
    /// with `as4K` they become 4K entries (PSMASH). Writes the chunk in one pass.
    mutating func expand(_ region: Int, as4K: Bool = false) {
        let c = chunkOf[region]
        guard c <= -2 else { return }
        var head = largeEntries[Int(-2 - c)]
        freeLarge.append(-2 - c)
        if as4K { head.isLarge = false }
        let chunk = allocateChunk()
        let base = Int(chunk) * 512
        var e = head
        for i in 0..<512 {
            entries[base + i] = e
            e.gpa += pageBytes
        }
        subpageCount[Int(chunk)] = as4K ? 512 : 0
        chunkOf[region] = chunk
    }

    /// Applies `change` to every entry of `pages`: to the one entry of a region held as a 2M
    /// page when `pages` is that whole region, else entry by entry.
    mutating func modify(_ pages: Range<UInt64>, _ change: (inout RMPEntry) -> Void) {
        if pages.count == 512 && pages.lowerBound & 511 == 0, case let c = chunkOf[Int(pages.lowerBound >> 9)], c <= -2 {
            change(&largeEntries[Int(-2 - c)])
            return
        }
        for p in pages {
            var e = self[p]
            change(&e)
            set(p, e)
        }
    }

    /// A chunk of 512 default entries with a zero count, from the free list or new.
    mutating func allocateChunk() -> Int32 {
        if let free = freeChunks.popLast() { return free }
        entries.append(contentsOf: repeatElement(.hypervisor, count: 512))
        subpageCount.append(0)
        return Int32(subpageCount.count - 1)
    }

    /// Writes one entry, keeping the per-2M count and the chunk storage exact.
    mutating func set(_ pfn: UInt64, _ e: RMPEntry) {
        let region = Int(pfn >> 9)
        if chunkOf[region] <= -2 { expand(region) }
        var c = chunkOf[region]
        if c < 0 {
            if e == .hypervisor { return }
            c = allocateChunk()
            chunkOf[region] = c
        }
        let i = Int(c) * 512 + Int(pfn & 511)
        let old = entries[i]
        if old.assigned && !old.isLarge { subpageCount[Int(c)] -= 1 }
        if e.assigned && !e.isLarge { subpageCount[Int(c)] += 1 }
        entries[i] = e
        if e == .hypervisor && subpageCount[Int(c)] == 0 { releaseIfEmpty(region, chunk: c) }
    }

    mutating func releaseIfEmpty(_ region: Int, chunk c: Int32) {
        let base = Int(c) * 512
        for i in base..<base + 512 where entries[i] != .hypervisor { return }
        chunkOf[region] = -1
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
