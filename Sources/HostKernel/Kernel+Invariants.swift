import PageTables

extension Kernel {
    /// The host kernel's invariants: the page table's own, "direct_pages_count equals the
    /// direct-map walk", and "a vmalloc page and its direct-map alias agree on the C-bit"
    /// (cpa_process_alias keeps them together).
    public func checkInvariants() throws(InvariantViolation) {
        try pageTable.checkInvariants()
        try checkDirectMapInvariants()
    }

    /// The kernel's own invariants without the page table's structural ones.
    public func checkDirectMapInvariants() throws(InvariantViolation) {
        let walked = directMapLeafCounts()
        if walked != directPagesCount {
            throw InvariantViolation("direct_pages_count equals the direct-map walk", "count \(directPagesCount), walk \(walked)")
        }
        for area in vmapAreas {
            for i in 0..<area.pages {
                let va = VirtAddr(area.virt.rawValue + UInt64(i) * pageBytes)
                guard let leaf = pageTable.lookup(va), let alias = directMapLeaf(leaf.translate(va)) else { continue }
                if leaf.attributes.contains(.encrypted) != alias.attributes.contains(.encrypted) {
                    throw InvariantViolation("vmalloc alias has the direct map's encryption bit",
                                             "\(va) \(leaf.attributes) vs direct map \(alias.attributes)")
                }
            }
        }
    }
}
