import Hardware
import HostKernel
import Hypervisor
import PageTables

/// The whole simulated machine: hardware, host kernel, the run's seeded generator and step
/// counters. A struct of structs, so a copy is a snapshot.
public struct Machine: Sendable {
    public let architecture: Architecture
    public let cpus: Int
    public internal(set) var kernel: Kernel
    /// The SEV-SNP Reverse Map Table (x86-snp only), covering all of RAM.
    public internal(set) var rmp: RMP?
    /// The guests, in scenario order.
    public let guests: [GuestSpec]
    /// KVM with its SEV-SNP VMs (x86-snp), one per guest, in the same order.
    public internal(set) var kvm: KVM?
    public internal(set) var rng: SeededGenerator
    /// Faults counted by kind: host #PF(RMP), guest NPF, guest #VC, IOMMU RMP faults.
    public internal(set) var faults = FaultCounts()
    /// Step results that were kernel errors (-E…), workloads' operations included.
    public internal(set) var errors = 0
    /// Operations run, workloads' operations counted one by one.
    public internal(set) var operations = 0
    /// Called now and then by long workloads with (done, total), for a progress line.
    public var onProgress: (@Sendable (UInt64, UInt64) -> Void)?

    public init(architecture: Architecture, cpus: Int, kernel: Kernel, guests: [GuestSpec] = [], seed: UInt64) {
        self.architecture = architecture
        self.cpus = cpus
        self.kernel = kernel
        self.guests = guests
        self.rmp = architecture == .x86_snp ? RMP(end: kernel.memory.endOfRAM) : nil
        if architecture == .x86_snp {
            var kvm = KVM()
            for g in guests { kvm.create(g.vmConfig) }
            if kernel.config.directMapPolicy == .pooled {
                kvm.reservePool(&self.kernel, start: KVM.poolStart, pages: KVM.poolPages)
            }
            self.kvm = kvm
        }
        self.rng = SeededGenerator(seed: seed)
    }

    /// Counts the fault an SNP outcome is, if it is one, under its kind.
    mutating func countFault(_ outcome: SNPOutcome) {
        switch outcome {
        case .hostRMPFault: faults.hostRMP += 1
        case .npf: faults.npf += 1
        case .vc: faults.vc += 1
        case .iommuRMPFault: faults.iommuRMP += 1
        default: break
        }
    }

    /// Runs a host-kernel operation and counts it.
    mutating func apply(_ op: KernelOperation) throws(HostKernelError) -> String {
        let result = try op.apply(to: &kernel)
        operations += 1
        if result.hasPrefix("-E") { errors += 1 }
        return result
    }

    /// Every counter the layers keep, in a fixed order: the metrics of a run.
    public var metrics: [(String, UInt64)] {
        let c = kernel.directPagesCount
        var m: [(String, UInt64)] = [
            ("directmap_4k_kb", UInt64(c.size4K) << 2),
            ("directmap_2m_kb", UInt64(c.size2M) << 11),
            ("directmap_1g_kb", UInt64(c.size1G) << 20),
            ("pgtable_pages", UInt64(kernel.pageTable.tablePages)),
        ]
        m += kernel.stats.fields
        m += [("rmp_regions", UInt64(rmp?.chunksInUse ?? 0)), ("host_rmp_faults", UInt64(faults.hostRMP)), ("guest_npf", UInt64(faults.npf)),
              ("guest_vc", UInt64(faults.vc)), ("iommu_rmp_faults", UInt64(faults.iommuRMP))]
        let s = kernel.snp
        m += s.rmpFaultFields
        m += [("host_crashes", UInt64(s.hostCrashes)), ("not_present_faults", UInt64(s.notPresentFaults)),
              ("splits_on_fault", UInt64(s.splitsOnFault)), ("ciphertext_reads", UInt64(s.ciphertextReads)),
              ("rmp_make_private", UInt64(s.rmpMakePrivate)), ("rmp_make_shared", UInt64(s.rmpMakeShared)),
              ("leaked_pages", s.leakedPages)]
        m += (kvm?.stats ?? KVMStats()).fields
        m.append(("pool_pages_wasted", kvm?.poolPagesWasted ?? 0))
        m += [("operations", UInt64(operations)), ("errors", UInt64(errors))]
        return m
    }

    /// The names `metrics` reports, in order.
    public static let metricNames: [String] =
        ["directmap_4k_kb", "directmap_2m_kb", "directmap_1g_kb", "pgtable_pages"] + CPAStats().fields.map(\.0)
        + ["rmp_regions", "host_rmp_faults", "guest_npf", "guest_vc", "iommu_rmp_faults"] + SNPHostStats().rmpFaultFields.map(\.0)
        + ["host_crashes", "not_present_faults", "splits_on_fault", "ciphertext_reads", "rmp_make_private", "rmp_make_shared", "leaked_pages"]
        + KVMStats().fields.map(\.0) + ["pool_pages_wasted", "operations", "errors"]

    /// Checks every registered invariant, in registry order.
    public func checkInvariants() throws(InvariantViolation) {
        for invariant in Invariants.all { try invariant.check(self) }
    }
}

/// A named invariant a layer registers; checked after every step in `--check` runs and tests.
public struct Invariant: Sendable {
    public let name: String
    public let layer: String
    public let summary: String
    let check: @Sendable (Machine) throws(InvariantViolation) -> Void
}

/// The registry of invariants, one entry per layer's checker.
public enum Invariants {
    public static let all: [Invariant] = [
        Invariant(name: "page-table", layer: "PageTables",
                  summary: "leaf counts and table pages equal a walk; every table reached once; free tables empty") { m throws(InvariantViolation) in
            try m.kernel.pageTable.checkInvariants()
        },
        Invariant(name: "rmp", layer: "Hardware/SNP",
                  summary: "per-2M assigned count equals the 4K entries; a 2M page's 512 entries agree; VMPL1-3 never exceed VMPL0") { m throws(InvariantViolation) in
            try m.rmp?.checkInvariants()
        },
        Invariant(name: "direct-pages-count", layer: "HostKernel",
                  summary: "direct_pages_count equals the direct-map walk; vmalloc aliases share the C-bit") { m throws(InvariantViolation) in
            try m.kernel.checkDirectMapInvariants()
        },
    ]
}

/// Faults the hardware raised during a run, by kind.
public struct FaultCounts: Hashable, Sendable {
    public var hostRMP = 0
    public var npf = 0
    public var vc = 0
    public var iommuRMP = 0
}
