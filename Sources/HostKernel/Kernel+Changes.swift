import PageTables

extension Kernel {
    /// Starts noting the regions of the page table each change touches, or forgets them
    /// (`on` false): `--check` checks invariants over those regions between full walks.
    public mutating func trackChanges(_ on: Bool = true) { pageTable.touched = on ? TouchedRanges() : nil }

    /// Forgets the regions noted so far and goes on noting (after a check covered them).
    public mutating func resetChanges() {
        if pageTable.touched != nil { pageTable.touched = TouchedRanges() }
    }
}
