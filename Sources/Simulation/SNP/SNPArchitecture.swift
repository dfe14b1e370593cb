import GuestKernel
import Hardware
import HostKernel
import Hypervisor
import PageTables

/// The SEV-SNP platform: the RMP over all of RAM, KVM with its SEV-SNP backend, and the
/// faults the hardware raised.
public struct SNPPlatform: Platform {
    public internal(set) var rmp: RMP
    public internal(set) var kvm: KVM<SNPBackend>
    public internal(set) var faults = SNPFaultCounts()

    init(kernel: inout Kernel, guests: [GuestSpec]) {
        rmp = RMP(end: kernel.memory.endOfRAM)
        kvm = KVM(backend: SNPBackend())
        for g in guests { kvm.create(g.vmConfig) }
        if kernel.config.directMapPolicy == .pooled {
            kvm.backend.reservePool(&kernel, start: SNPBackend.poolStart, pages: SNPBackend.poolPages)
        }
    }

    public var ownership: any HostOwnership { rmp }

    /// The RMP's 2M chunks in use and every VM's stage-2 table pages.
    public var checkedTablePages: Int { rmp.chunksInUse + kvm.vms.reduce(0) { $0 + $1.stage2.tablePages } }

    public mutating func hostAccess(_ kernel: inout Kernel, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int) -> HostAccessOutcome {
        kernel.hostAccess(rmp, pa: pa, write: write, context: context, cpu: cpu)
    }

    /// Counts the fault an SNP outcome is, if it is one, under its kind.
    mutating func count(_ outcome: SNPOutcome) {
        switch outcome {
        case .npf: faults.npf += 1
        case .vc: faults.vc += 1
        case .iommuRMPFault: faults.iommuRMP += 1
        default: break
        }
    }

    public func metrics(kernel: Kernel) -> [(String, UInt64)] {
        Self.metricList.values(SNPMetricsView(platform: self, kernel: kernel))
    }

    /// What `metrics` reads: the platform and the host kernel's ownership counters.
    struct SNPMetricsView {
        let platform: SNPPlatform
        let kernel: Kernel
    }

    static let metricList: [Metric<SNPMetricsView>] = [
        Metric("rmp_regions", "2M regions", "2M regions whose RMP entries the model holds (any entry not default)") { UInt64($0.platform.rmp.chunksInUse) },
        // Every ownership fault the host takes on this machine is the RMP's.
        Metric("host_rmp_faults", "faults", "host #PF with the RMP bit") { UInt64($0.kernel.faults.ownershipFaults.reduce(0, +)) },
        Metric("guest_npf", "faults", "nested page faults the RMP check raised for a guest") { UInt64($0.platform.faults.npf) },
        Metric("guest_vc", "faults", "#VC(0x404): a guest touched a page it had not validated") { UInt64($0.platform.faults.vc) },
        Metric("guest_zeropad_fixups", "faults", "load_unaligned_zeropad reads whose #PF in the next page ex_handler_zeropad fixed up") { UInt64($0.platform.faults.zeropadFixups) },
        Metric("guest_oops", "faults", "guest kernel faults with no fixup (a PVALIDATE of a not-present address, a zeropad fault on its own page)") { UInt64($0.platform.faults.guestOops) },
        Metric("iommu_rmp_faults", "events", "IOMMU RMP_PAGE_FAULT events (device writes to assigned pages)") { UInt64($0.platform.faults.iommuRMP) },
    ] + HostFaultEnd.ends(.x86_64).map { end in
        Metric("rmp_fault_" + end.metricSuffix, "faults", "host RMP faults that ended as \(end)") { UInt64($0.kernel.faults.ownershipFaults(end)) }
    } + [
        Metric("rmp_make_private", "calls", "successful rmp_make_private (pages or 2M pages given to a guest or the firmware)") { UInt64($0.kernel.faults.pagesGiven) },
        Metric("rmp_make_shared", "calls", "successful rmp_make_shared (given back to the hypervisor)") { UInt64($0.kernel.faults.pagesReturned) },
        Metric("leaked_pages", "pages", "pages snp_leak_pages leaked (a failed reclaim)") { $0.kernel.faults.leakedPages },
    ] + SNPKVMStats.metrics.map { $0.pulled { $0.platform.kvm.backend.stats } }
      + KVMStats.metrics.map { $0.pulled { $0.platform.kvm.stats } } + [
        Metric("stage2_pgtable_pages", "pages", "page-table pages of the VMs' stage-2 (NPT) tables") { UInt64($0.platform.kvm.stage2TablePages) },
        Metric("pool_pages_wasted", "pages", "pool pages set aside and never used (pooled policy)") { $0.platform.kvm.backend.poolPagesWasted },
    ]
}

/// Faults the SEV-SNP hardware raised during a run, by kind.
public struct SNPFaultCounts: Hashable, Sendable {
    public var npf = 0
    public var vc = 0
    public var iommuRMP = 0
    /// load_unaligned_zeropad reads whose #PF ex_handler_zeropad fixed up.
    public var zeropadFixups = 0
    /// Guest kernel faults with no fixup.
    public var guestOops = 0
}

/// SEV-SNP's registration: its steps, workloads, policy slot, invariants and metrics.
public enum SNPArchitecture {
    public static let definition = ArchitectureDefinition(
        name: "x86-snp",
        summary: "AMD SEV-SNP host: the RMP and its instructions and access checks, KVM's SEV-SNP backend, SNP guests, on the x86-64 host",
        guestIDs: 1...UInt64(RMP.maxASID),
        steps: Steps.snp,
        workloads: Workloads.snp,
        policySlots: [
            PolicySlot(
                section: .host, key: "directmap-policy",
                summary: "what the host does to its direct map as pages enter and leave the RMP (SEV-SNP)",
                dynamicPolicies: { DirectMapPolicyKind.allCases.map { ($0.rawValue, $0.summary) } },
                defaultPolicy: DirectMapPolicyKind.splitOnAssign.rawValue,
                apply: { name, t in t.host.directMapPolicy = DirectMapPolicyKind(rawValue: name)! }),
        ],
        invariants: [
            // Full walks only, as direct-pages-count: between them on a large machine
            // (`Machine.automaticFullCheckInterval`) a step checks nothing here.
            Invariant(name: "rmp", layer: "Hardware/SNP",
                      summary: "per-2M assigned count equals the 4K entries; a 2M page's 512 entries agree; VMPL1-3 never exceed VMPL0",
                      perStep: { _ throws(InvariantViolation) in }) { m throws(InvariantViolation) in
                try (m.platform as? SNPPlatform)?.rmp.checkInvariants()
            },
            Invariant(name: "stage-2", layer: "Hypervisor",
                      summary: "each VM's stage-2 table: leaf counts and table pages equal a walk",
                      perStep: { _ throws(InvariantViolation) in }) { m throws(InvariantViolation) in
                for vm in (m.platform as? SNPPlatform)?.kvm.vms ?? [] { try vm.stage2.checkInvariants() }
            },
        ],
        metrics: SNPPlatform.metricList.map(\.info),
        traceTracks: [("SEV-SNP", ["rmp_regions", "psmash", "host_rmp_faults"])],
        threadRoutines: SNPPlatform.threadRoutines + HostThreadRoutines.x86,
        makePlatform: { kernel, guests in SNPPlatform(kernel: &kernel, guests: guests) },
        checkMachine: { config, memory, guests in checkRMPReach(memory) ?? checkPool(config, memory, guests) })

    /// The RMP covers physical addresses below 2^52 (RMP.maxEnd, x86's MAXPHYADDR limit).
    static func checkRMPReach(_ memory: PhysicalMemory) -> (slot: String?, message: String)? {
        guard memory.endOfRAM > RMP.maxEnd else { return nil }
        return ("machine.memory", "RAM ends at \(hex(memory.endOfRAM)), past the 52-bit physical addresses (4 PiB) an SEV-SNP RMP covers here")
    }

    /// The `pooled` policy's pool must be RAM that no guest occupies: it is set aside at
    /// boot as 512 pages at 16M (SNPBackend.poolStart).
    static func checkPool(_ config: KernelConfig, _ memory: PhysicalMemory, _ guests: [GuestSpec]) -> (slot: String?, message: String)? {
        guard config.directMapPolicy == .pooled else { return nil }
        let pool = SNPBackend.poolStart..<SNPBackend.poolStart + UInt64(SNPBackend.poolPages) * pageBytes
        let where_ = "[\(hex(pool.lowerBound))-\(hex(pool.upperBound)))"
        if !memory.isRAM(pool) {
            return ("host.directmap-policy", "the pooled policy sets aside its \(SNPBackend.poolPages)-page pool at \(where_), which is not all RAM here; RAM is "
                + memory.ram.map { "[\(hex($0.lowerBound))-\(hex($0.upperBound)))" }.joined(separator: " "))
        }
        if let g = guests.first(where: { $0.placement < pool.upperBound && pool.lowerBound < $0.placement + $0.memory }) {
            return ("host.directmap-policy", "guest \(g.name) at [\(hex(g.placement))-\(hex(g.placement + g.memory))) overlaps the pooled policy's pool at \(where_)")
        }
        return nil
    }
}
