import PageTables

/// The sixteen Secure-EPT entry states of TDX module 1.5 with their encodings, in the
/// order of the module's lookup tables (`index`). tdx-module 1.5.01 (72d8cffb)
/// include/auto_gen/sept_state_lookup.h and .c.
///
/// In a TD's S-EPT `PageTable`: FREE is an empty entry; MAPPED a present leaf; NL_MAPPED a
/// table; NL_BLOCKED a table the TD also lists as blocked (`TDXTD.nlBlocked`); every other
/// state an annotated entry holding its encoding and the page's HPA (`Descriptor.sept`).
public enum SEPTState: UInt8, CaseIterable, Hashable, Sendable, CustomStringConvertible {
    case free = 0x0E
    case removed = 0x0C
    case nlMapped = 0x00
    case nlBlocked = 0x08
    case mapped = 0x60
    case blocked = 0x68
    case blockedW = 0x64
    case exportedBlockedW = 0x66
    case exportedDirty = 0x63
    case exportedDirtyBlockedW = 0x67
    case pending = 0x70
    case pendingBlocked = 0x78
    case pendingBlockedW = 0x74
    case pendingExportedBlockedW = 0x76
    case pendingExportedDirty = 0x73
    case pendingExportedDirtyBlockedW = 0x77

    /// The state's column in seamcall_sept_state_lookup (sept_special_flags_lookup .index):
    /// its place in `allCases` (TDXModuleTests checks they agree).
    public var index: Int {
        switch self {
        case .free: 0
        case .removed: 1
        case .nlMapped: 2
        case .nlBlocked: 3
        case .mapped: 4
        case .blocked: 5
        case .blockedW: 6
        case .exportedBlockedW: 7
        case .exportedDirty: 8
        case .exportedDirtyBlockedW: 9
        case .pending: 10
        case .pendingBlocked: 11
        case .pendingBlockedW: 12
        case .pendingExportedBlockedW: 13
        case .pendingExportedDirty: 14
        case .pendingExportedDirtyBlockedW: 15
        }
    }

    /// A leaf state (a page, not a table); FREE counts as neither.
    public var isLeaf: Bool { self != .free && self != .nlMapped && self != .nlBlocked }
    /// Whether the entry still holds the page's HPA (every leaf state).
    public var holdsPage: Bool { isLeaf && self != .removed }
    /// Whether the S-EPT keeps it as an annotated entry (not FREE, MAPPED or a table).
    public var isAnnotation: Bool { self != .free && self != .mapped && self != .nlMapped && self != .nlBlocked }

    /// sept_special_flags_lookup .any_blocked.
    public var anyBlocked: Bool { self == .nlBlocked || self == .blocked || self == .pendingBlocked }
    /// .tlb_tracking_required.
    public var tlbTrackingRequired: Bool {
        !(self == .free || self == .removed || self == .exportedBlockedW || self == .pendingExportedBlockedW)
    }
    /// .guest_accessible_leaf: the TD can read it (MAPPED, BLOCKEDW, EXPORTED_*).
    public var guestAccessibleLeaf: Bool {
        switch self {
        case .mapped, .blockedW, .exportedBlockedW, .exportedDirty, .exportedDirtyBlockedW: true
        default: false
        }
    }
    /// Whether the state is a PENDING one.
    public var isPending: Bool { rawValue & 0x70 == 0x70 }

    /// The public state TDH.MEM.SEPT.RD and error details report (RDX[15:8]).
    public var publicState: UInt8 {
        [0, 5, 0x84, 0x81, 4, 1, 8, 9, 11, 12, 2, 3, 16, 17, 19, 20][index]
    }

    public var description: String {
        ["FREE", "REMOVED", "NL_MAPPED", "NL_BLOCKED", "MAPPED", "BLOCKED", "BLOCKEDW", "EXPORTED_BLOCKEDW", "EXPORTED_DIRTY",
         "EXPORTED_DIRTY_BLOCKEDW", "PENDING", "PENDING_BLOCKED", "PENDING_BLOCKEDW", "PENDING_EXPORTED_BLOCKEDW",
         "PENDING_EXPORTED_DIRTY", "PENDING_EXPORTED_DIRTY_BLOCKEDW"][index]
    }
}

/// The module's S-EPT calls by leaf number, and the states each accepts: every row of
/// seamcall_sept_state_lookup and tdcall_sept_state_lookup (sept_state_lookup.c) for them.
public enum SEPTCall: String, CaseIterable, Hashable, Sendable {
    case pageAdd = "TDH.MEM.PAGE.ADD"
    case septAdd = "TDH.MEM.SEPT.ADD"
    case pageAug = "TDH.MEM.PAGE.AUG"
    case rangeBlock = "TDH.MEM.RANGE.BLOCK"
    case pageDemote = "TDH.MEM.PAGE.DEMOTE"
    case pagePromote = "TDH.MEM.PAGE.PROMOTE"
    case pageRemove = "TDH.MEM.PAGE.REMOVE"
    case septRemove = "TDH.MEM.SEPT.REMOVE"
    case rangeUnblock = "TDH.MEM.RANGE.UNBLOCK"
    case accept = "TDG.MEM.PAGE.ACCEPT"

    /// The SEAMCALL (or, for ACCEPT, TDCALL) leaf number.
    public var leaf: Int {
        switch self {
        case .pageAdd: 2
        case .septAdd: 3
        case .pageAug: 6
        case .rangeBlock: 7
        case .pageDemote: 15
        case .pagePromote: 23
        case .pageRemove: 29
        case .septRemove: 30
        case .rangeUnblock: 39
        case .accept: 6
        }
    }

    /// The row of the lookup table, one flag per state in `SEPTState.index` order.
    public var row: [Bool] {
        let bits: [UInt8]
        switch self {
        case .pageAdd: bits = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        case .septAdd: bits = [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        case .pageAug: bits = [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        case .rangeBlock: bits = [0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0]
        case .pageDemote: bits = [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
        case .pagePromote: bits = [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        case .pageRemove: bits = [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0]
        case .septRemove: bits = [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        case .rangeUnblock: bits = [0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
        case .accept: bits = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0]
        }
        return bits.map { $0 == 1 }
    }

    /// `row` as bits, bit *i* for the state of index *i* (TDXModuleTests checks they agree),
    /// so a check allocates nothing.
    @usableFromInline var mask: UInt16 {
        switch self {
        case .pageAdd: 0x0001
        case .septAdd: 0x0005
        case .pageAug: 0x0003
        case .rangeBlock: 0x1454
        case .pageDemote: 0x0c30
        case .pagePromote: 0x000c
        case .pageRemove: 0x1c70
        case .septRemove: 0x000c
        case .rangeUnblock: 0x0828
        case .accept: 0x4400
        }
    }

    /// Whether the call accepts an entry in `state`.
    @inlinable public func allows(_ state: SEPTState) -> Bool { mask >> UInt16(state.index) & 1 != 0 }
}

extension Descriptor {
    /// A Secure-EPT entry in an annotated `state` (not usable by the CPU as it stands); `pa`
    /// is the page it keeps. Payload: the state's encoding in bits 0-7, the frame from bit 12.
    public static func sept(_ state: SEPTState, pa: UInt64 = 0) -> Descriptor {
        precondition(state.isAnnotation, "\(state) is not kept as an annotated entry")
        return .annotated(Annotation(.tdxSEPT, payload: UInt64(state.rawValue) | (state.holdsPage ? pa & ~(pageBytes - 1) & ((1 << 48) - 1) : 0)))
    }

    /// Whether this entry is a Secure-EPT entry in `state`.
    public func isSEPT(_ state: SEPTState) -> Bool { septState == state }

    /// The Secure-EPT state of an annotated entry, if it holds one.
    public var septState: SEPTState? {
        guard let a = annotation, a.family == .tdxSEPT else { return nil }
        return SEPTState(rawValue: UInt8(truncatingIfNeeded: a.payload))
    }

    /// The page an annotated leaf state keeps.
    public var septAddress: UInt64? {
        guard let s = septState, s.holdsPage else { return nil }
        return annotation!.payload & ~(pageBytes - 1)
    }
}
