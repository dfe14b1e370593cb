import Hardware
import HostKernel
import PageTables

/// The guest_memfd folio size backing a VM's private memory.
public enum GmemBacking: String, CaseIterable, Hashable, Sendable {
    case gmem4K = "guest-memfd-4K"
    case gmem2M = "guest-memfd-2M"
    case gmem1G = "guest-memfd-1G"

    public var folio: PageSize {
        switch self {
        case .gmem4K: .size4K
        case .gmem2M: .size2M
        case .gmem1G: .size1G
        }
    }
}

/// What a VM is made of before it starts.
public struct SNPVMConfig: Hashable, Sendable {
    public let name: String
    public let asid: UInt32
    public let vcpus: Int
    public let memory: UInt64
    /// Host physical address of guest physical 0 (the guest_memfd backing is contiguous).
    public let placement: UInt64
    public let backing: GmemBacking

    public init(name: String, asid: UInt32, vcpus: Int, memory: UInt64, placement: UInt64, backing: GmemBacking) {
        self.name = name
        self.asid = asid
        self.vcpus = vcpus
        self.memory = memory
        self.placement = placement
        self.backing = backing
    }

    public func spa(_ gfn: UInt64) -> UInt64 { placement + gfn << pageShift }
    public var pages: UInt64 { memory >> pageShift }
}

/// One SEV-SNP VM as KVM keeps it: its memory attributes (KVM_MEMORY_ATTRIBUTE_PRIVATE per
/// gfn), its launch state, and the firmware and VMSA pages it owns.
public struct SNPVM: Sendable {
    public enum State: String, Sendable { case created, launching, running, destroyed }

    public let config: SNPVMConfig
    public internal(set) var state = State.created
    /// One bit per gfn: private (1) or shared (0). guest_memfd VMs start all private.
    var privateBits: [UInt64]
    /// The SNP context page the firmware keeps for this guest (rmp_mark_pages_firmware).
    public internal(set) var contextPage: UInt64?
    /// One VMSA page per vCPU.
    public internal(set) var vmsaPages: [UInt64] = []

    init(config: SNPVMConfig) {
        self.config = config
        privateBits = [UInt64](repeating: ~0, count: Int((config.pages + 63) / 64))
    }

    public func isPrivate(_ gfn: UInt64) -> Bool { privateBits[Int(gfn >> 6)] >> (gfn & 63) & 1 != 0 }

    mutating func setPrivate(_ gfn: UInt64, _ v: Bool) {
        let i = Int(gfn >> 6), bit: UInt64 = 1 << (gfn & 63)
        privateBits[i] = v ? privateBits[i] | bit : privateBits[i] & ~bit
    }

    /// Whether the 2M range holding `gfn` has uniform attributes, so KVM may map it with a
    /// hugepage (hugepage_has_attrs; KVM_LPAGE_MIXED_FLAG otherwise). arch/x86/kvm/mmu/mmu.c.
    public func hugepageUniform(_ gfn: UInt64) -> Bool {
        let base = gfn & ~511
        guard base + 512 <= config.pages else { return false }
        let words = privateBits[Int(base >> 6)..<Int(base >> 6) + 8]  // 512 bits, 2M-aligned
        return words.allSatisfy { $0 == 0 } || words.allSatisfy { $0 == ~0 }
    }
}
