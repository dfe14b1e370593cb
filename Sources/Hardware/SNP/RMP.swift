import PageTables

/// The Reverse Map Table: one `RMPEntry` per 4K page of the RAM it covers.
///
/// Entries are held in chunks of 512 (one 2M region) that exist only once some entry in the
/// region differs from the hypervisor default, so memory grows with what guests and firmware
/// own, plus four bytes of index per 2M of covered RAM. Beside each chunk is the count of
/// assigned 4K entries in the region, the `subpage_count` AMD-ASPFW keeps in bits 3-11 of
/// the 2M-aligned entry, on which FAIL_OVERLAP rests. Linux arch/x86/virt/svm/sev.c;
/// AMD APM Vol 2 §15.36.3.
public struct RMP: Sendable {
    /// First byte past the covered memory (RMP_END's reach).
    public let end: UInt64
    /// Per 2M region: the chunk holding its entries, or -1 when all are the default.
    var chunkOf: [Int32]
    /// 512 entries per chunk.
    var entries: [RMPEntry] = []
    /// Assigned 4K (non-2M) entries per chunk.
    var subpageCount: [UInt16] = []
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
    public subscript(pfn: UInt64) -> RMPEntry {
        let c = chunkOf[Int(pfn >> 9)]
        return c < 0 ? .hypervisor : entries[Int(c) * 512 + Int(pfn & 511)]
    }

    /// The 2M-aligned entry of the region holding `pfn`, which decides its page size.
    public func largeEntry(_ pfn: UInt64) -> RMPEntry { self[pfn & ~511] }

    /// The count of assigned 4K entries in the 2M region of `pfn` (subpage_count).
    public func assigned4KCount(_ pfn: UInt64) -> Int {
        let c = chunkOf[Int(pfn >> 9)]
        return c < 0 ? 0 : Int(subpageCount[Int(c)])
    }

    /// Whether any page of the 2M region holding `pfn` is assigned (cheap for untouched regions).
    public func regionHasAssigned(_ pfn: UInt64) -> Bool {
        let c = chunkOf[Int(pfn >> 9)]
        guard c >= 0 else { return false }
        let base = Int(c) * 512
        return entries[base..<base + 512].contains { $0.assigned }
    }

    /// Chunks (2M regions) holding non-default entries.
    public var chunksInUse: Int { subpageCount.count - freeChunks.count }

    /// Bytes the table takes in the model.
    public var storageBytes: Int { chunkOf.capacity * 4 + entries.capacity * 16 + subpageCount.capacity * 2 + freeChunks.capacity * 4 }

    /// Writes one entry, keeping the per-2M count and the chunk storage exact.
    mutating func set(_ pfn: UInt64, _ e: RMPEntry) {
        let region = Int(pfn >> 9)
        var c = chunkOf[region]
        if c < 0 {
            if e == .hypervisor { return }
            if let free = freeChunks.popLast() {
                c = free
            } else {
                c = Int32(subpageCount.count)
                entries.append(contentsOf: repeatElement(.hypervisor, count: 512))
                subpageCount.append(0)
            }
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
