import Hardware
import HostKernel
import Hypervisor
import PageTables

/// The host stage-2 as the check a host access meets after its own stage-1 walk: an owner
/// annotation (a page the host gave to the hypervisor or a guest) refuses reads and writes
/// alike; anything else lets the access through (an empty entry is mapped on the fault).
struct PKVMHostStage2Check: HostOwnership {
    let pkvm: PKVM
    static let fault = FaultKind("stage-2")
    func hostCheck(pa: UInt64, write: Bool, walk: Bool, mappingSize: PageSize) -> HostCheck {
        pkvm.hostStage2Allows(pa) ? .allowed : .fault(Self.fault)
    }
    func isGuestOwned(pfn: UInt64) -> Bool { false }  // a guest's page is never readable: the stage-2 faults first
    func regionHasGuestPages(pfn: UInt64) -> Bool { false }
    func faultReason(pa: UInt64, mappingSize: PageSize) -> String {
        let e = pkvm.hostStage2.entry(holding: VirtAddr(pa)).entry
        return e.pkvmOwner.map { "the host stage-2 entry records owner \($0)" } ?? ""
    }
}

/// The pKVM platform: EL2's ownership machinery over the arm64 host.
public struct PKVMPlatform: Platform {
    public internal(set) var pkvm: PKVM

    init(kernel: inout Kernel, guests: [GuestSpec]) {
        pkvm = PKVM(memory: kernel.memory.ram, guests: guests.map { ($0.name, $0.isProtected) })
    }

    public var ownership: any HostOwnership { PKVMHostStage2Check(pkvm: pkvm) }

    /// A host access: the host's stage-1 (TLB, walk), then the host stage-2. EL2 maps an
    /// empty stage-2 entry on the fault and the access is retried; an owner annotation is
    /// refused and the abort injected into the host, which ends it by context.
    public mutating func hostAccess(_ kernel: inout Kernel, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int) -> HostAccessOutcome {
        let outcome = kernel.hostAccess(PKVMHostStage2Check(pkvm: pkvm), pa: pa, write: write, context: context, cpu: cpu)
        switch outcome {
        case .fault(.notPresent, _), .fault(.protection, _): break  // stage 1 faulted first
        default:
            _ = pkvm.hostFault(pa)
            if write, case .ok = outcome { pkvm.hostWrote(pa) }
        }
        return outcome
    }

    /// Applies EL2's host-VMID invalidations to the host CPUs: VMALLE1IS drops every host
    /// stage-1 translation too.
    mutating func flushHost(_ kernel: inout Kernel) {
        for _ in 0..<pkvm.takePendingHostFlushes() { kernel.tlbi(.vmalle1is, va: 0, cpu: 0) }
    }

    /// pKVM guests have no kernel in the model: the scenario reader refuses set_memory_*
    /// with `guest:` on this architecture before a run.
    public static func guestSetMemory(_ m: inout Machine, guest: Int, gfns: Range<UInt64>, encrypt: Bool) -> any Outcome {
        KernelStatus.error(.EINVAL)
    }

    public func metrics(kernel: Kernel) -> [(String, UInt64)] { Self.metricList.values(MetricsView(pkvm: pkvm, kernel: kernel)) }

    /// What `metrics` reads: EL2's state and the host kernel's fault counters.
    struct MetricsView {
        let pkvm: PKVM
        let kernel: Kernel
    }

    static let metricList: [Metric<MetricsView>] = [
        Metric("host_s2_pages_4k", "leaves", "host stage-2 4K identity mappings") { UInt64($0.pkvm.hostStage2.leafCounts.size4K) },
        Metric("host_s2_blocks_2m", "leaves", "host stage-2 2M block mappings") { UInt64($0.pkvm.hostStage2.leafCounts.size2M) },
        Metric("host_s2_blocks_1g", "leaves", "host stage-2 1G block mappings") { UInt64($0.pkvm.hostStage2.leafCounts.size1G) },
        Metric("host_s2_table_pages", "pages", "page-table pages of the host stage-2") { UInt64($0.pkvm.hostStage2.tablePages) },
        Metric("host_s2_maps", "faults", "host stage-2 faults EL2 resolved by mapping (the lazy identity map)") { UInt64($0.pkvm.stats.hostStage2Maps) },
        Metric("host_s2_aborts", "faults", "host accesses the host stage-2 refused (an owner annotation): aborts injected into the host") { UInt64($0.pkvm.stats.hostStage2Aborts) },
        Metric("host_s2_block_breaks", "blocks", "host stage-2 blocks broken because a page in them changed owner") { UInt64($0.pkvm.stats.hostStage2BlockBreaks) },
        Metric("host_s2_bbm", "replacements", "live host stage-2 entries replaced by break-before-make (invalid, TLBI, new entry)") { UInt64($0.pkvm.hostStage2.breakBeforeMakes) },
        Metric("host_s2_tlbi", "invalidations", "TLB invalidations of the host VMID (each also TLBI VMALLE1IS)") { UInt64($0.pkvm.stats.hostTLBInvalidations) },
        Metric("guest_s2_tlbi", "invalidations", "TLB invalidations of guest VMIDs") { UInt64($0.pkvm.stats.guestTLBInvalidations) },
        Metric("guest_s2_table_pages", "pages", "page-table pages of the guests' stage-2 tables") { UInt64($0.pkvm.guests.reduce(0) { $0 + $1.stage2.tablePages }) },
        Metric("hyp_s1_table_pages", "pages", "page-table pages of the hypervisor's stage-1") { UInt64($0.pkvm.hypStage1.tablePages) },
        Metric("pkvm_transitions", "calls", "ownership transitions that succeeded") { UInt64($0.pkvm.stats.transitions) },
        Metric("pkvm_refusals", "calls", "ownership transitions refused with an errno") { UInt64($0.pkvm.stats.refusals) },
        Metric("pages_poisoned", "pages", "pages EL2 wiped (hyp_poison_page) before the host could see them again") { UInt64($0.pkvm.stats.pagesPoisoned) },
        Metric("hyp_warnings", "warnings", "WARN_ON()s hit at EL2") { UInt64($0.pkvm.stats.warnings) },
    ] + HostFaultEnd.ends(.arm64).map { end in
        // Every ownership fault a host access takes on this machine is the host stage-2's.
        Metric("stage2_fault_" + end.metricSuffix, "faults", "host accesses the host stage-2 refused that ended as \(end)") { UInt64($0.kernel.faults.ownershipFaults(end)) }
    }
}

/// pKVM's registration: its steps, invariant and metrics.
public enum PKVMArchitecture {
    public static let definition = ArchitectureDefinition(
        name: "arm64-pkvm",
        summary: "pKVM on the arm64 host: page ownership between host, hypervisor, guests and FF-A; the host stage-2; EL2 scrubbing",
        isa: .arm64,
        guestIDs: UInt64(PKVM.handleOffset)...UInt64(PKVM.handleOffset) + 255, guestKernels: false,
        steps: [Arm64Architecture.tlbi] + Steps.pkvm,
        policySlots: [Arm64Architecture.linearMap],
        invariants: [
            Invariant(name: "pkvm-ownership", layer: "Hypervisor/PKVM",
                      summary: "each page's host/hyp/guest states form a valid tuple; owned-elsewhere pages are 4K owner annotations in the host stage-2; no protected guest's data reaches the host unwiped") { m throws(InvariantViolation) in
                try (m.platform as? PKVMPlatform)?.pkvm.checkInvariants()
            },
            Invariant(name: "pkvm-tables", layer: "Hypervisor/PKVM",
                      summary: "the host stage-2, the hypervisor's stage-1 and each guest's stage-2: leaf counts and table pages equal a walk") { m throws(InvariantViolation) in
                guard let p = (m.platform as? PKVMPlatform)?.pkvm else { return }
                try p.hostStage2.checkInvariants()
                try p.hypStage1.checkInvariants()
                for g in p.guests { try g.stage2.checkInvariants() }
            },
        ],
        metrics: PKVMPlatform.metricList.map(\.info),
        traceTracks: [("pKVM", ["host_s2_maps", "host_s2_aborts", "host_s2_block_breaks"])],
        makePlatform: { kernel, guests in PKVMPlatform(kernel: &kernel, guests: guests) })
}
