import Hardware
import HostKernel
import PageTables

/// The host's accesses meet the granule protection check in the Non-secure PAS, granule by
/// granule of physical memory, whatever size the translation that led there: a host block
/// mapping next to a delegated granule does not fault (unlike SEV-SNP's RMP check of a 2M
/// mapping). A refused access is a Granule Protection Fault (Arm ARM, RME; QEMU
/// granule_protection_check).
struct CCAHostGPC: HostOwnership {
    let gpt: GPT
    static let fault = FaultKind("GPF")
    func hostCheck(pa: UInt64, write: Bool, walk: Bool, mappingSize: PageSize) -> HostCheck {
        gpt.check(pa, .nonSecure) == .ok ? .allowed : .fault(Self.fault)
    }
    func isGuestOwned(pfn: UInt64) -> Bool { gpt.check(pfn << pageShift, .nonSecure) != .ok }
    func regionHasGuestPages(pfn: UInt64) -> Bool { guestPages(inRegionOf: pfn) > 0 }
    func guestPages(inRegionOf pfn: UInt64) -> Int { gpt.refusedGranules(in2M: pfn << pageShift) }
    func faultReason(pa: UInt64, mappingSize: PageSize) -> String {
        "the granule's GPI is \(gpt.gpi(pa).gpi.map { "\($0)" } ?? "reserved"): \(gpt.check(pa, .nonSecure))"
    }
}

/// The Arm CCA platform, part 1: EL3's granule protection table and the RMM's granule
/// delegation over the arm64 host. docs/cca.md.
public struct CCAPlatform: Platform {
    public internal(set) var gpt: GPT
    public internal(set) var rmm: RMMGranules

    init(kernel: inout Kernel) {
        gpt = GPT(ram: kernel.memory.ram)
        rmm = RMMGranules(dram: kernel.memory.ram)
    }

    public var ownership: any HostOwnership { CCAHostGPC(gpt: gpt) }

    /// The granule's GPT descriptor and the RMM's state of it, for the explorer's state key.
    public func hostFootprintDigest(pa: UInt64) -> UInt64 {
        Digest.combine(gpt.descriptor(pa), rmm.state(pa) == .delegated ? 1 : 0)
    }

    public mutating func hostAccess(_ kernel: inout Kernel, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int) -> HostAccessOutcome {
        kernel.hostAccess(CCAHostGPC(gpt: gpt), pa: pa, write: write, context: context, cpu: cpu)
    }

    /// Realm guests come with the RMM's realms (issue 15, part 2).
    public static func guestSetMemory(_ m: inout Machine, guest: Int, gfns: Range<UInt64>, encrypt: Bool) -> any Outcome {
        KernelStatus.error(.EINVAL)
    }

    public func metrics(kernel: Kernel) -> [(String, UInt64)] { Self.metricList.values(MetricsView(platform: self, kernel: kernel)) }

    struct MetricsView {
        let platform: CCAPlatform
        let kernel: Kernel
    }

    static let metricList: [Metric<MetricsView>] = [
        Metric("rmm_delegated_granules", "granules", "granules the RMM holds DELEGATED (GPI REALM)") { UInt64($0.platform.rmm.delegated.count) },
        Metric("gpt_transitions", "granules", "GPT transitions EL3 made (delegate and undelegate, one granule each)") { $0.platform.gpt.stats.transitions },
        Metric("gpt_tlbi_rpalos_granule", "TLBIs", "TLBI RPALOS of one granule (a GPI written)") { $0.platform.gpt.stats.tlbiGranule },
        Metric("gpt_tlbi_rpalos_block", "TLBIs", "TLBI RPALOS of a 2M, 32M or 512M block (a shatter)") { $0.platform.gpt.stats.tlbi2M + $0.platform.gpt.stats.tlbi32M + $0.platform.gpt.stats.tlbi512M },
        Metric("gpt_popa_cleans", "granules", "data cache cleans to the point of physical aliasing (DC CIPAPA)") { $0.platform.gpt.stats.popaFlushes },
        Metric("gpt_shatters_2m", "blocks", "2M contiguous GPT blocks shattered") { $0.platform.gpt.stats.shatters[0] },
        Metric("gpt_shatters_32m", "blocks", "32M contiguous GPT blocks shattered") { $0.platform.gpt.stats.shatters[1] },
        Metric("gpt_shatters_512m", "blocks", "512M contiguous GPT blocks shattered") { $0.platform.gpt.stats.shatters[2] },
        Metric("gpt_fuses_2m", "blocks", "GPT ranges fused back to 2M contiguous descriptors") { $0.platform.gpt.stats.fuses[0] },
        Metric("gpt_fuses_32m", "blocks", "GPT ranges fused back to 32M contiguous descriptors") { $0.platform.gpt.stats.fuses[1] },
        Metric("gpt_fuses_512m", "blocks", "GPT ranges fused back to 512M contiguous descriptors") { $0.platform.gpt.stats.fuses[2] },
    ] + HostFaultEnd.ends(.arm64).map { end in
        // Every ownership fault a host access takes on this machine is a GPF.
        Metric("gpf_" + end.metricSuffix, "faults", "host accesses the granule protection check refused that ended as \(end)") { UInt64($0.kernel.faults.ownershipFaults(end)) }
    }
}

/// Arm CCA's registration (`arm64-cca`), part 1: the GPT, the check and delegation.
public enum CCAArchitecture {
    /// Any physical address: the RMM and the check answer for those outside DRAM themselves.
    static let pa = Parameter("pa", .address(), required: true, "the granule's physical address")

    static let steps: [StepDefinition] = [
        Steps.platformStep(CCAPlatform.self, "gpc-access", "an access to pa in a physical address space, as the granule protection check sees it: ok, GPF, or a GPC exception to EL3",
                           [pa, Parameter("pas", .choice(PhysicalAddressSpace.allCases.map(\.description)), default: "ns", "the access's physical address space")]) { a, _ throws(ScenarioError) in
            let address = a.number("pa"), pas = PhysicalAddressSpace.allCases.first { $0.description == a.text("pas") }!
            return { p, _ in p.gpt.check(address, pas) }
        },
        Steps.platformStep(CCAPlatform.self, "rmi_granule_delegate", "RMI_GRANULE_DELEGATE: an NS granule given to the Realm world (EL3 moves its GPI to REALM, shattering and fusing GPT blocks)", [pa]) { a, _ throws(ScenarioError) in
            let address = a.number("pa")
            return { p, _ in p.rmm.delegate(address, gpt: &p.gpt) }
        },
        Steps.platformStep(CCAPlatform.self, "rmi_granule_undelegate", "RMI_GRANULE_UNDELEGATE: a DELEGATED granule back to NS through NO_ACCESS; EL3 refusing it is an RMM panic", [pa]) { a, _ throws(ScenarioError) in
            let address = a.number("pa")
            return { p, _ in p.rmm.undelegate(address, gpt: &p.gpt) }
        },
    ]

    public static let definition = ArchitectureDefinition(
        name: "arm64-cca",
        summary: "Arm CCA on the arm64 host: the granule protection table (TF-A), the check on every access, the RMM's granule delegation (realms to come)",
        isa: .arm64,
        steps: [Arm64Architecture.tlbi] + steps,
        policySlots: [Arm64Architecture.linearMap],
        metrics: CCAPlatform.metricList.map(\.info),
        makePlatform: { kernel, _ in CCAPlatform(kernel: &kernel) },
        checkMachine: { _, memory, _ in
            // The GPT's L1 tables are held whole: 128 KiB per GiB of RAM, written at boot.
            memory.endOfRAM > 1 << 40 ? (slot: nil, message: "arm64-cca holds the GPT's L1 tables whole (128 KiB per GiB of RAM): RAM must end at or below 1 TiB, here it ends at \(hex(memory.endOfRAM))") : nil
        })
}
