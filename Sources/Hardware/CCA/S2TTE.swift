import PageTables

/// A realm IPA's state as the realm sees it (RMM 1.0 §A5.2.2): RIPAS.
public enum RIPAS: UInt64, CaseIterable, Sendable, CustomStringConvertible {
    case empty = 0
    case ram = 1
    case destroyed = 2
    public var description: String { ["EMPTY", "RAM", "DESTROYED"][Int(rawValue)] }
}

/// The states of an RMM stage-2 entry that is not a valid hardware descriptor, as TF-RMM's
/// lib/s2tt creates and tests them (s2tte_create_unassigned_empty … s2tte_is_assigned_destroyed):
/// HIPAS UNASSIGNED with each RIPAS, UNASSIGNED_NS, and HIPAS ASSIGNED with RIPAS EMPTY or
/// DESTROYED (which keep their PA). ASSIGNED_RAM and ASSIGNED_NS are valid leaves, and TABLE
/// a table. TF-RMM (tf-rmm-v0.6.0, RMM 1.0) lib/s2tt/include/s2tt.h.
public enum S2TTEState: CaseIterable, Hashable, Sendable, CustomStringConvertible {
    case unassignedEmpty, unassignedRAM, unassignedDestroyed, unassignedNS
    case assignedEmpty, assignedDestroyed

    /// HIPAS (UNASSIGNED 0, ASSIGNED 1), as in bits [4:2] of the RMM's invalid entries.
    var hipas: UInt64 { self == .assignedEmpty || self == .assignedDestroyed ? 1 : 0 }
    /// RIPAS, as in bits [6:5] (unused for NS).
    var ripas: RIPAS {
        switch self {
        case .unassignedEmpty, .assignedEmpty, .unassignedNS: .empty
        case .unassignedRAM: .ram
        case .unassignedDestroyed, .assignedDestroyed: .destroyed
        }
    }
    var hasAddress: Bool { hipas == 1 }

    public var description: String {
        switch self {
        case .unassignedEmpty: "UNASSIGNED_EMPTY"
        case .unassignedRAM: "UNASSIGNED_RAM"
        case .unassignedDestroyed: "UNASSIGNED_DESTROYED"
        case .unassignedNS: "UNASSIGNED_NS"
        case .assignedEmpty: "ASSIGNED_EMPTY"
        case .assignedDestroyed: "ASSIGNED_DESTROYED"
        }
    }
}

extension Descriptor {
    /// Payload: HIPAS in bits [4:2] and RIPAS in [6:5] as the RMM places them, bit 7 for NS,
    /// the granule's frame from bit 12 (ASSIGNED states only).
    static func s2ttePayload(_ state: S2TTEState, pa: UInt64) -> UInt64 {
        state.hipas << 2 | state.ripas.rawValue << 5 | (state == .unassignedNS ? 1 << 7 : 0) | (state.hasAddress ? pa & ~(pageBytes - 1) : 0)
    }

    /// s2tte_create_<state>: an invalid RMM stage-2 entry in `state`; `pa` is the granule an
    /// ASSIGNED state keeps (ignored otherwise).
    public static func s2tte(_ state: S2TTEState, pa: UInt64 = 0) -> Descriptor {
        .annotated(Annotation(.rmmS2TTE, payload: s2ttePayload(state, pa: pa)))
    }

    /// s2tte_is_<state>.
    public func isS2TTE(_ state: S2TTEState) -> Bool { s2tteState == state }

    /// The RMM state of an invalid entry, if it holds one.
    public var s2tteState: S2TTEState? {
        guard let a = annotation, a.family == .rmmS2TTE else { return nil }
        return S2TTEState.allCases.first { Self.s2ttePayload($0, pa: a.payload) == a.payload }
    }

    /// The granule an ASSIGNED invalid entry keeps.
    public var s2tteAddress: UInt64? {
        guard let state = s2tteState, state.hasAddress else { return nil }
        return annotation!.payload & ~(pageBytes - 1)
    }
}
