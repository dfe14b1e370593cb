import PageTables

/// A TDX module completion status as RAX returns it: the class and code in the high 32 bits
/// (bit 63 error, bit 62 non-recoverable), an operand ID or a SEPT level in the low 32.
/// Prints as the module names it, with the full value (`TDX_EPT_ENTRY_STATE_INCORRECT
/// 0xc0000b0d00000001`). tdx-module 1.5.01 (72d8cffb) include/auto_gen/tdx_error_codes_defs.h.
public struct TDXStatus: RawRepresentable, Hashable, Sendable, Outcome {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// A code with an operand ID or level in its low bits (api_error_with_operand_id: E + OP).
    public init(_ code: TDXStatus, _ detail: UInt64) { rawValue = code.rawValue | (detail & 0xffff_ffff) }

    public static let success = TDXStatus(rawValue: 0)
    public static let interruptedResumable = TDXStatus(rawValue: 0x8000_0003_0000_0000)
    public static let interruptedRestartable = TDXStatus(rawValue: 0x8000_0004_0000_0000)
    public static let operandInvalid = TDXStatus(rawValue: 0xC000_0100_0000_0000)
    public static let operandAddrRangeError = TDXStatus(rawValue: 0xC000_0101_0000_0000)
    public static let operandBusy = TDXStatus(rawValue: 0x8000_0200_0000_0000)
    public static let previousTLBEpochBusy = TDXStatus(rawValue: 0x8000_0201_0000_0000)
    public static let pageMetadataIncorrect = TDXStatus(rawValue: 0xC000_0300_0000_0000)
    public static let tdAssociatedPagesExist = TDXStatus(rawValue: 0xC000_0400_0000_0000)
    public static let tdFatal = TDXStatus(rawValue: 0xE000_0604_0000_0000)
    public static let tdcsNotAllocated = TDXStatus(rawValue: 0xC000_0606_0000_0000)
    public static let lifecycleStateIncorrect = TDXStatus(rawValue: 0xC000_0607_0000_0000)
    public static let opStateIncorrect = TDXStatus(rawValue: 0xC000_0608_0000_0000)
    public static let tdKeysNotConfigured = TDXStatus(rawValue: 0x8000_0810_0000_0000)
    public static let eptWalkFailed = TDXStatus(rawValue: 0xC000_0B00_0000_0000)
    public static let eptEntryNotPresent = TDXStatus(rawValue: 0xC000_0B03_0000_0000)
    public static let gpaRangeNotBlocked = TDXStatus(rawValue: 0xC000_0B06_0000_0000)
    public static let gpaRangeAlreadyBlocked = TDXStatus(rawValue: 0x0000_0B07_0000_0000)
    public static let tlbTrackingNotDone = TDXStatus(rawValue: 0xC000_0B08_0000_0000)
    public static let eptInvalidPromoteConditions = TDXStatus(rawValue: 0xC000_0B09_0000_0000)
    public static let pageAlreadyAccepted = TDXStatus(rawValue: 0x0000_0B0A_0000_0000)
    public static let pageSizeMismatch = TDXStatus(rawValue: 0xC000_0B0B_0000_0000)
    public static let eptEntryStateIncorrect = TDXStatus(rawValue: 0xC000_0B0D_0000_0000)
    public static let eptPageNotFree = TDXStatus(rawValue: 0xC000_0B0E_0000_0000)

    /// Operand IDs (tdx_error_codes_defs.h).
    public enum Operand {
        public static let rax: UInt64 = 0, rcx: UInt64 = 1, rdx: UInt64 = 2, r8: UInt64 = 8, r9: UInt64 = 9
        public static let tdr: UInt64 = 128, septTree: UInt64 = 146, tdEpoch: UInt64 = 169, opState: UInt64 = 172
    }

    static let names: [(UInt64, String)] = [
        (0x0000_0000, "TDX_SUCCESS"), (0x8000_0003, "TDX_INTERRUPTED_RESUMABLE"), (0x8000_0004, "TDX_INTERRUPTED_RESTARTABLE"),
        (0xC000_0100, "TDX_OPERAND_INVALID"), (0xC000_0101, "TDX_OPERAND_ADDR_RANGE_ERROR"), (0x8000_0200, "TDX_OPERAND_BUSY"),
        (0x8000_0201, "TDX_PREVIOUS_TLB_EPOCH_BUSY"), (0xC000_0300, "TDX_PAGE_METADATA_INCORRECT"),
        (0xC000_0400, "TDX_TD_ASSOCIATED_PAGES_EXIST"), (0xE000_0604, "TDX_TD_FATAL"), (0xC000_0606, "TDX_TDCS_NOT_ALLOCATED"),
        (0xC000_0607, "TDX_LIFECYCLE_STATE_INCORRECT"), (0xC000_0608, "TDX_OP_STATE_INCORRECT"), (0x8000_0810, "TDX_TD_KEYS_NOT_CONFIGURED"),
        (0xC000_0B00, "TDX_EPT_WALK_FAILED"), (0xC000_0B03, "TDX_EPT_ENTRY_NOT_PRESENT"), (0xC000_0B06, "TDX_GPA_RANGE_NOT_BLOCKED"), (0x0000_0B07, "TDX_GPA_RANGE_ALREADY_BLOCKED"),
        (0xC000_0B08, "TDX_TLB_TRACKING_NOT_DONE"), (0xC000_0B09, "TDX_EPT_INVALID_PROMOTE_CONDITIONS"),
        (0x0000_0B0A, "TDX_PAGE_ALREADY_ACCEPTED"), (0xC000_0B0B, "TDX_PAGE_SIZE_MISMATCH"),
        (0xC000_0B0D, "TDX_EPT_ENTRY_STATE_INCORRECT"), (0xC000_0B0E, "TDX_EPT_PAGE_NOT_FREE"),
    ]

    /// The code without its operand or level.
    public var code: TDXStatus { TDXStatus(rawValue: rawValue & 0xffff_ffff_0000_0000) }
    /// Bit 63: an error class (ALREADY_BLOCKED and ALREADY_ACCEPTED are not).
    public var isErrorClass: Bool { rawValue >> 63 == 1 }
    public var name: String { Self.names.first { $0.0 == rawValue >> 32 }?.1 ?? "TDX_STATUS" }

    public var kind: OutcomeKind { isErrorClass ? .status : .success }
    public var description: String { rawValue == 0 ? "TDX_SUCCESS" : "\(name) \(hex(rawValue, digits: 16))" }
}
extension TDXStatus: Error {}
