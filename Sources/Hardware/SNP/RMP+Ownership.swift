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
