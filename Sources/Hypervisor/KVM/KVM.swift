import Hardware
import HostKernel
import PageTables

/// What an architecture plugs into KVM: guest_memfd's prepare and invalidate hooks, the
/// largest private mapping its hardware allows, and what to do when a guest access raises
/// one of its faults. Linux virt/kvm/guest_memfd.c (kvm_arch_gmem_prepare,
/// kvm_arch_gmem_invalidate), arch/x86/kvm/mmu/mmu.c (private_max_mapping_level).
public protocol KVMBackend: Sendable {
    /// The hardware the backend drives (the RMP on SEV-SNP).
    associatedtype Hardware: Sendable
    /// What the backend keeps per VM.
    associatedtype ArchState: Sendable
    /// What a guest access or instruction answers on this hardware.
    associatedtype GuestOutcome: Outcome

    func makeArchState(_ config: VMConfig) -> ArchState
    /// kvm_arch_gmem_prepare on a private fault: the page's size if it prepared one now.
    mutating func prepare(_ vm: inout VM<ArchState>, gfn: UInt64, kernel: inout Kernel, hw: inout Hardware) -> (PageSize?, KernelStatus)
    /// kvm_arch_gmem_invalidate over `gfns` (folio free or punch-hole).
    mutating func invalidate(_ vm: inout VM<ArchState>, gfns: Range<UInt64>, kernel: inout Kernel, hw: inout Hardware)
    /// The largest stage-2 leaf the hardware allows for a private gfn now. (`vm` is inout
    /// only so the VM is not copied to ask.)
    func maxMappingLevel(_ vm: inout VM<ArchState>, gfn: UInt64, hw: Hardware) -> PageSize
    /// A guest access raised `outcome`: retry after zapping a range, stop, or loop forever.
    mutating func handleFault(_ vm: inout VM<ArchState>, gfn: UInt64, private isPrivate: Bool, outcome: GuestOutcome, hw: inout Hardware) -> FaultAction
    /// Teardown after guest memory is invalidated: the backend's own pages go back.
    mutating func teardown(_ vm: inout VM<ArchState>, kernel: inout Kernel, hw: inout Hardware)
}

/// What KVM does after a guest access raised a fault its backend knows.
public enum FaultAction: Sendable {
    /// Not a fault KVM handles: the outcome stands.
    case done
    /// Zap these gfns from the stage-2 table and re-enter the guest.
    case retry(zap: Range<UInt64>)
    /// Nothing changed, so the guest re-enters and faults again without end.
    case loop
}

/// KVM: the VMs, the backend of the machine's architecture, and what KVM counts. Every
/// method names the Linux function it models. The host kernel and the hardware are passed
/// in, as KVM reaches them through the host kernel and the architecture's instructions.
public struct KVM<Backend: KVMBackend>: Sendable {
    public internal(set) var vms: [VM<Backend.ArchState>] = []
    public var backend: Backend
    public internal(set) var stats = KVMStats()

    public init(backend: Backend) { self.backend = backend }

    /// Adds a VM (KVM_CREATE_VM, a guest_memfd memslot over all memory).
    public mutating func create(_ config: VMConfig) { vms.append(VM(config: config, arch: backend.makeArchState(config))) }

    /// A destroyed VM made again with the same configuration (KVM_CREATE_VM), not launched.
    public mutating func recreate(_ i: Int) { vms[i] = VM(config: vms[i].config, arch: backend.makeArchState(vms[i].config)) }

    /// Installs the stage-2 leaf for `gfn` if none maps it, at the smallest of the folio, what
    /// the backend allows and what the attributes allow (no mixed hugepage); returns the size
    /// of the leaf that maps it. arch/x86/kvm/mmu/mmu.c kvm_mmu_max_mapping_level,
    /// kvm_tdp_mmu_map.
    mutating func mapStage2(_ i: Int, gfn: UInt64, hw: Backend.Hardware) -> PageSize {
        if let leaf = stage2Leaf(i, gfn) { return leaf.size }
        let folio = vms[i].config.backing.folio
        let level = min(folio, backend.maxMappingLevel(&vms[i], gfn: gfn, hw: hw), vms[i].attributes.hugepageUniform(gfn) ? .size2M : .size4K)
        let base = gfn & ~(level.pages - 1)
        do {
            try vms[i].stage2.installLeaf(virt: VirtAddr(base << pageShift), phys: PhysAddr(vms[i].config.spa(base)), size: level,
                                          attributes: [.present, .writable])
        } catch {
            preconditionFailure("stage-2 map of gfn \(hex(gfn)) at \(level): \(error)")  // aligned by construction
        }
        return level
    }

    /// The present stage-2 leaf over guest `i`'s `gfn` (through stored properties, so the VM
    /// is never copied to ask).
    @inline(__always) func stage2Leaf(_ i: Int, _ gfn: UInt64) -> Leaf? {
        guard let leaf = vms[i].stage2.lookup(VirtAddr(gfn << pageShift)), leaf.descriptor.isPresentLeaf else { return nil }
        return leaf
    }

    /// Zaps the stage-2 leaves over `gfns`; a huge leaf partly inside goes whole, as the TDP
    /// MMU zaps a huge SPTE. arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_unmap_gfn_range.
    public mutating func zapStage2(_ i: Int, gfns: Range<UInt64>) {
        guard !gfns.isEmpty else { return }
        try? vms[i].stage2.zap(virt: VirtAddr(gfns.lowerBound << pageShift), size: UInt64(gfns.count) << pageShift)
    }

    /// Converts `gfns` as a page-state change asks: the attributes change
    /// (KVM_HC_MAP_GPA_RANGE → the VMM's KVM_SET_MEMORY_ATTRIBUTES, which zaps the range from
    /// stage 2); for shared the VMM then punches the range out of guest_memfd, which
    /// invalidates it in the backend. For private the backend prepares pages only at the next
    /// gmem fault (lazily, as Linux does).
    public mutating func convert(_ i: Int, gfns: Range<UInt64>, toPrivate: Bool, kernel: inout Kernel, hw: inout Backend.Hardware) {
        for gfn in gfns { vms[i].attributes.setPrivate(gfn, toPrivate) }
        zapStage2(i, gfns: gfns)
        if !toPrivate { backend.invalidate(&vms[i], gfns: gfns, kernel: &kernel, hw: &hw) }
    }

    /// What one guest operation through KVM came to.
    public struct GuestStepResult: Sendable, Outcome {
        /// The instruction's or access's outcome, when it ran to an end.
        public var outcome: Backend.GuestOutcome?
        /// Set when KVM stopped first: KVM_EXIT_MEMORY_FAULT, or a kernel error from prepare.
        public var stopped: KVMExit?
        /// The size KVM prepared the page at, if it did.
        public var prepared: PageSize?
        /// Faults the backend resolved on the way (RMP #NPF → PSMASH on SEV-SNP).
        public var retries = 0

        public var description: String { stopped?.description ?? outcome?.description ?? "NPF loop" }
        public var kind: OutcomeKind { stopped?.kind ?? outcome?.kind ?? .fault }
        /// The outcome was a plain success.
        public var succeeded: Bool { stopped == nil && outcome?.kind == .success }
    }

    /// A guest memory access or instruction through KVM: a private/shared mismatch with the
    /// attributes exits to the VMM (KVM_EXIT_MEMORY_FAULT); a private gfn takes a gmem fault
    /// (the backend prepares it); the stage-2 leaf is installed; a fault the backend handles
    /// is resolved and the operation retried. `op` runs with the stage-2 leaf size.
    public mutating func guestStep(
        _ i: Int, gfn: UInt64, private isPrivate: Bool, kernel: inout Kernel, hw: inout Backend.Hardware,
        _ op: (inout Backend.Hardware, PageSize) -> Backend.GuestOutcome
    ) -> GuestStepResult {
        var r = GuestStepResult()
        guard vms[i].state == .running else { r.stopped = .error(.EINVAL); return r }
        guard isPrivate == vms[i].attributes.isPrivate(gfn) else {
            stats.memoryFaultExits += 1
            r.stopped = .memoryFault
            return r
        }
        if isPrivate {
            let (size, status) = backend.prepare(&vms[i], gfn: gfn, kernel: &kernel, hw: &hw)
            r.prepared = size
            // kvm_gmem_get_pfn reports any prepare failure as -EINVAL (sev_gmem_prepare).
            if status != .ok { r.stopped = .error(.EINVAL); return r }
        }
        for _ in 0..<3 {
            let level = mapStage2(i, gfn: gfn, hw: hw)
            let outcome = op(&hw, level)
            r.outcome = outcome
            switch backend.handleFault(&vms[i], gfn: gfn, private: isPrivate, outcome: outcome, hw: &hw) {
            case .done: return r
            case .loop: r.outcome = nil; return r
            case .retry(let zap):
                zapStage2(i, gfns: zap)
                stats.zappedGFNs += UInt64(zap.count)
                r.retries += 1
            }
        }
        r.outcome = nil
        return r
    }

    /// `guestStep` with the path it took, as text notes for a step's result.
    public mutating func guestOperation(
        _ i: Int, gfn: UInt64, private isPrivate: Bool, kernel: inout Kernel, hw: inout Backend.Hardware,
        retryNote: String, _ op: (inout Backend.Hardware, PageSize) -> Backend.GuestOutcome
    ) -> AnnotatedOutcome {
        let r = guestStep(i, gfn: gfn, private: isPrivate, kernel: &kernel, hw: &hw, op)
        var path: [String] = []
        if let size = r.prepared { path.append("gmem prepare \(size)") }
        for _ in 0..<r.retries { path.append(retryNote) }
        return AnnotatedOutcome(r, notes: path)
    }

    /// VM teardown: all guest memory is invalidated, then the backend returns its own pages;
    /// the stage-2 table goes. virt/kvm/kvm_main.c kvm_destroy_vm, guest_memfd release.
    public mutating func destroy(_ i: Int, kernel: inout Kernel, hw: inout Backend.Hardware) -> KernelStatus {
        guard vms[i].state != .destroyed else { return .error(.EINVAL) }
        backend.invalidate(&vms[i], gfns: 0..<vms[i].config.pages, kernel: &kernel, hw: &hw)
        backend.teardown(&vms[i], kernel: &kernel, hw: &hw)
        vms[i].stage2 = PageTable(format: vms[i].stage2.format)
        vms[i].state = .destroyed
        return .ok
    }

    /// Stage-2 page-table pages over all VMs.
    public var stage2TablePages: Int { vms.reduce(0) { $0 + $1.stage2.tablePages } }
}

/// Why KVM stopped a guest operation before it ran.
public enum KVMExit: Hashable, Sendable, Outcome {
    /// KVM_EXIT_MEMORY_FAULT: the access's private/shared bit disagrees with the attributes,
    /// so the VMM must convert (an implicit conversion).
    case memoryFault
    /// A kernel error on the way (the VM is not running, gmem prepare failed).
    case error(Errno)

    public var description: String {
        switch self {
        case .memoryFault: "KVM_EXIT_MEMORY_FAULT"
        case .error(let e): e.description
        }
    }

    public var kind: OutcomeKind {
        switch self {
        case .memoryFault: .fault
        case .error: .error
        }
    }
}

/// What KVM counts whatever the architecture.
public struct KVMStats: Hashable, Sendable {
    /// gfns zapped from stage 2 to resolve a fault (512 per PSMASH on SEV-SNP).
    public var zappedGFNs: UInt64 = 0
    /// KVM_EXIT_MEMORY_FAULT exits (implicit conversions).
    public var memoryFaultExits = 0

    public init() {}

    public static let metrics: [Metric<KVMStats>] = [
        Metric("npt_zapped_gfns", "gfns", "gfns zapped from the stage-2 table to resolve a fault (512 per PSMASH)") { $0.zappedGFNs },
        Metric("memory_fault_exits", "exits", "KVM_EXIT_MEMORY_FAULT exits: accesses whose private bit disagreed with the attributes") { UInt64($0.memoryFaultExits) },
    ]
}
