import PageTables

/// An SNP instruction's status in RAX, printed by its APM / Linux name.
/// Linux arch/x86/include/asm/sev.h (RMPUPDATE_FAIL_OVERLAP, PSMASH_FAIL_INUSE,
/// PVALIDATE_FAIL_SIZEMISMATCH); AMD APM Vol 2 §15.36.
public enum SNPStatus: UInt32, Sendable, CustomStringConvertible {
    case success = 0
    case failInput = 1
    case failPermission = 2
    case failInUse = 3
    case failOverlap = 4
    case failSizeMismatch = 6
    /// PSMASH on an entry that is not a 2M page. Microsoft's __psmash documents 7 as "the
    /// page doesn't meet the requirements for expansion"; Linux logs "psmash failed … rc 7".
    /// No public name, so it prints as FAIL(7).
    case failNotExpandable = 7

    public var description: String {
        switch self {
        case .success: "ok"
        case .failInput: "FAIL_INPUT"
        case .failPermission: "FAIL_PERMISSION"
        case .failInUse: "FAIL_INUSE"
        case .failOverlap: "FAIL_OVERLAP"
        case .failSizeMismatch: "FAIL_SIZEMISMATCH"
        case .failNotExpandable: "FAIL(7)"
        }
    }
}

/// The bits of an NPF's EXITINFO1 that the RMP check sets. Linux
/// arch/x86/include/asm/kvm_host.h PFERR_GUEST_{RMP,ENC,SIZEM,VMPL}_MASK.
public struct NPFBits: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let rmp = NPFBits(rawValue: 1 << 31)
    public static let enc = NPFBits(rawValue: 1 << 34)
    public static let sizem = NPFBits(rawValue: 1 << 35)
    public static let vmpl = NPFBits(rawValue: 1 << 36)

    public var description: String {
        [(NPFBits.rmp, "RMP"), (.enc, "ENC"), (.sizem, "SIZEM"), (.vmpl, "VMPL")].filter { contains($0.0) }.map(\.1).joined(separator: "|")
    }
}

/// What an SNP instruction or access did: a status (with CF for PVALIDATE), or an exception.
public enum SNPOutcome: Hashable, Sendable, CustomStringConvertible {
    /// A status in RAX; `unchanged` is PVALIDATE's CF=1.
    case status(SNPStatus, unchanged: Bool = false)
    /// A nested page fault with these EXITINFO1 bits.
    case npf(NPFBits)
    /// #VC with this error code (0x404: the page is not validated).
    case vc(UInt32)
    /// A host #PF with error-code bit 31 (X86_PF_RMP).
    case hostRMPFault
    /// A host #PF because the mapping is not present (before any RMP check).
    case hostNotPresent
    /// An IOMMU RMP_PAGE_FAULT event (EVENT_TYPE_RMP_FAULT 0xd, drivers/iommu/amd/iommu.c).
    case iommuRMPFault
    /// A general-protection exception with this error code: the instruction may not run for
    /// its issuer (docs/SNP-HARDWARE.md "Who executes an instruction").
    case gp(UInt32)
    /// VMRUN failed its checks and exited at once with exit code VMEXIT_INVALID (-1,
    /// SVM_EXIT_ERR, arch/x86/include/uapi/asm/svm.h).
    case vmexitInvalid
    /// #VMEXIT for a VMSA no vCPU is running on: nothing happens.
    case notRunning
    /// An access that passed every check.
    case ok
    /// RMPREAD / RMPQUERY / dump_rmpentry results.
    case read(RMPReadout)

    public static let notValidated = SNPOutcome.vc(0x404)

    public var description: String {
        switch self {
        case .status(let s, let unchanged): unchanged ? "ok (CF=1)" : s.description
        case .npf(let bits): "NPF(\(bits))"
        case .vc(let code): "#VC(0x" + String(code, radix: 16) + ")"
        case .hostRMPFault: "#PF(RMP)"
        case .hostNotPresent: "#PF(not-present)"
        case .iommuRMPFault: "RMP_PAGE_FAULT"
        case .gp(let code): "#GP(\(code))"
        case .vmexitInvalid: "VMEXIT_INVALID"
        case .notRunning: "not running"
        case .ok: "ok"
        case .read(let r): "ok " + r.description
        }
    }
}

/// What RMPQUERY, RMPREAD and dump_rmpentry read, kept as values and written out only when
/// printed, so an `SNPOutcome` holds no string and copying or dropping one costs nothing.
public enum RMPReadout: Hashable, Sendable, CustomStringConvertible {
    /// RMPQUERY: the VMPL's permissions, the VMSA bit, the page size.
    case query(VMPLPermissions, vmsa: Bool, large: Bool)
    /// RMPREAD: the entry, its region's page size, hpage_region_status.
    case read(RMPEntry, large: Bool, regionStatus: Bool)
    /// dump_rmpentry: the PFN and the raw entry.
    case dump(pfn: UInt64, RMPEntry)

    public var description: String {
        switch self {
        case .query(let perms, let vmsa, let large):
            "perms=\(perms) vmsa=\(vmsa ? 1 : 0) pagesize=\(large ? "2M" : "4K")"
        case .read(let e, let large, let others):
            "gpa=\(hex(e.gpa)) assigned=\(e.assigned ? 1 : 0) pagesize=\(large ? "2M" : "4K") "
                + "hpage_region_status=\(others ? 1 : 0) immutable=\(e.immutable ? 1 : 0) asid=\(e.asid)"
        case .dump(let pfn, let e):
            "PFN \(hex(pfn)), RMP entry: [\(hex(e.hi, digits: 16)) - \(hex(e.lo, digits: 16))] \(e.state)"
        }
    }
}
