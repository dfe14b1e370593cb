import PageTables

/// The states of a Secure-EPT leaf the CPU may not use, with the TDX module's encodings
/// (TDX module 1.5 sept_state_lookup.c). MAPPED is a
/// valid leaf and NL_MAPPED/NL_BLOCKED are tables; the EXPORTED_* migration states are
/// left out.
public enum SEPTState: UInt8, CaseIterable, Hashable, Sendable, CustomStringConvertible {
    case free = 0x0E
    case removed = 0x0C
    case blocked = 0x68
    case blockedW = 0x64
    case pending = 0x70
    case pendingBlocked = 0x78
    case pendingBlockedW = 0x74

    /// Whether the entry still holds the page's HPA (all but FREE and REMOVED).
    public var holdsPage: Bool { self != .free && self != .removed }

    public var description: String {
        switch self {
        case .free: "FREE"
        case .removed: "REMOVED"
        case .blocked: "BLOCKED"
        case .blockedW: "BLOCKEDW"
        case .pending: "PENDING"
        case .pendingBlocked: "PENDING_BLOCKED"
        case .pendingBlockedW: "PENDING_BLOCKEDW"
        }
    }
}

extension Descriptor {
    /// A Secure-EPT entry in `state` (not usable by the CPU); `pa` is the page it keeps.
    /// Payload: the state's encoding in bits 0-7, the frame from bit 12.
    public static func sept(_ state: SEPTState, pa: UInt64 = 0) -> Descriptor {
        .annotated(Annotation(.tdxSEPT, payload: UInt64(state.rawValue) | (state.holdsPage ? pa & ~(pageBytes - 1) : 0)))
    }

    /// Whether this entry is a Secure-EPT entry in `state`.
    public func isSEPT(_ state: SEPTState) -> Bool { septState == state }

    /// The Secure-EPT state of a not-present entry, if it holds one.
    public var septState: SEPTState? {
        guard let a = annotation, a.family == .tdxSEPT else { return nil }
        return SEPTState(rawValue: UInt8(truncatingIfNeeded: a.payload))
    }

    /// The page a BLOCKED or PENDING entry keeps.
    public var septAddress: UInt64? {
        guard let s = septState, s.holdsPage else { return nil }
        return annotation!.payload & ~(pageBytes - 1)
    }
}
