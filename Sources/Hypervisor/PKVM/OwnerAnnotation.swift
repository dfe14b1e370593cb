import PageTables

/// A pKVM component that can own a page (enum pkvm_component_id, "this corresponds to
/// page-table locking order"). Host and hypervisor are 0 and 1 in every version; a guest
/// is 2 from the protected-guest series. Linux arch/arm64/kvm/hyp/include/nvhe/mem_protect.h.
public struct PKVMComponentID: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let host = PKVMComponentID(rawValue: 0)
    public static let hyp = PKVMComponentID(rawValue: 1)
    public var description: String {
        switch self {
        case .host: "PKVM_ID_HOST"
        case .hyp: "PKVM_ID_HYP"
        case .guest: "PKVM_ID_GUEST"
        default: "PKVM_ID(\(rawValue))"
        }
    }
}

extension Descriptor {
    /// kvm_init_invalid_leaf_owner: an invalid host stage-2 entry that records the page's
    /// owner in bits [9:2] (KVM_INVALID_PTE_OWNER_MASK). Linux arch/arm64/kvm/hyp/pgtable.c.
    public static func pkvmOwner(_ owner: PKVMComponentID) -> Descriptor {
        .annotated(Annotation(.pkvmOwner, payload: UInt64(owner.rawValue) << 2))
    }

    /// The owner an invalid host stage-2 entry records, if it records one.
    public var pkvmOwner: PKVMComponentID? {
        guard let a = annotation, a.family == .pkvmOwner else { return nil }
        return PKVMComponentID(rawValue: UInt8(truncatingIfNeeded: (a.payload >> 2) & 0xff))
    }
}
