import PageTables

extension RMP {
    /// A host CPU access through a mapping of `mappingSize`: writes and page-table walks are
    /// checked, reads are not. A 2M or 1G mapping is checked against every entry of the 2M
    /// region that holds the address ("even accesses from 1GB mappings will be treated as
    /// 2MB accesses"); a 4K mapping against the page's own entry. A failure is #PF with error
    /// code bit 31. AMD APM Vol 2 §15.36.10; Linux 661b1c6169e2 (adjust_direct_map).
    @inlinable public func hostAccess(spa: UInt64, write: Bool, walk: Bool = false, mappingSize: PageSize) -> SNPOutcome {
        guard write || walk else { return .ok }
        let pfn = spa >> pageShift
        guard covers(pfn) else { return .ok }  // pages beyond RMP_END are hypervisor-owned
        if mappingSize == .size4K { return isAssigned(pfn) ? .hostRMPFault : .ok }
        return regionHasAssigned(pfn) ? .hostRMPFault : .ok
    }

    /// A device write through the IOMMU, checked like a host write at 4K granularity; a
    /// failure is the IOMMU's RMP_PAGE_FAULT event (drivers/iommu/amd: EVENT_TYPE_RMP_FAULT).
    public func dmaWrite(spa: UInt64) -> SNPOutcome {
        let pfn = spa >> pageShift
        return covers(pfn) && self[pfn].assigned ? .iommuRMPFault : .ok
    }

    /// A guest access. Private (C=1) accesses, in priority order: the page must be covered,
    /// assigned to this ASID at this GPA and mutable, and its RMP page size must equal the
    /// nested mapping's, else NPF(RMP|ENC) (no SIZEM: that bit comes only from PVALIDATE and
    /// RMPADJUST, per AMD's Kalra); then Validated, else #VC(0x404); then the VMPL's
    /// permission (R for reads, W for writes), else NPF(RMP|ENC|VMPL). Shared (C=0) writes
    /// to an assigned page are NPF(RMP); shared reads are not checked. AMD APM Vol 2
    /// §15.36.10; verismo check_access.
    public func guestAccess(_ g: GuestContext, write: Bool, encrypted: Bool) -> SNPOutcome {
        let pfn = g.spa >> pageShift
        guard encrypted else {
            return write && covers(pfn) && self[pfn].assigned ? .npf(.rmp) : .ok
        }
        guard covers(pfn) else { return .npf([.rmp, .enc]) }
        let e = self[pfn]
        if !e.assigned || e.asid != g.asid || e.gpa != g.gpa & ~(pageBytes - 1) || e.immutable { return .npf([.rmp, .enc]) }
        let rmpSize: PageSize = isLarge(regionOf: pfn) ? .size2M : .size4K
        if rmpSize != min(g.nptSize, .size2M) { return .npf([.rmp, .enc]) }
        if !e.validated { return .notValidated }
        let needed: VMPLPermissions = write ? .write : .read
        if !e.permissions(vmpl: g.vmpl).contains(needed) { return .npf([.rmp, .enc, .vmpl]) }
        return .ok
    }
}
