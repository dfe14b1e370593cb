/// Which architecture's states an annotated entry holds. Each family is declared here, so
/// two architectures never share a number; the states themselves (constructors and
/// predicates) live with their architecture.
public struct AnnotationFamily: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    // Constants, not stored statics: a stored static in another module is reached through
    // an addressor call, which makes a caller copy what it holds borrowed (a realm) around it.

    /// pKVM: the owner of a page the host stage-2 does not map (Hypervisor/PKVM).
    @inlinable public static var pkvmOwner: AnnotationFamily { AnnotationFamily(rawValue: 1) }
    /// Arm CCA RMM: HIPAS and RIPAS of an invalid stage-2 entry (Hardware/CCA).
    @inlinable public static var rmmS2TTE: AnnotationFamily { AnnotationFamily(rawValue: 2) }
    /// Intel TDX: the state of a Secure-EPT entry the CPU may not use (Hardware/TDX).
    @inlinable public static var tdxSEPT: AnnotationFamily { AnnotationFamily(rawValue: 3) }
    /// A user PTE that holds a swap entry (swp_entry_t: the payload is the swap slot).
    @inlinable public static var swapEntry: AnnotationFamily { AnnotationFamily(rawValue: 4) }

    public var description: String {
        switch self {
        case .pkvmOwner: "pkvm-owner"
        case .rmmS2TTE: "s2tte"
        case .tdxSEPT: "sept"
        case .swapEntry: "swap"
        default: "family \(rawValue)"
        }
    }
}

/// What a not-present entry records: its family and a 48-bit payload the family defines.
public struct Annotation: Hashable, Sendable, CustomStringConvertible {
    public let family: AnnotationFamily
    public let payload: UInt64

    @usableFromInline static let payloadMask: UInt64 = (1 << 48) - 1

    @inlinable public init(_ family: AnnotationFamily, payload: UInt64) {
        self.family = family
        self.payload = payload & Self.payloadMask
    }

    public var description: String { "annotated \(family) \(hex(payload))" }
}
