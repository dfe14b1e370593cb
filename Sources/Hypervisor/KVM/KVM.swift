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
    /// the backend allows (private gfns) and what the attributes allow (no mixed hugepage);
    /// returns the size of the leaf that maps it. arch/x86/kvm/mmu/mmu.c
    /// kvm_mmu_max_mapping_level, kvm_tdp_mmu_map.
    mutating func mapStage2(_ i: Int, gfn: UInt64, hw: Backend.Hardware) -> PageSize {
        Self.mapStage2(&vms[i], backend: backend, gfn: gfn, hw: hw)
    }

    /// `mapStage2` on a VM reached in place (`inout`, so neither it nor its tables are copied).
    static func mapStage2(_ vm: inout VM<Backend.ArchState>, backend: Backend, gfn: UInt64, hw: Backend.Hardware) -> PageSize {
        if let leaf = vm.stage2Leaf(gfn) { return leaf.size }
        // Private: guest_memfd's folio and the backend's limit (kvm_max_private_mapping_level);
        // shared: the VMM's own mapping, modelled as transparent huge pages, so only the
        // attributes limit it (host_pfn_mapping_level). Mixed attributes: 4K (read only when
        // the other limits leave more than 4K: the minimum is the same).
        var level: PageSize = vm.attributes.isPrivate(gfn)
            ? min(vm.config.backing.folio, backend.maxMappingLevel(&vm, gfn: gfn, hw: hw), .size2M) : .size2M
        if level > .size4K && !vm.attributes.hugepageUniform(gfn) { level = .size4K }
        // A huge leaf needs the gfn and the pfn aligned alike (the memslot's base and
        // guest_memfd's offset; kvm_mmu_max_mapping_level, kvm_gmem_get_pfn's max_order).
        if ((vm.config.spa(gfn) >> pageShift) ^ gfn) & (level.pages - 1) != 0 { level = .size4K }
        let base = gfn & ~(level.pages - 1)
        do {
            try vm.stage2.installLeaf(virt: VirtAddr(base << pageShift), phys: PhysAddr(vm.config.spa(base)), size: level, attributes: [.present, .writable])
        } catch {
            preconditionFailure("stage-2 map of gfn \(hex(gfn)) at \(level): \(error)")  // aligned by construction
        }
        return level
    }

    /// Zaps the stage-2 leaves over `gfns`; a huge leaf partly inside goes whole, as the TDP
    /// MMU zaps a huge SPTE. arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_unmap_gfn_range.
    public mutating func zapStage2(_ i: Int, gfns: Range<UInt64>) { Self.zapStage2(&vms[i], gfns: gfns) }

    static func zapStage2(_ vm: inout VM<Backend.ArchState>, gfns: Range<UInt64>) {
        guard !gfns.isEmpty else { return }
        try? vm.stage2.zap(virt: VirtAddr(gfns.lowerBound << pageShift), size: UInt64(gfns.count) << pageShift)
    }

    /// Converts `gfns` as a page-state change asks: the attributes change
    /// (KVM_HC_MAP_GPA_RANGE → the VMM's KVM_SET_MEMORY_ATTRIBUTES, which zaps the range from
    /// stage 2); for shared the VMM then punches the range out of guest_memfd, which
    /// invalidates it in the backend. For private the backend prepares pages only at the next
    /// gmem fault (lazily, as Linux does).
    public mutating func convert(_ i: Int, gfns: Range<UInt64>, toPrivate: Bool, kernel: inout Kernel, hw: inout Backend.Hardware) {
        Self.convert(&vms[i], backend: &backend, gfns: gfns, toPrivate: toPrivate, kernel: &kernel, hw: &hw)
    }

    static func convert(_ vm: inout VM<Backend.ArchState>, backend: inout Backend, gfns: Range<UInt64>, toPrivate: Bool, kernel: inout Kernel, hw: inout Backend.Hardware) {
        // kvm_vm_set_mem_attributes: a range already in the wanted state changes nothing (no
        // zap); the VMM's punch-hole for shared happens either way.
        if gfns.contains(where: { vm.attributes.isPrivate($0) != toPrivate }) {
            for gfn in gfns { vm.attributes.setPrivate(gfn, toPrivate) }
            zapStage2(&vm, gfns: gfns)
        }
        if !toPrivate { backend.invalidate(&vm, gfns: gfns, kernel: &kernel, hw: &hw) }
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

        /// The outcome was a plain success (stored when the operation ends, so callers in
        /// other modules need not look into the generic outcome).
        public internal(set) var succeeded = false

        public var description: String { stopped?.description ?? outcome?.description ?? "NPF loop" }
        public var kind: OutcomeKind { stopped?.kind ?? outcome?.kind ?? .fault }
    }

    /// A guest memory access or instruction through KVM: a private/shared mismatch with the
    /// attributes exits to the VMM (KVM_EXIT_MEMORY_FAULT); a private gfn takes a gmem fault
    /// (the backend prepares it); the stage-2 leaf is installed; a fault the backend handles
    /// is resolved and the operation retried. `op` runs with the stage-2 leaf size.
    public mutating func guestStep(
        _ i: Int, gfn: UInt64, private isPrivate: Bool, kernel: inout Kernel, hw: inout Backend.Hardware,
        _ op: (inout Backend.Hardware, PageSize) -> Backend.GuestOutcome
    ) -> GuestStepResult {
        Self.guestStep(&vms[i], backend: &backend, stats: &stats, gfn: gfn, private: isPrivate, kernel: &kernel, hw: &hw, op)
    }

    /// `guestStep` on a VM reached in place.
    static func guestStep(
        _ vm: inout VM<Backend.ArchState>, backend: inout Backend, stats: inout KVMStats, gfn: UInt64, private isPrivate: Bool,
        kernel: inout Kernel, hw: inout Backend.Hardware, _ op: (inout Backend.Hardware, PageSize) -> Backend.GuestOutcome
    ) -> GuestStepResult {
        var r = GuestStepResult()
        guard vm.state == .running else { r.stopped = .error(.EINVAL); return r }
        guard isPrivate == vm.attributes.isPrivate(gfn) else {
            stats.memoryFaultExits += 1
            r.stopped = .memoryFault
            return r
        }
        if isPrivate {
            let (size, status) = backend.prepare(&vm, gfn: gfn, kernel: &kernel, hw: &hw)
            r.prepared = size
            // kvm_gmem_get_pfn reports any prepare failure as -EINVAL (sev_gmem_prepare).
            if status != .ok { r.stopped = .error(.EINVAL); return r }
        }
        for _ in 0..<3 {
            let level = mapStage2(&vm, backend: backend, gfn: gfn, hw: hw)
            let outcome = op(&hw, level)
            r.outcome = outcome
            switch backend.handleFault(&vm, gfn: gfn, private: isPrivate, outcome: outcome, hw: &hw) {
            case .done:
                r.succeeded = outcome.kind == .success
                return r
            case .loop: r.outcome = nil; return r
            case .retry(let zap):
                zapStage2(&vm, gfns: zap)
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
