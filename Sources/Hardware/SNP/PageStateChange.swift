import PageTables

/// A page-state-change operation. Linux arch/x86/include/asm/sev-common.h SNP_PAGE_STATE_*.
public enum PSCOperation: UInt8, Sendable, CustomStringConvertible {
    case makePrivate = 1
    case makeShared = 2
    case psmash = 3
    case unsmash = 4

    public var description: String { ["private", "shared", "psmash", "unsmash"][Int(rawValue) - 1] }
}

/// The GHCB MSR protocol's page-state-change request and response. Request
/// `0x014 | gfn << 12 | op << 52` (op 1 private, 2 shared, one 4K page); response
/// `0x015 | error << 32`. Linux sev-common.h GHCB_MSR_PSC_REQ / GHCB_MSR_PSC_RESP.
public struct PSCMSRRequest: Hashable, Sendable {
    public static let requestCode: UInt64 = 0x014
    public static let responseCode: UInt64 = 0x015
    /// KVM's answer to a bad op or a failed conversion: GHCB_MSR_PSC_RESP_ERROR.
    public static let errorResponse: UInt64 = 1 << 63 | responseCode

    public let gfn: UInt64
    public let operation: PSCOperation

    public init(gfn: UInt64, operation: PSCOperation) {
        self.gfn = gfn
        self.operation = operation
    }

    /// The MSR value the guest writes.
    public var msr: UInt64 { Self.requestCode | (gfn & ((1 << 40) - 1)) << 12 | UInt64(operation.rawValue) << 52 }

    /// Reads an MSR value: nil if it is not a PSC request (other GHCB MSR codes); an error
    /// response if the operation is not private or shared, as KVM answers
    /// (snp_handle_vmgexit_msr_protocol / __snp_complete_one_psc).
    public static func parse(_ msr: UInt64) -> Result<PSCMSRRequest, PSCMSRError>? {
        guard msr & 0xfff == requestCode else { return nil }
        let op = UInt8(msr >> 52 & 0xf)
        guard op == PSCOperation.makePrivate.rawValue || op == PSCOperation.makeShared.rawValue else {
            return .failure(PSCMSRError(response: errorResponse))
        }
        return .success(PSCMSRRequest(gfn: msr >> 12 & ((1 << 40) - 1), operation: PSCOperation(rawValue: op)!))
    }

    /// The response MSR value for a result (0 = success).
    public static func response(error: UInt32) -> UInt64 { responseCode | UInt64(error) << 32 }
}

/// A refused MSR-protocol request and the response value the hypervisor writes back.
public struct PSCMSRError: Error, Hashable, Sendable {
    public let response: UInt64
}

/// One entry of a GHCB page-state-change buffer: cur_page[11:0], gfn[51:12],
/// operation[55:52], pagesize[56]. Linux sev-common.h struct psc_entry.
public struct PSCEntry: Hashable, Sendable {
    public var raw: UInt64
    @inlinable public init(raw: UInt64) { self.raw = raw }
    @inlinable public init(gfn: UInt64, operation: UInt8, size2M: Bool, curPage: UInt16 = 0) {
        raw = UInt64(curPage & 0xfff) | (gfn & ((1 << 40) - 1)) << 12 | UInt64(operation & 0xf) << 52 | (size2M ? 1 << 56 : 0)
    }
    @inlinable public var curPage: Int { Int(raw & 0xfff) }
    @inlinable public var gfn: UInt64 { raw >> 12 & ((1 << 40) - 1) }
    @inlinable public var operation: UInt8 { UInt8(raw >> 52 & 0xf) }
    @inlinable public var size2M: Bool { raw >> 56 & 1 != 0 }
    /// Pages the entry covers (512 for 2M, else 1).
    @inlinable public var pages: Int { size2M ? 512 : 1 }
    /// snp_begin_psc's entry check: cur_page within the entry and a 2M gfn 2M-aligned.
    @inlinable public var isValid: Bool { curPage <= pages && gfn & UInt64(pages - 1) == 0 }
}

/// A GHCB page-state-change request (NAE exit 0x8000_0010): header {cur_entry, end_entry}
/// and up to 253 entries. Linux sev-common.h struct snp_psc_desc, VMGEXIT_PSC_MAX_COUNT.
public struct PSCRequest: Hashable, Sendable {
    public static let maxEntries = 253
    /// SW_EXITINFO2 values KVM returns. Linux arch/x86/kvm/svm/sev.c VMGEXIT_PSC_ERROR_*.
    public static let errorInvalidHeader: UInt64 = 1 << 32 | 1
    public static let errorInvalidEntry: UInt64 = 1 << 32 | 2
    public static let errorGeneric: UInt64 = 0x100 << 32

    public var curEntry: Int
    public var endEntry: Int
    public var entries: [PSCEntry]

    public init(curEntry: Int = 0, endEntry: Int, entries: [PSCEntry]) {
        self.curEntry = curEntry
        self.endEntry = endEntry
        self.entries = entries
    }

    /// The first error KVM's snp_begin_psc would return, or 0: INVALID_HDR when end_entry ≥
    /// 253; INVALID_ENTRY for an entry from cur_entry to end_entry whose cur_page exceeds its
    /// pages or whose 2M gfn is not 2M-aligned. Slots past `entries` read as zero, as an
    /// unwritten part of the shared buffer would.
    public func validate() -> (exitInfo2: UInt64, entry: Int?) {
        if endEntry >= Self.maxEntries { return (Self.errorInvalidHeader, nil) }
        guard curEntry <= endEntry else { return (0, nil) }
        for i in curEntry...endEntry where !entry(i).isValid { return (Self.errorInvalidEntry, i) }
        return (0, nil)
    }

    /// Entry `i` of the shared buffer: zero past the entries written.
    @inlinable public func entry(_ i: Int) -> PSCEntry { i < entries.count ? entries[i] : PSCEntry(raw: 0) }
}

/// What the guest sees after a GHCB page-state change: KVM's SW_EXITINFO2 and the request
/// buffer as KVM left it (cur_entry, end_entry, each entry's cur_page), printed as
/// `ok cur_entry=2 end_entry=1 cur_page=[512,1]` or with the error's Linux name
/// (VMGEXIT_PSC_ERROR_INVALID_HDR, _INVALID_ENTRY, _GENERIC). arch/x86/kvm/svm/sev.c.
public struct PSCResult: Outcome, Hashable {
    public let exitInfo2: UInt64
    public let request: PSCRequest

    public init(exitInfo2: UInt64, request: PSCRequest) {
        self.exitInfo2 = exitInfo2
        self.request = request
    }

    /// A refused request is the hypervisor's documented answer, not a kernel error.
    public var kind: OutcomeKind { exitInfo2 == 0 ? .success : .status }

    public var code: String {
        switch exitInfo2 {
        case 0: "ok"
        case PSCRequest.errorInvalidHeader: "VMGEXIT_PSC_ERROR_INVALID_HDR"
        case PSCRequest.errorInvalidEntry: "VMGEXIT_PSC_ERROR_INVALID_ENTRY"
        case PSCRequest.errorGeneric: "VMGEXIT_PSC_ERROR_GENERIC"
        default: "SW_EXITINFO2=\(hex(exitInfo2))"
        }
    }

    public var description: String {
        "\(code) cur_entry=\(request.curEntry) end_entry=\(request.endEntry) cur_page=[\(request.entries.map { String($0.curPage) }.joined(separator: ","))]"
    }
}
