import PageTables

extension RMP {
    /// The RMP's invariants: "the per-2M count equals the assigned 4K entries", "a 2M
    /// entry's 512 pages agree" (same owner, state and permissions, GPAs contiguous),
    /// "permissions above VMPL0 never exceed VMPL0's", every chunk is indexed once, and an
    /// entry is aside exactly when its chunk's formula does not give it.
    public func checkInvariants() throws(InvariantViolation) {
        var owner = [Int](repeating: -1, count: subpageCount.count)
        var largeOwner = [Int](repeating: -1, count: largeEntries.count)
        let used = regionsInUse()
        var asideSeen = 0
        for (region, c) in used where c <= -2 {
            let k = Int(-2 - c)
            guard largeOwner[k] < 0 else { throw InvariantViolation("every RMP chunk indexed once", "2M entry \(k) for regions \(largeOwner[k]) and \(region)") }
            largeOwner[k] = region
            let head = largeEntries[k]
            if !(head.assigned && head.isLarge) || head.gpa & (PageSize.size2M.bytes - 1) != 0 {
                throw InvariantViolation("a 2M entry's 512 pages agree", "region \(hex(UInt64(region) << 21)) held as 2M page with entry \(head)")
            }
            for v in 1...3 where !head.permissions(vmpl: v).isSubset(of: head.permissions(vmpl: 0)) {
                throw InvariantViolation("permissions above VMPL0 never exceed VMPL0's", "2M page at \(hex(UInt64(region) << 21)) VMPL\(v)")
            }
        }
        for (region, c) in used where c >= 0 {
            guard owner[Int(c)] < 0 else {
                throw InvariantViolation("every RMP chunk indexed once", "chunk \(c) for regions \(owner[Int(c)]) and \(region)")
            }
            owner[Int(c)] = region
            let base = UInt64(region) << 9
            let head = self[base]
            guard isLarge(regionOf: base) == head.isLarge else {
                throw InvariantViolation("a region's page size reads the same from its flag byte as from its 2M-aligned entry", "region \(hex(base << pageShift))")
            }
            var count = 0  // assigned 4K entries, counted in the same pass (one read of each entry)
            for p in base..<base + 512 {
                let e = self[p], f = flags[Int(c) << 9 | Int(p & 511)]
                if e.assigned && !e.isLarge { count += 1 }
                if f.contains(.aside) {
                    asideSeen += 1
                    guard let held = aside[p], RMPFlags(held).union(.aside) == f,
                          Self.entry(RMPFlags(held), formula: formula[Int(c)], index: p & 511) != held else {
                        throw InvariantViolation("an entry is aside exactly when its chunk's formula does not give it", "\(hex(p << pageShift)): \(e) aside")
                    }
                }
                if head.isLarge && head.assigned {
                    var expected = head
                    expected.gpa = head.gpa + (p - base) * pageBytes
                    if e != expected {
                        throw InvariantViolation("a 2M entry's 512 pages agree", "\(hex(p << pageShift)): \(e) under \(head)")
                    }
                } else if e.isLarge && p != base {
                    throw InvariantViolation("a 2M entry's 512 pages agree", "\(hex(p << pageShift)) is marked 2M under a 4K head")
                }
                let vmpl0 = e.permissions(vmpl: 0)
                for v in 1...3 where !e.permissions(vmpl: v).isSubset(of: vmpl0) {
                    throw InvariantViolation("permissions above VMPL0 never exceed VMPL0's",
                                             "\(hex(p << pageShift)) VMPL\(v) \(e.permissions(vmpl: v)) vs VMPL0 \(vmpl0)")
                }
            }
            if count != Int(subpageCount[Int(c)]) {
                throw InvariantViolation("the per-2M count equals the assigned 4K entries",
                                         "region \(hex(base << pageShift)): count \(subpageCount[Int(c)]), entries \(count)")
            }
        }
        for c in freeChunks where owner[Int(c)] >= 0 {
            throw InvariantViolation("every RMP chunk indexed once", "chunk \(c) is free and in use")
        }
        // Every flagged entry was found aside, so an entry held aside without its flag (or
        // outside every chunk) makes the two counts differ: no lookup per unflagged entry.
        if asideSeen != aside.count {
            throw InvariantViolation("an entry is aside exactly when its chunk's formula does not give it", "\(aside.count) held aside, \(asideSeen) marked")
        }
    }
}
