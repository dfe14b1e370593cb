import PageTables

extension FaultKind {
    /// A host #PF with error-code bit 31 set (X86_PF_RMP): the RMP refused the access.
    public static let rmp = FaultKind("RMP")
}

/// The RMP as the host's ownership check: writes and walks of assigned pages fault.
/// AMD APM Vol 2 §15.36.10; RMP+Access.swift.
extension RMP: HostOwnership {
    @inlinable public func hostCheck(pa: UInt64, write: Bool, walk: Bool, mappingSize: PageSize) -> HostCheck {
        hostAccess(spa: pa, write: write, walk: walk, mappingSize: mappingSize) == .hostRMPFault ? .fault(.rmp) : .allowed
    }
    public func isGuestOwned(pfn: UInt64) -> Bool { covers(pfn) && self[pfn].assigned }
    public func regionHasGuestPages(pfn: UInt64) -> Bool { covers(pfn) && regionHasAssigned(pfn) }
    public func guestPages(inRegionOf pfn: UInt64) -> Int { covers(pfn) ? assignedPages(inRegionOf: pfn) : 0 }

    /// The assigned entry that refused the access: the page's own through a 4K mapping, else
    /// the first assigned one of its 2M region (a large mapping is checked against all 512).
    public func faultReason(pa: UInt64, mappingSize: PageSize) -> String {
        let pfn = pa >> pageShift
        guard covers(pfn) else { return "" }
        func owner(_ p: UInt64) -> String {
            let e = self[p]
            return e.asid == 0 ? "assigned to the firmware (ASID 0)" : "assigned to ASID \(e.asid) at GPA \(hex(e.gpa))"
                + (isLarge(regionOf: p) ? " as part of a 2M page" : "")
        }
        if isAssigned(pfn) { return "the RMP entry of PFN \(hex(pfn)) is \(owner(pfn))" }
        let base = pfn & ~511
        guard mappingSize != .size4K, let p = (base..<base + 512).first(where: isAssigned) else { return "" }
        return "PFN \(hex(pfn)) is the host's, but PFN \(hex(p)) in its 2M region is \(owner(p)), "
            + "and a \(ByteSize.format(mappingSize.bytes)) mapping is checked against every entry of the region"
    }
}

extension SNPStatus: Outcome {
    public var kind: OutcomeKind { self == .success ? .success : .status }
}

extension SNPOutcome: Outcome {
    public var kind: OutcomeKind {
        switch self {
        case .status(let s, _): s.kind
        case .ok, .read: .success
        case .notRunning: .status
        case .npf, .vc, .gp, .hostRMPFault, .hostNotPresent, .iommuRMPFault, .vmexitInvalid: .fault
        }
    }
}
