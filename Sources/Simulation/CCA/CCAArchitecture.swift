import Hardware
import HostKernel
import Hypervisor
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

/// The Arm CCA platform: EL3's granule protection table, the RMM (granules, realms, RECs,
/// RTTs) and each guest's realm as the host created it, over the arm64 host. docs/cca.md.
public struct CCAPlatform: Platform {
    /// EL3's GPT and the RMM, with the host pages KVM may take.
    public internal(set) var firmware: RealmFirmware
    public internal(set) var gpt: GPT {
        _read { yield firmware.gpt }
        _modify { yield &firmware.gpt }
    }
    public internal(set) var rmm: RMM {
        _read { yield firmware.rmm }
        _modify { yield &firmware.rmm }
    }
    /// KVM's realm backend for each guest, once KVM created its realm.
    public internal(set) var kvm: [KVMRealm?]
    /// KVM's counters of destroyed realms, summed.
    var retired = KVMRealmStats()
    /// What the realm guests' kernels counted.
    public internal(set) var guestStats = RealmGuestStats()
    /// Whether each realm's kernel has booted (set its memory RIPAS RAM).
    var booted: [Bool]
    /// User PTEs the realms' drivers wrote with remap_pfn_range, by user page: the page's
    /// GPA and whether the pgprot was decrypted (the NS-shared bit).
    var userPTEs: [[UInt64: (gpa: UInt64, shared: Bool)]]
    /// Each guest's realm: its RD once RMI_REALM_CREATE made it, and its RECs by index.
    public internal(set) var rd: [UInt64?]
    public internal(set) var recs: [[UInt64]]
    let guests: [GuestSpec]
    /// Where the host's granules for the RMM (RDs, RECs, RTTs) come from: RAM past the
    /// kernel's first 64 MiB, skipping guests' memory; freed ones are reused.
    var metaCursor: UInt64
    var metaFree: [UInt64] = []
    let ram: [Range<UInt64>]
    /// `kvm.cca-rtt-fold`.
    let foldRTTs: Bool

    init(kernel: inout Kernel, guests: [GuestSpec]) {
        foldRTTs = kernel.config.ccaFoldRTTs
        firmware = RealmFirmware(rmm: RMM(dram: kernel.memory.ram), gpt: GPT(ram: kernel.memory.ram), pool: [])
        kvm = Array(repeating: nil, count: guests.count)
        booted = Array(repeating: false, count: guests.count)
        userPTEs = Array(repeating: [:], count: guests.count)
        rd = Array(repeating: nil, count: guests.count)
        recs = Array(repeating: [], count: guests.count)
        self.guests = guests
        ram = kernel.memory.ram
        metaCursor = (kernel.memory.ram.first?.lowerBound ?? 0) + (64 << 20)
    }

    /// A free granule of host RAM, `align`-aligned, outside guests' memory (alloc_page);
    /// nil when RAM has none left.
    mutating func allocGranules(_ n: Int = 1, align: UInt64 = pageBytes) -> UInt64? {
        if n == 1, align == pageBytes, let p = metaFree.popLast() { return p }
        while true {
            metaCursor = (metaCursor + align - 1) & ~(align - 1)
            let range = metaCursor..<metaCursor + UInt64(n) * pageBytes
            guard metaCursor < (ram.last?.upperBound ?? 0) else { return nil }
            if let g = guests.first(where: { $0.placement < range.upperBound && range.lowerBound < $0.placement + $0.memory }) {
                metaCursor = g.placement + g.memory
            } else if !ram.contains(where: { $0.lowerBound <= range.lowerBound && range.upperBound <= $0.upperBound }) {
                guard let next = ram.first(where: { $0.lowerBound > metaCursor }) else { return nil }
                metaCursor = next.lowerBound
            } else {
                metaCursor = range.upperBound
                return range.lowerBound
            }
        }
    }

    /// `n` granules (aligned to their size) delegated as KVM delegates a realm's RD, RTTs
    /// and RECs before the command that takes them (alloc_delegated_granule); nil if RAM
    /// runs out or a delegation fails.
    mutating func delegatedGranules(_ n: Int = 1) -> UInt64? {
        guard let base = allocGranules(n, align: UInt64(n) * pageBytes) else { return nil }
        for k in 0..<UInt64(n) where firmware.granuleDelegate(base + k * pageBytes) != .success { return nil }
        return base
    }

    /// Granules back from the RMM (DELEGATED): undelegated and freed, or leaked when the
    /// undelegate fails (free_delegated_granule). The number leaked.
    mutating func undelegateAndFree(_ granules: [UInt64]) -> Int {
        var leaked = 0
        for g in granules {
            if firmware.granuleUndelegate(g).kind == .success { metaFree.append(g) } else { leaked += 1 }
        }
        return leaked
    }

    public var ownership: any HostOwnership { CCAHostGPC(gpt: gpt) }

    /// The granule's GPT descriptor and the RMM's state of it, for the explorer's state key.
    public func hostFootprintDigest(pa: UInt64) -> UInt64 {
        Digest.combine(gpt.descriptor(pa), UInt64(rmm.state(pa)?.rawValue ?? 0xff))
    }

    public mutating func hostAccess(_ kernel: inout Kernel, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int) -> HostAccessOutcome {
        kernel.hostAccess(CCAHostGPC(gpt: gpt), pa: pa, write: write, context: context, cpu: cpu)
    }

    /// set_memory_* in realm guest `guest`'s kernel, on the pages' linear-map address.
    public static func guestSetMemory(_ m: inout Machine, guest: Int, gfns: Range<UInt64>, encrypt: Bool) -> any Outcome {
        realmSetMemory(&m, guest: guest, va: m.guestKernels[guest].va(gfn: gfns.lowerBound), numpages: Int(gfns.count), encrypt: encrypt)
    }

    public static func guestSetMemory(_ m: inout Machine, guest: Int, va: UInt64, numpages: Int, encrypt: Bool) -> (any Outcome)? {
        realmSetMemory(&m, guest: guest, va: va, numpages: numpages, encrypt: encrypt)
    }

    public func metrics(kernel: Kernel) -> [(String, UInt64)] { Self.metricList.values(MetricsView(platform: self, kernel: kernel)) }

    struct MetricsView {
        let platform: CCAPlatform
        let kernel: Kernel
    }

    static let metricList: [Metric<MetricsView>] = [
        Metric("rmm_delegated_granules", "granules", "granules the RMM holds (GPI REALM): DELEGATED, RD, REC, REC_AUX, DATA, RTT") { UInt64($0.platform.rmm.granules.count) },
        Metric("rmm_realms", "realms", "realms the RMM holds (RDs)") { UInt64($0.platform.rmm.realmList.count) },
        Metric("rmm_recs", "RECs", "RECs the RMM holds") { UInt64($0.platform.rmm.recs.count) },
        Metric("rmm_rtt_granules", "granules", "granules in use as RTTs, start tables included") { UInt64($0.platform.rmm.count(.rtt)) },
        Metric("rmm_data_granules", "granules", "granules in use as realm DATA") { UInt64($0.platform.rmm.count(.data)) },
        Metric("rmm_rtt_creates", "RTTs", "RMI_RTT_CREATE calls that made an RTT") { $0.platform.rmm.stats.rttCreates },
        Metric("rmm_rtt_destroys", "RTTs", "RMI_RTT_DESTROY calls that removed an RTT") { $0.platform.rmm.stats.rttDestroys },
        Metric("rmm_rtt_folds", "RTTs", "RMI_RTT_FOLD calls that folded an RTT into its parent entry") { $0.platform.rmm.stats.rttFolds },
        Metric("rmm_data_creates", "granules", "RMI_DATA_CREATE and DATA_CREATE_UNKNOWN calls that mapped a granule") { $0.platform.rmm.stats.dataCreates },
        Metric("rmm_data_destroys", "granules", "RMI_DATA_DESTROY calls that unmapped a granule") { $0.platform.rmm.stats.dataDestroys },
        Metric("rmm_ripas_changes", "calls", "RMI_RTT_SET_RIPAS calls that made progress") { $0.platform.rmm.stats.ripasChanges },
        Metric("rmm_rec_entries", "entries", "RMI_REC_ENTER calls that ran a REC") { $0.platform.rmm.stats.recEntries },
        Metric("rmm_tlbis", "TLBIs", "stage-2 TLB invalidations the RMM issued (break-before-make, unmaps, RAM to EMPTY)") { $0.platform.rmm.stats.tlbis },
        Metric("rmm_panics", "events", "RMM panics: an undelegate EL3 refused inside the RMM (the Realm world is gone)") { $0.platform.firmware.panics },
        Metric("cca_kvm_delegations", "granules", "granules KVM delegated (RDs, RTTs, RECs, guest pages)") { $0.platform.kvmTotal(\.delegations) },
        Metric("cca_kvm_undelegations", "granules", "granules KVM undelegated and freed") { $0.platform.kvmTotal(\.undelegations) },
        Metric("cca_kvm_private_faults", "faults", "realm accesses to protected IPAs KVM mapped (DELEGATE, DATA_CREATE_UNKNOWN)") { $0.platform.kvmTotal(\.privateFaults) },
        Metric("cca_kvm_shared_faults", "faults", "realm accesses to unprotected IPAs KVM mapped (RTT_MAP_UNPROTECTED)") { $0.platform.kvmTotal(\.sharedFaults) },
        Metric("cca_kvm_ripas_exits", "exits", "RIPAS change exits (RSI_IPA_STATE_SET) KVM and the VMM handled") { $0.platform.kvmTotal(\.ripasExits) },
        Metric("cca_kvm_memory_fault_exits", "exits", "KVM_EXIT_MEMORY_FAULTs to the VMM (RIPAS changes, accesses whose attribute disagreed)") { $0.platform.kvmTotal(\.memoryFaultExits) },
        Metric("cca_kvm_rtt_creates", "RTTs", "RTTs KVM created on RMI_ERROR_RTT") { $0.platform.kvmTotal(\.rttCreates) },
        Metric("cca_kvm_rtt_folds", "RTTs", "RTTs KVM folded after unmapping (and freed)") { $0.platform.kvmTotal(\.rttFolds) },
        Metric("cca_kvm_leaked_granules", "granules", "granules KVM could not get back (an undelegate or a destroy refused): kept from reuse") { $0.platform.kvmTotal(\.leaked) },
        Metric("guest_zeropad_fixups", "faults", "load_unaligned_zeropad reads whose translation fault in the next page ex_handler_load_unaligned_zeropad fixed up") { $0.platform.guestStats.zeropadFixups },
        Metric("guest_kernel_seas", "events", "synchronous external aborts in realm kernels (do_sea: no fixup, the kernel dies)") { $0.platform.guestStats.kernelSEAs },
        Metric("guest_leaked_pages", "pages", "pages a realm's set_memory_* gave up on (\"pages will be leaked\")") { $0.platform.guestStats.leakedPages },
        Metric("guest_rsi_calls", "calls", "RSI_IPA_STATE_SET calls the realms' kernels made") { $0.platform.guestStats.rsiCalls },
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
            return { p, _ in p.firmware.granuleDelegate(address) }
        },
        Steps.platformStep(CCAPlatform.self, "rmi_granule_undelegate", "RMI_GRANULE_UNDELEGATE: a DELEGATED granule back to NS through NO_ACCESS; EL3 refusing it is an RMM panic", [pa]) { a, _ throws(ScenarioError) in
            let address = a.number("pa")
            return { p, _ in p.firmware.granuleUndelegate(address) }
        },
    ]

    public static let definition = ArchitectureDefinition(
        name: "arm64-cca",
        summary: "Arm CCA on the arm64 host: the granule protection table (TF-A), the check on every access, the RMM (TF-RMM 0.6.0, RMM 1.0): granules, realms, RECs, RTTs, RMI and RSI",
        isa: .arm64,
        guestIDs: 0...255,
        steps: [Arm64Architecture.tlbi] + steps + CCAPlatform.realmSteps + CCAPlatform.kvmSteps + CCAPlatform.guestSteps,
        workloads: Workloads.cca,
        policySlots: [
            Arm64Architecture.linearMap,
            PolicySlot(section: .kvm, key: "cca-rtt-fold", summary: "whether KVM folds a realm's RTTs once unmapping leaves them uniform",
                       policies: [("after-unmap", "the KVM CCA host series: RTT_FOLD over every unmapped range, folded RTTs undelegated and freed"),
                                  ("never", "RTTs stay as faults made them until the realm is destroyed")],
                       defaultPolicy: "after-unmap", apply: { name, t in t.host.ccaFoldRTTs = name == "after-unmap" }),
            PolicySlot(section: .guest, key: "realm-linear-map", summary: "how a realm guest's kernel maps its linear map",
                       policies: [("pte", "4K pages: rodata=full, the default (the realm is detected only after map_mem, so this is what makes it page-granular)"),
                                  ("bbml2-split", "Linux 6.18 on BBML2_NOABORT CPUs: blocks, split on demand (split_kernel_leaf_mapping)"),
                                  ("blocks", "rodata=off without BBML2: blocks, and a flip inside one fails (-EINVAL)")],
                       defaultPolicy: "pte", apply: { name, t in t.guest.linearMap = Arm64LinearMap(rawValue: name)! }),
            PolicySlot(section: .guest, key: "cca-enc-order", summary: "the order a realm's set_memory_* changes the PTE and the RIPAS in",
                       policies: RealmEncOrder.allCases.map { ($0.rawValue, $0.summary) }, defaultPolicy: RealmEncOrder.invalidateFirst.rawValue,
                       apply: { name, t in t.guest.realmEncOrder = RealmEncOrder(rawValue: name)! }),
            PolicySlot(section: .guest, key: "cca-vmalloc", summary: "what a realm's set_memory_* does with a vmalloc address",
                       policies: RealmVmallocPolicy.allCases.map { ($0.rawValue, $0.summary) }, defaultPolicy: RealmVmallocPolicy.reject.rawValue,
                       apply: { name, t in t.guest.realmVmalloc = RealmVmallocPolicy(rawValue: name)! }),
            PolicySlot(section: .guest, key: "dcache-word-access", summary: "CONFIG_DCACHE_WORD_ACCESS in the realm's kernel (arm64 always selects it)",
                       policies: [("true", "word-at-a-time name hashing with load_unaligned_zeropad (arm64's Kconfig)"),
                                  ("false", "a kernel without it: byte-at-a-time, no load_unaligned_zeropad")],
                       defaultPolicy: "true", apply: { name, t in t.guest.dcacheWordAccess = name == "true" }),
        ],
        metrics: CCAPlatform.metricList.map(\.info),
        threadRoutines: CCAPlatform.guestThreadRoutines,
        makePlatform: { kernel, guests in CCAPlatform(kernel: &kernel, guests: guests) },
        checkMachine: { _, memory, _ in
            // The GPT's L1 tables are held whole: 128 KiB per GiB of RAM, written at boot.
            memory.endOfRAM > 1 << 40 ? (slot: nil, message: "arm64-cca holds the GPT's L1 tables whole (128 KiB per GiB of RAM): RAM must end at or below 1 TiB, here it ends at \(hex(memory.endOfRAM))") : nil
        },
        // A realm's kernel is arm64's; its linear map's NS-shared bit is the top IPA bit.
        guestKernelConfig: { $0.isa = .arm64; $0.ccSharedBit = true })
}
