import PageTables

extension RMP {
    /// The AMD-SP's own RMP writes (it may change any entry, immutable ones included), as the
    /// SNP firmware does for LAUNCH_UPDATE, LAUNCH_FINISH and PAGE_RECLAIM. SEV-SNP Firmware
    /// ABI §8 (SNP_LAUNCH_UPDATE, SNP_PAGE_RECLAIM).
    public mutating func firmwareWrite(_ pfn: UInt64, _ change: (inout RMPEntry) -> Void) {
        var e = self[pfn]
        change(&e)
        set(pfn, e)
    }
}
