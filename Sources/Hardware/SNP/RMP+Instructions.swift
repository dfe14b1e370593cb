import PageTables

/// RMPUPDATE's input (Linux struct rmp_state: gpa, assigned, pagesize, immutable, asid).
public struct RMPUpdate: Hashable, Sendable {
    public var gpa: UInt64
    public var assigned: Bool
    public var size: PageSize
    public var immutable: Bool
    public var asid: UInt32

    public init(gpa: UInt64 = 0, assigned: Bool, size: PageSize = .size4K, immutable: Bool = false, asid: UInt32 = 0) {
        self.gpa = gpa
        self.assigned = assigned
        self.size = size
        self.immutable = immutable
        self.asid = asid
    }
}

/// Who executes a guest instruction or access: the guest's ASID and VMPL, and how its
/// nested page table maps the GPA (to which SPA, with which page size).
public struct GuestContext: Hashable, Sendable {
    public let asid: UInt32
    public let vmpl: Int
    public let gpa: UInt64
    public let spa: UInt64
    /// The nested (NPT) mapping's page size at `gpa`.
    public let nptSize: PageSize

    public init(asid: UInt32, vmpl: Int, gpa: UInt64, spa: UInt64, nptSize: PageSize) {
        self.asid = asid
        self.vmpl = vmpl
        self.gpa = gpa
        self.spa = spa
        self.nptSize = nptSize
    }
}

extension RMP {
    /// Highest ASID an RMP entry holds (10 bits).
    public static let maxASID: UInt32 = 1023

    /// RMPUPDATE: writes one 4K entry or one 2M entry (all 512 of its entries, GPAs
    /// contiguous). A reassignment clears Validated and VMSA and gives VMPL0 every permission
    /// and VMPL1-3 none. AMD APM Vol 2 §15.36.5; statuses from Linux asm/sev.h (first RFC).
    ///
    /// FAIL_INPUT: an SPA past the RMP or not aligned to the size, a 2M GPA not 2M-aligned,
    /// an ASID past 10 bits (the last three inferred, APM text unavailable). FAIL_PERMISSION:
    /// an immutable entry (verismo). FAIL_INUSE: a VMSA/VMCB page of a running vCPU (Singh,
    /// SNP RFC). FAIL_OVERLAP: a 2M update over a region with assigned 4K entries
    /// (subpage_count ≠ 0), or a 4K update inside an assigned 2M page (AMD-ASPFW
    /// subpage_count; KVM PSMASHes first for that reason).
    public mutating func rmpupdate(spa: UInt64, _ u: RMPUpdate) -> SNPStatus {
        let pfn = spa >> pageShift
        guard spa & (u.size.bytes - 1) == 0, covers(pfn), u.size != .size1G, u.asid <= Self.maxASID else { return .failInput }
        if u.size == .size2M && u.assigned && u.gpa & (PageSize.size2M.bytes - 1) != 0 { return .failInput }
        let pages: Range<UInt64> = u.size == .size2M ? pfn..<pfn + 512 : pfn..<pfn + 1
        if !self.pages(pages, allHave: .immutable, false) { return .failPermission }
        if !inUse.isEmpty, pages.contains(where: isInUse) { return .failInUse }
        if u.size == .size2M && assigned4KCount(pfn) != 0 { return .failOverlap }
        // The 2M-aligned entry's size from the region's code; its flags only when it is 2M.
        if u.size == .size4K && isLarge(regionOf: pfn) && isAssigned(pfn & ~511) { return .failOverlap }
        var e = RMPEntry()
        if u.assigned {
            e.assigned = true
            e.isLarge = u.size == .size2M
            e.immutable = u.immutable
            e.asid = u.asid
            e.gpa = u.gpa
            if u.asid != 0 { e.setPermissions(.all, vmpl: 0) }
        }
        if u.size == .size2M {
            setRegion(pfn, u.assigned ? e : nil)
        } else {
            set(pfn, e)
        }
        return .success
    }

    /// PSMASH: turns one 2M RMP page into 512 4K entries, copying everything else
    /// (Validated included; Linux: "while preserving the Validated bit"). FAIL_INPUT for an
    /// SPA that is not 2M-aligned or past the RMP; FAIL_INUSE for a page of a running vCPU;
    /// 7 when the entry is not an assigned 2M page (seen by KVM on a 4K entry).
    public mutating func psmash(spa: UInt64) -> SNPStatus {
        let pfn = spa >> pageShift
        guard spa & (PageSize.size2M.bytes - 1) == 0, covers(pfn) else { return .failInput }
        let large = self[pfn]
        guard large.assigned && large.isLarge else { return .failNotExpandable }
        if !inUse.isEmpty, (pfn..<pfn + 512).contains(where: isInUse) { return .failInUse }
        if code(Int(pfn >> 9)) <= -2 {
            expand(Int(pfn >> 9), as4K: true)
        } else {
            for p in pfn..<pfn + 512 {
                var e = self[p]
                e.isLarge = false
                set(p, e)
            }
        }
        return .success
    }

    /// The checks PVALIDATE, RMPADJUST and RMPQUERY share: the page must be assigned to the
    /// guest at this GPA and mutable, else NPF(RMP|ENC); a 4K request inside a 2M RMP page
    /// is NPF(RMP|ENC|SIZEM) (KVM log "#VMEXIT (NPF) - SIZEM, err 0xc80000005"; verismo
    /// fault_rmp_update).
    func ownershipFault(_ g: GuestContext, size: PageSize) -> SNPOutcome? {
        let pfn = g.spa >> pageShift
        guard covers(pfn) else { return .npf([.rmp, .enc]) }
        let base = size == .size2M ? pfn & ~511 : pfn
        let e = self[base]
        let gpa = size == .size2M ? g.gpa & ~(PageSize.size2M.bytes - 1) : g.gpa & ~(pageBytes - 1)
        if !e.assigned || e.asid != g.asid || e.gpa != gpa || e.immutable { return .npf([.rmp, .enc]) }
        if size == .size4K && isLarge(regionOf: pfn) { return .npf([.rmp, .enc, .sizem]) }
        return nil
    }

    /// Who executes an SNP instruction.
    public enum Issuer: String, CaseIterable, Sendable {
        /// The hypervisor (host, ASID 0).
        case hypervisor
        /// An SNP guest at some VMPL.
        case guest
    }

    /// PVALIDATE or RMPADJUST executed by the hypervisor, outside any SNP guest: #GP(0).
    /// verismo arch/mem/mem_s.rs op_pvalidate / op_rmpadjust (`memid is Hv` → Unsupported,
    /// trapped as #GP by x64_s.rs handle_mem_err_fn); no source contradicts it, and the APM
    /// text was not available (docs/SNP-HARDWARE.md).
    public static let guestInstructionInHypervisor = SNPOutcome.gp(0)

    /// PVALIDATE: sets or clears Validated. Order as verismo's op_pvalidate has it: #GP(0)
    /// below VMPL0 (verismo; Linux, coconut-svsm and Microsoft's __pvalidate know no
    /// FAIL_PERMISSION for PVALIDATE, and Linux sends it to the SVSM when not at VMPL0); a 2M
    /// request at a GPA not 2M-aligned is FAIL_INPUT; the ownership NPFs; FAIL_SIZEMISMATCH
    /// for a 2M request over 4K entries; success with CF=1 when nothing changes. AMD APM
    /// Vol 2 §15.36.11 (PVALIDATE).
    public mutating func pvalidate(_ g: GuestContext, size: PageSize, validate: Bool) -> SNPOutcome {
        if g.vmpl != 0 { return .gp(0) }
        if size == .size2M && (g.gpa | g.spa) & (PageSize.size2M.bytes - 1) != 0 { return .status(.failInput) }
        if let fault = ownershipFault(g, size: size) { return fault }
        let pfn = g.spa >> pageShift
        if size == .size2M && !self[pfn].isLarge { return .status(.failSizeMismatch) }
        if size == .size4K, let changed = setValidatedFlag(pfn, validate) { return .status(.success, unchanged: !changed) }
        let pages: Range<UInt64> = size == .size2M ? pfn..<pfn + 512 : pfn..<pfn + 1
        if self.pages(pages, allHave: .validated, validate) { return .status(.success, unchanged: true) }
        modify(pages) { $0.validated = validate }
        return .status(.success)
    }

    /// RMPADJUST: sets a less privileged VMPL's permissions (and, at VMPL0, the VMSA bit).
    /// Order as verismo's op_rmpadjust (mem_s.rs) and RmpEntry::rmpadjust have it: a 2M
    /// request at a GPA not 2M-aligned → FAIL_INPUT, before target ≤ current VMPL →
    /// FAIL_PERMISSION; the ownership NPFs; not validated → #VC(0x404); a 2M request over 4K
    /// entries → FAIL_SIZEMISMATCH; permissions beyond the current VMPL's own →
    /// FAIL_PERMISSION. The VMSA bit is honoured only from VMPL0 (Linux: "Running at VMPL0
    /// allows the kernel to change the VMSA bit"; edk2 and Microsoft's __rmpadjust agree).
    public mutating func rmpadjust(_ g: GuestContext, size: PageSize, targetVMPL: Int, permissions: VMPLPermissions, vmsa: Bool) -> SNPOutcome {
        if size == .size2M && (g.gpa | g.spa) & (PageSize.size2M.bytes - 1) != 0 { return .status(.failInput) }
        if targetVMPL <= g.vmpl { return .status(.failPermission) }
        if let fault = ownershipFault(g, size: size) { return fault }
        let pfn = g.spa >> pageShift
        let pages: Range<UInt64> = size == .size2M ? pfn..<pfn + 512 : pfn..<pfn + 1
        if !self[pages.lowerBound].validated { return .notValidated }
        if size == .size2M && !self[pfn].isLarge { return .status(.failSizeMismatch) }
        if !permissions.isSubset(of: self[pages.lowerBound].permissions(vmpl: g.vmpl)) { return .status(.failPermission) }
        modify(pages) { e in
            e.setPermissions(permissions, vmpl: targetVMPL)
            if g.vmpl == 0 { e.vmsa = vmsa }
        }
        return .status(.success)
    }

    /// RMPQUERY: a VMPL's permissions on a page, its VMSA bit and page size. The ownership
    /// NPFs, then #VC(0x404) for a page not validated (Oak's note on RMPQUERY); querying a
    /// more privileged VMPL than the caller's is FAIL_PERMISSION (inferred from RMPADJUST).
    public func rmpquery(_ g: GuestContext, targetVMPL: Int) -> SNPOutcome {
        if targetVMPL < g.vmpl { return .status(.failPermission) }
        if let fault = ownershipFault(g, size: .size4K), fault != .npf([.rmp, .enc, .sizem]) { return fault }
        let pfn = g.spa >> pageShift
        let e = self[pfn]
        if !e.validated { return .notValidated }
        return .read(.query(e.permissions(vmpl: targetVMPL), vmsa: e.vmsa, large: isLarge(regionOf: pfn)))
    }

    /// RMPREAD: the RMPREAD-format view of an entry (gpa, assigned, pagesize,
    /// hpage_region_status, immutable, asid). hpage_region_status is 1 when the SPA is
    /// 2M-aligned and another page of its 2M region is assigned (Lendacky, SNP host series).
    public func rmpread(spa: UInt64) -> SNPOutcome {
        let pfn = spa >> pageShift
        guard spa & (pageBytes - 1) == 0, covers(pfn) else { return .status(.failInput) }
        let e = self[pfn]
        let others = pfn & 511 == 0 && !self.pages(pfn + 1..<pfn + 512, allHave: .assigned, false)
        return .read(.read(e, large: isLarge(regionOf: pfn), regionStatus: others))
    }

    /// VMRUN of an SNP vCPU: the VMSA page must be one in the RMP (assigned, with the VMSA
    /// bit RMPADJUST sets), else VMRUN fails at once with VMEXIT_INVALID (a VMRUN with an
    /// invalid VMSA fails: Lendacky on the KVM list; the APM's list of the checks was not
    /// available: docs/SNP-HARDWARE.md). On success the page is in use until the vCPU exits
    /// (Singh, SNP RFC: "After the VMRUN is successful, the VMSA page is marked IN_USE").
    public mutating func vmrun(spa: UInt64) -> SNPOutcome {
        let pfn = spa >> pageShift
        guard covers(pfn), self[pfn].assigned, self[pfn].vmsa else { return .vmexitInvalid }
        setInUse(pfn, true)
        return .ok
    }

    /// #VMEXIT of the vCPU running on this VMSA: the page is no longer in use; `notRunning`
    /// when no vCPU runs on it.
    public mutating func vmexit(spa: UInt64) -> SNPOutcome {
        let pfn = spa >> pageShift
        guard isInUse(pfn) else { return .notRunning }
        setInUse(pfn, false)
        return .ok
    }
}
