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
    /// none, free tables empty. As swift-collections' _checkInvariants.
    public func checkInvariants() throws(InvariantViolation) {
        var counts = LeafCounts()
        var seen = [Bool](repeating: false, count: entries.count / entriesPerTable)
        var stack: [(table: Int, level: Int)] = [(0, rootLevel)]
        seen[0] = true
        var reachable = 1
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
                    guard child < seen.count, !seen[child] else {
                        throw InvariantViolation("every table reached once", "table \(child) from table \(table) entry \(i)")
                    }
                    seen[child] = true
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
            if seen[t] { throw InvariantViolation("free tables unreachable", "table \(t) is free and reachable") }
            for i in 0..<entriesPerTable where entries[t * entriesPerTable + i] != 0 {
                throw InvariantViolation("free tables empty", "table \(t) entry \(i)")
            }
        }
        if reachable + freeTables.count != seen.count {
            throw InvariantViolation("every table is reachable or free", "\(seen.count - reachable - freeTables.count) lost")
        }
    }
}
