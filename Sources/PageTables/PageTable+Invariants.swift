/// A broken rule found by an invariant check, with its name and what was seen.
public struct InvariantViolation: Error, Hashable, Sendable, CustomStringConvertible {
    public let name: String
    public let detail: String
    public init(_ name: String, _ detail: String) {
        self.name = name
        self.detail = detail
    }
    public var description: String { "invariant '\(name)' violated: \(detail)" }
}

extension PageTable {
    /// Checks the counters against a full walk: "leaf counts equal the walk", "table pages
    /// equal the reachable tables", every table reached once, no leaf where the format has
    /// none, free tables empty; and that each compact table is well formed. As
    /// swift-collections' _checkInvariants.
    public func checkInvariants() throws(InvariantViolation) {
        var counts = LeafCounts()
        let denseCount = entries.count / entriesPerTable
        var seen = [Bool](repeating: false, count: denseCount)
        var seenCompact = [Bool](repeating: false, count: compacts.count)
        var togglesReached = 0
        var stack: [(table: Int, level: Int)] = (0..<format.rootTables).reversed().map { ($0, rootLevel) }
        for k in 0..<format.rootTables { seen[k] = true }
        var reachable = format.rootTables, reachableDense = format.rootTables
        while let (table, level) = stack.popLast() {
            for i in 0..<entriesPerTable {
                let e = entry(table: table, index: i)
                if e.isLeaf {
                    guard let size = PageSize(level: level), allows(size) else {
                        throw InvariantViolation("leaf sizes allowed by the format", "leaf at level \(level) in table \(table)")
                    }
                    counts[size] += 1
                } else if e.isTable {
                    guard level > 1 else { throw InvariantViolation("no table below level 1", "table \(table) entry \(i)") }
                    let child = e.tableNumber
                    if let t = Self.compactIndex(child) {
                        guard t < compacts.count, !seenCompact[t] else {
                            throw InvariantViolation("every table reached once", "\(e) from table \(table) entry \(i)")
                        }
                        seenCompact[t] = true
                        try checkCompact(t, level: level - 1)
                        if compacts[t].hasToggle { togglesReached += 1 }
                    } else {
                        guard child < seen.count, !seen[child] else {
                            throw InvariantViolation("every table reached once", "table \(child) from table \(table) entry \(i)")
                        }
                        seen[child] = true
                        reachableDense += 1
                    }
                    reachable += 1
                    stack.append((child, level - 1))
                }
            }
        }
        if counts != leafCounts {
            throw InvariantViolation("leaf counts equal the walk", "kept \(leafCounts), walk \(counts)")
        }
        if reachable != tablePages {
            throw InvariantViolation("table pages equal the reachable tables", "kept \(tablePages), walk \(reachable)")
        }
        for t in freeTables {
            if t >= seen.count || seen[t] { throw InvariantViolation("free tables unreachable", "table \(t) is free and reachable, or unknown") }
            for i in 0..<entriesPerTable where entries[t * entriesPerTable + i] != 0 {
                throw InvariantViolation("free tables empty", "table \(t) entry \(i)")
            }
        }
        for t in freeCompacts where t >= compacts.count || seenCompact[t] {
            throw InvariantViolation("free tables unreachable", "compact table \(t) is free and reachable, or unknown")
        }
        if togglesReached != togglesInUse {
            throw InvariantViolation("every table is reachable or free", "\(togglesInUse) toggle sets kept in use, \(togglesReached) reached")
        }
        if forwarded != 0 { throw InvariantViolation("compact tables follow a split", "\(forwarded) forwarded after the walk") }
        if reachableDense + freeTables.count != denseCount {
            throw InvariantViolation("every table is reachable or free", "\(denseCount - reachableDense - freeTables.count) lost")
        }
        if seenCompact.count(where: { $0 }) + freeCompacts.count != compacts.count {
            throw InvariantViolation("every table is reachable or free", "compact tables lost")
        }
    }

    /// A compact table starts with a leaf aligned to its step, keeps at most `capacity`
    /// differences at distinct indices, each differing from the formula, and is not dense
    /// (one made dense is replaced by its dense page when its walk ends).
    func checkCompact(_ t: Int, level: Int) throws(InvariantViolation) {
        let c = compacts[t]
        let first = Descriptor(rawValue: c.first)
        let step = PageSize(level: level).map { UInt64($0.pages.trailingZeroBitCount) }
        guard first.isLeaf, step == UInt64(c.stepShift), first.frame.rawValue & ((1 << (step! + 9)) - 1) == 0 else {
            throw InvariantViolation("compact tables follow a split", "compact table \(t): first \(first), step \(c.stepShift) at level \(level)")
        }
        guard c.dense == -1 || c.dense == -2, Int(c.count) <= CompactTable.capacity else {
            throw InvariantViolation("compact tables follow a split", "compact table \(t): \(c.count) differences, dense \(c.dense)")
        }
        if c.hasToggle && t >= toggles.count {
            throw InvariantViolation("compact tables follow a split", "compact table \(t): toggle set unknown")
        }
        let toggle = c.hasToggle ? toggles[t] : nil
        for k in 0..<Int(c.count) {
            let i = c.index(k)
            guard i < entriesPerTable, c.value(k) != c.formula(i), !(0..<k).contains(where: { c.index($0) == i }),
                  toggle.map({ !$0.isSet(i) && $0.alternate(c.formula(i)) != c.value(k) }) ?? true else {
                throw InvariantViolation("compact tables follow a split", "compact table \(t): difference \(k) at entry \(i)")
            }
        }
        if let set = toggle {
            let bits = set.population
            guard set.mask != 0, set.mask == ToggleSet.emptied || set.mask & (Descriptor.leafBit | Descriptor.tableBit) == 0,
                  c.head.maskBit == CompactHead.maskBit(set.mask), bits > 0 else {
                throw InvariantViolation("compact tables follow a split", "compact table \(t): toggle set with \(bits) bits, mask \(hex(set.mask)), head's mask bit \(c.head.maskBit)")
            }
        }
    }
}

extension PageTable {
    /// The checks that need no full walk, for the steps between full walks: the rules every
    /// entry keeps (no leaf where the format has none, no table below level 1, children that
    /// are allocated and not free, each reached from one entry only, compact tables well
    /// formed) over the regions `touched` names, and the table accounting (table pages equal
    /// the tables allocated less the free ones; no compact table left forwarded). The leaf
    /// counts need the whole tree and wait for the next full walk (`checkInvariants()`).
    public func checkInvariants(over touched: TouchedRanges) throws(InvariantViolation) {
        if forwarded != 0 { throw InvariantViolation("compact tables follow a split", "\(forwarded) forwarded after the walk") }
        let dense = entries.count / entriesPerTable
        let allocated = dense - freeTables.count + compacts.count - freeCompacts.count
        guard allocated == tablePages else {
            throw InvariantViolation("table pages equal the reachable tables", "kept \(tablePages), allocated and not free \(allocated)")
        }
        guard togglesInUse >= 0, togglesInUse <= compacts.count - freeCompacts.count else {
            throw InvariantViolation("every table is reachable or free", "\(togglesInUse) toggle sets in use for \(compacts.count - freeCompacts.count) compact tables")
        }
        guard leafCounts.size4K >= 0, leafCounts.size2M >= 0, leafCounts.size1G >= 0 else {
            throw InvariantViolation("leaf counts equal the walk", "a negative count: \(leafCounts)")
        }
        let freeDense = Set(freeTables), freeCompact = Set(freeCompacts)
        struct From: Hashable { let table: Int, index: Int }
        var reachedFrom: [Int: From] = [:]
        for range in touched.ranges {
            let (first, base) = root(range.lowerBound), final = root(range.upperBound).table
            var stack: [(table: Int, level: Int, base: UInt64)] = (first...final).reversed().map {
                ($0, rootLevel, base &+ (UInt64($0 - first) &<< (levelShift(rootLevel) &+ 9)))
            }
            while let (table, level, tableBase) = stack.popLast() {
                let span: UInt64 = 1 << levelShift(level)
                guard range.upperBound >= tableBase else { continue }
                let i0 = range.lowerBound > tableBase ? Int(min(511, (range.lowerBound - tableBase) / span)) : 0
                let i1 = Int(min(511, (range.upperBound - tableBase) / span))
                for i in i0...i1 {
                    let e = entry(table: table, index: i)
                    if e.isLeaf {
                        guard let size = PageSize(level: level), allows(size) else {
                            throw InvariantViolation("leaf sizes allowed by the format", "leaf at level \(level) in table \(table)")
                        }
                    } else if e.isTable {
                        guard level > 1 else { throw InvariantViolation("no table below level 1", "table \(table) entry \(i)") }
                        let child = e.tableNumber, from = From(table: table, index: i)
                        if let earlier = reachedFrom[child], earlier != from {
                            throw InvariantViolation("every table reached once", "\(e) from table \(table) entry \(i) and table \(earlier.table) entry \(earlier.index)")
                        }
                        reachedFrom[child] = from
                        if let t = Self.compactIndex(child) {
                            guard t < compacts.count, !freeCompact.contains(t) else {
                                throw InvariantViolation("free tables unreachable", "compact table \(t) from table \(table) entry \(i) is free or unknown")
                            }
                            try checkCompact(t, level: level - 1)
                        } else {
                            guard child < dense, !freeDense.contains(child) else {
                                throw InvariantViolation("free tables unreachable", "table \(child) from table \(table) entry \(i) is free or unknown")
                            }
                        }
                        stack.append((child, level - 1, tableBase &+ UInt64(i) &* span))
                    }
                }
            }
        }
    }
}
