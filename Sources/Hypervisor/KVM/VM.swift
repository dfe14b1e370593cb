import Hardware
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

/// What a VM is made of before it starts: one guest_memfd memslot over all its memory.
public struct VMConfig: Hashable, Sendable {
    public let name: String
    /// The hardware's guest identifier: the ASID on SEV-SNP (later the HKID on TDX, the VMID
    /// on arm64).
    public let id: UInt32
    public let vcpus: Int
    public let memory: UInt64
    /// Host physical address of guest physical 0 (the guest_memfd backing is contiguous).
    public let placement: UInt64
    public let backing: GmemBacking

    public init(name: String, id: UInt32, vcpus: Int, memory: UInt64, placement: UInt64, backing: GmemBacking) {
        self.name = name
        self.id = id
        self.vcpus = vcpus
        self.memory = memory
        self.placement = placement
        self.backing = backing
    }

    public func spa(_ gfn: UInt64) -> UInt64 { placement + gfn << pageShift }
    public var pages: UInt64 { memory >> pageShift }
}

/// KVM_MEMORY_ATTRIBUTE_PRIVATE per gfn, and whether a 2M range is mixed. Linux
/// virt/kvm/kvm_main.c kvm_vm_set_mem_attributes; arch/x86/kvm/mmu/mmu.c hugepage_has_attrs
/// and KVM_LPAGE_MIXED_FLAG.
public struct MemoryAttributes: Hashable, Sendable {
    /// One bit per gfn: private (1) or shared (0). guest_memfd VMs start all private.
    @usableFromInline var privateBits: [UInt64]
    public let pages: UInt64

    public init(pages: UInt64) {
        self.pages = pages
        privateBits = [UInt64](repeating: ~0, count: Int((pages + 63) / 64))
    }

    @inlinable public func isPrivate(_ gfn: UInt64) -> Bool { privateBits[Int(gfn >> 6)] >> (gfn & 63) & 1 != 0 }

    mutating func setPrivate(_ gfn: UInt64, _ v: Bool) {
        let i = Int(gfn >> 6), bit: UInt64 = 1 << (gfn & 63)
        privateBits[i] = v ? privateBits[i] | bit : privateBits[i] & ~bit
    }

    /// Whether the 2M range holding `gfn` has uniform attributes, so KVM may map it with a
    /// hugepage (not KVM_LPAGE_MIXED_FLAG).
    public func hugepageUniform(_ gfn: UInt64) -> Bool {
        let base = gfn & ~511
        guard base + 512 <= pages else { return false }
        let words = privateBits[Int(base >> 6)..<Int(base >> 6) + 8]  // 512 bits, 2M-aligned
        return words.allSatisfy { $0 == 0 } || words.allSatisfy { $0 == ~0 }
    }
}

/// One VM as KVM keeps it: configuration, lifecycle, memory attributes, its stage-2 table
/// (the NPT on x86: GPA → SPA leaves as KVM's TDP MMU installs them) and the backend's own
/// per-VM state.
public struct VM<ArchState: Sendable>: Sendable {
    public enum State: String, Sendable { case created, launching, running, destroyed }

    public let config: VMConfig
    public internal(set) var state = State.created
    public internal(set) var attributes: MemoryAttributes
    /// The stage-2 page table: guest physical addresses as its input addresses.
    public internal(set) var stage2 = PageTable(format: .x86_64)
    /// What the architecture's backend keeps per VM (SEV-SNP: the context and VMSA pages).
    public internal(set) var arch: ArchState

    init(config: VMConfig, arch: ArchState) {
        self.config = config
        self.attributes = MemoryAttributes(pages: config.pages)
        self.arch = arch
    }

    public func isPrivate(_ gfn: UInt64) -> Bool { attributes.isPrivate(gfn) }

    /// The stage-2 leaf that maps `gfn`, if any. Inlined, so the VM is not copied to call it.
    @inlinable @inline(__always) public func stage2Leaf(_ gfn: UInt64) -> Leaf? {
        guard let leaf = stage2.lookup(VirtAddr(gfn << pageShift)), leaf.descriptor.isPresentLeaf else { return nil }
        return leaf
    }
}
