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

extension Descriptor {
    /// HIPAS ASSIGNED in an RMM invalid entry (ASSIGNED_EMPTY or ASSIGNED_DESTROYED).
    @inline(__always) var isAssignedS2TTE: Bool {
        guard let a = annotation, a.family == .rmmS2TTE else { return false }
        return a.payload >> 2 & 7 == 1
    }
    /// s2tte_is_live, read from the raw entry: a valid leaf, a table, or ASSIGNED.
    @inline(__always) public var isLiveRTTEntry: Bool { isLeaf || isTable || isAssignedS2TTE }
    /// Counted in its RTT's refcount: a table or a protected ASSIGNED entry (not ASSIGNED_NS).
    @inline(__always) public var isRefcountedRTTEntry: Bool { isTable || (isLeaf && !attributes.contains(.shared)) || isAssignedS2TTE }
}

/// An RTT entry in every state TF-RMM's lib/s2tt tells apart (tf-rmm-v0.6.0 s2tt.c): the
/// invalid states (`S2TTEState`), the valid ASSIGNED_RAM leaf, ASSIGNED_NS (a valid leaf
/// with the NS bit, the host's memory) and TABLE. An RTT holds it as a `Descriptor`:
/// invalid states annotated, ASSIGNED_RAM a present leaf, ASSIGNED_NS a present leaf with
/// the `shared` attribute.
public enum RTTEntry: Hashable, Sendable, CustomStringConvertible {
    case unassigned(RIPAS)
    case unassignedNS
    case assigned(RIPAS, pa: UInt64)
    case assignedNS(pa: UInt64)
    case table(Int)

    @inline(__always) public init(_ d: Descriptor) {
        if d.isTable { self = .table(d.tableNumber); return }
        if d.isLeaf {
            let pa = d.frame.rawValue << pageShift
            self = d.attributes.contains(.shared) ? .assignedNS(pa: pa) : .assigned(.ram, pa: pa)
            return
        }
        guard let a = d.annotation, a.family == .rmmS2TTE else { self = .unassigned(.empty); return }
        let ripas = RIPAS(rawValue: a.payload >> 5 & 3) ?? .empty
        if a.payload >> 7 & 1 == 1 { self = .unassignedNS; return }
        self = a.payload >> 2 & 7 == 1 ? .assigned(ripas, pa: a.payload & ~(pageBytes - 1)) : .unassigned(ripas)
    }

    /// The entry as the RTT stores it.
    public var descriptor: Descriptor {
        switch self {
        case .unassigned(.empty): .s2tte(.unassignedEmpty)
        case .unassigned(.ram): .s2tte(.unassignedRAM)
        case .unassigned(.destroyed): .s2tte(.unassignedDestroyed)
        case .unassignedNS: .s2tte(.unassignedNS)
        case .assigned(.ram, let pa): .leaf(PFN(pa >> pageShift), [.present, .writable])
        case .assigned(.empty, let pa): .s2tte(.assignedEmpty, pa: pa)
        case .assigned(.destroyed, let pa): .s2tte(.assignedDestroyed, pa: pa)
        case .assignedNS(let pa): .leaf(PFN(pa >> pageShift), [.present, .writable, .shared])
        case .table(let t): .table(t)
        }
    }

    /// Counted in the RTT's refcount: TABLE and protected ASSIGNED entries.
    public var isRefcounted: Bool {
        switch self {
        case .table, .assigned: true
        default: false
        }
    }

    /// s2tte_is_live (s2tte_has_pa): a valid descriptor, or ASSIGNED with its PA.
    public var isLive: Bool {
        switch self {
        case .table, .assigned, .assignedNS: true
        default: false
        }
    }

    /// The RIPAS of an entry that has one (not NS, not a table): s2tte_get_ripas.
    public var ripas: RIPAS? {
        switch self {
        case .unassigned(let r), .assigned(let r, _): r
        default: nil
        }
    }

    /// The PA of an ASSIGNED entry.
    public var pa: UInt64? {
        switch self {
        case .assigned(_, let pa), .assignedNS(let pa): pa
        default: nil
        }
    }

    /// The same state with the PA moved on (an unfolded block's entry `i`).
    func offset(_ bytes: UInt64) -> RTTEntry {
        switch self {
        case .assigned(let r, let pa): .assigned(r, pa: pa + bytes)
        case .assignedNS(let pa): .assignedNS(pa: pa + bytes)
        default: self
        }
    }

    public var description: String {
        switch self {
        case .unassigned(let r): "UNASSIGNED_\(r)"
        case .unassignedNS: "UNASSIGNED_NS"
        case .assigned(let r, let pa): "ASSIGNED_\(r) \(hex(pa))"
        case .assignedNS(let pa): "ASSIGNED_NS \(hex(pa))"
        case .table: "TABLE"
        }
    }
}
