import PageTables

extension PhysicalMemory {
    /// The `index`-th 4K page of RAM counting from `floor` upward, over all RAM ranges: lets
    /// a seeded generator pick uniformly among RAM pages.
    public func ramPage(_ index: UInt64, above floor: UInt64 = 0) -> PhysAddr? {
        var i = index
        for r in ram where r.upperBound > floor {
            let start = max(r.lowerBound, floor)
            let pages = (r.upperBound - start) / pageBytes
            if i < pages { return PhysAddr(start + i * pageBytes) }
            i -= pages
        }
        return nil
    }

    /// RAM pages at or above `floor`.
    public func ramPages(above floor: UInt64 = 0) -> UInt64 {
        ram.reduce(0) { $0 + ($1.upperBound > floor ? ($1.upperBound - max($1.lowerBound, floor)) / pageBytes : 0) }
    }
}
