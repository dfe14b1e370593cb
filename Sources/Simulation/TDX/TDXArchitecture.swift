import GuestKernel
import Hardware
import HostKernel
import Hypervisor
import PageTables

/// How a host (or device) write reaches memory: what X86_BUG_TDX_PW_MCE distinguishes.
public enum HostWriteKind: String, CaseIterable, Sendable {
    /// A cached store, written back as a full line.
    case cached
    /// A non-temporal partial store (MOVNTI).
    case movnti
    /// An uncached (UC/WC) partial store.
    case uc
}

/// The TDX platform: the TDX module over all of RAM (the TDMRs), each guest's TD, and the
/// TD-owner bit and poison of each page a TD has written (TDX module base architecture
/// spec §16.2–16.5, as ../shared/reference/kvm-tdx-cca.md A.7 gathers it). docs/tdx.md.
public struct TDXPlatform: Platform {
    public internal(set) var module: TDXModule
    /// Each guest's TDR, once TDH.MNG.CREATE made it.
    public internal(set) var tdrs: [UInt64?]
    /// KVM's TDX backend for each TD, once it exists.
    public internal(set) var kvm: [KVMTDX?]
    let guests: [GuestSpec]
    /// X86_BUG_TDX_PW_MCE: a partial non-TD write poisons the line at once.
    public let erratum: Bool
    /// Pages whose lines carry the TD-owner bit (written with a TD's private KeyID).
    public internal(set) var owned: Set<UInt64> = []
    /// Pages with poisoned lines.
    public internal(set) var poisoned: Set<UInt64> = []
    public internal(set) var stats = TDXStats()
    /// The next metadata page (TDR, TDCS, TDVPR, S-EPT pages) to hand out.
    var metaCursor: UInt64 = TDXPlatform.metaStart
    /// Metadata pages handed back unused.
    var metaFree: [UInt64] = []

    /// Where KVM's metadata pages come from in the model: 16 MiB up, past guests' memory.
    static let metaStart: UInt64 = 16 << 20

    init(kernel: inout Kernel, guests: [GuestSpec]) {
        module = TDXModule(tdmrs: kernel.memory.ram)
        tdrs = Array(repeating: nil, count: guests.count)
        kvm = Array(repeating: nil, count: guests.count)
        self.guests = guests
        erratum = kernel.config.tdxErratum
        pamtMode = kernel.config.tdxPAMT
        tdmrBytes = kernel.memory.ram.reduce(0) { $0 + UInt64($1.count) }
        maxPA = kernel.memory.endOfRAM
        ram = kernel.memory.ram
    }

    /// The host's PAMT design, the memory its TDMRs cover, and max_pfn's address.
    public let pamtMode: TDXPAMTMode
    let tdmrBytes: UInt64, maxPA: UInt64
    /// The host's RAM, where metadata pages come from.
    let ram: [Range<UInt64>]

    /// The PAMT's memory under the machine's design: static for all TDX memory, or the
    /// dynamic form's fixed part, refcounts and a page pair per 2M region in use at 4K.
    public var pamtBytes: UInt64 {
        pamtMode == .static ? TDXPAMTSize.staticBytes(tdmr: tdmrBytes)
            : TDXPAMTSize.dynamicBytes(tdmr: tdmrBytes, maxPA: maxPA, regions: UInt64(module.pamt.regionsWith4KEntries))
    }

    /// TDH.MNG.CREATE succeeded for guest `i`: its TDR, and KVM's backend for it (all of
    /// its memory private, as a TD starts).
    mutating func created(_ i: Int, tdr: UInt64, _ g: GuestSpec) {
        tdrs[i] = tdr
        kvm[i] = KVMTDX(tdr: tdr, placement: g.placement, size: g.memory)
        module.reserveSEPT(tdr: tdr, bytes: g.memory)
    }


    /// The pages KVM's last MapGPA zapped, reset before reuse (tdx_clear_page's MOVDIR64B
    /// with the host's KeyID): no TD-owner bit, no poison.
    mutating func resetZapped(_ k: KVMTDX) {
        for hpa in k.lastZapped {
            owned.remove(hpa >> pageShift)
            poisoned.remove(hpa >> pageShift)
        }
    }

    /// The sum of one KVM counter over the TDs.
    func kvmTotal(_ counter: KeyPath<KVMTDXStats, UInt64>) -> UInt64 { kvm.reduce(0) { $0 + ($1?.stats[keyPath: counter] ?? 0) } }

    /// A free 4K page for the module's metadata (KVM's alloc_page), outside guests' memory.
    mutating func allocMeta() -> UInt64 {
        if let p = metaFree.popLast() { return p }
        while guests.contains(where: { $0.placement <= metaCursor && metaCursor < $0.placement + $0.memory })
            || !ram.contains(where: { $0.contains(metaCursor) }) {
            metaCursor += pageBytes
            if metaCursor >= maxPA { return TDXModule.maxPA }  // none left: the module refuses it (OPERAND_INVALID)
        }
        defer { metaCursor += pageBytes }
        return metaCursor
    }

    public var ownership: any HostOwnership { NoOwnership() }

    public mutating func hostAccess(_ kernel: inout Kernel, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int) -> HostAccessOutcome {
        kernel.hostAccess(NoOwnership(), pa: pa, write: write, context: context, cpu: cpu)
    }

    /// A host access to private memory never faults: a read of a TD-owned line returns
    /// zeros; a write clears the owner bit (the TD's next access consumes poison), or, a
    /// partial one on an erratum CPU, poisons the line at once; a read of a poisoned line is
    /// a machine check the kernel reports as a hardware error.
    public mutating func hostAccess(_ kernel: inout Kernel, pa: UInt64, write: Bool, context: HostAccessContext, cpu: Int, kind: HostWriteKind) -> any Outcome {
        let r = hostAccess(&kernel, pa: pa, write: write, context: context, cpu: cpu)
        guard r == .ok else { return r }
        return memoryAccess(pfn: pa >> pageShift, write: write, partial: kind != .cached)
    }

    /// What the memory does with a non-TD access to `pfn`.
    mutating func memoryAccess(pfn: UInt64, write: Bool, partial: Bool) -> TDXMemoryOutcome {
        if !write {
            if poisoned.contains(pfn) { stats.hostMachineChecks += 1; return .machineCheck }
            if owned.contains(pfn) { stats.zeroReads += 1; return .zeros }
            return .ok
        }
        if partial && erratum && owned.contains(pfn) {
            poisoned.insert(pfn)
            stats.poisonedByErratum += 1
            return .poisoned
        }
        if owned.remove(pfn) != nil { stats.ownerBitsCleared += 1 }
        return .ok
    }

    /// set_memory_* in TD `guest`'s kernel: the guest's MapGPA goes to KVM (and the VMM),
    /// its ACCEPT to the module; an ACCEPT that exits with an EPT violation is KVM's private
    /// fault (S-EPT levels, AUG), then the guest's retry.
    public static func guestSetMemory(_ m: inout Machine, guest i: Int, gfns: Range<UInt64>, encrypt: Bool) -> any Outcome {
        m.withPlatform(TDXPlatform.self) { p, m in
            guard var k = p.kvm[i], let tdr = p.tdrs[i] else { return KernelStatus.error(.EIO) }
            p.kvm[i] = nil  // held here alone while it changes
            var spare: [UInt64] = []
            let r = m.guestKernels[i].tdxSetMemory(gfns, encrypt: encrypt, mapGPA: { r12, r13 in
                let out = k.mapGPA(gpa: r12, size: r13, module: &p.module)
                return (out.r10, out.r11)
            }, accept: { gpa in
                for _ in 0..<2 {
                    switch p.module.accept(tdr: tdr, gpa: gpa, level: 0) {
                    case .status(let s) where s == .success || s.code == .pageAlreadyAccepted:
                        p.owned.insert((k.placement + gpa) >> pageShift)
                        p.poisoned.remove((k.placement + gpa) >> pageShift)  // zeroed by MOVDIR64B
                        return true
                    case .eptViolationExit:
                        while spare.count < 3 { spare.append(p.allocMeta()) }
                        guard k.privateFault(gpa: gpa, module: &p.module, allocSEPT: { spare.removeLast() }).kind == .success else { return false }
                    default: return false
                    }
                }
                return false
            })
            p.metaFree += spare
            p.resetZapped(k)
            p.kvm[i] = k
            return r
        }
    }

    public func metrics(kernel: Kernel) -> [(String, UInt64)] { Self.metricList.values(self) }

    static let metricList: [Metric<TDXPlatform>] = [
        Metric("tdx_host_zero_reads", "reads", "host reads of TD-owned lines, which return zeros") { $0.stats.zeroReads },
        Metric("tdx_owner_bits_cleared", "pages", "TD-owned pages a host or device write took back (the TD's next access consumes poison)") { $0.stats.ownerBitsCleared },
        Metric("tdx_erratum_poisons", "pages", "lines a partial write poisoned at once (X86_BUG_TDX_PW_MCE)") { $0.stats.poisonedByErratum },
        Metric("tdx_host_machine_checks", "events", "host reads that consumed poison: #MC, reported as a hardware error") { $0.stats.hostMachineChecks },
        Metric("tdx_td_machine_checks", "events", "TD accesses that consumed poison: #MC to the module, the TD marked FATAL") { $0.stats.tdMachineChecks },
        Metric("tdx_accepted_pages", "pages", "4K pages TDG.MEM.PAGE.ACCEPT zeroed") { $0.module.acceptedPages },
        Metric("tdx_pamt_entries", "entries", "PAMT entries not PT_NDA") { UInt64($0.module.pamt.count) },
        Metric("tdx_kvm_sept_adds", "pages", "S-EPT pages KVM linked on private faults (TDH.MEM.SEPT.ADD)") { $0.kvmTotal(\.septAdds) },
        Metric("tdx_kvm_augs", "pages", "private pages KVM added on faults (TDH.MEM.PAGE.AUG, 4K)") { $0.kvmTotal(\.augs) },
        Metric("tdx_kvm_zaps", "pages", "private leaves KVM zapped: BLOCK, TRACK, REMOVE, WBINVD") { $0.kvmTotal(\.zaps) },
        Metric("tdx_mapgpa_exits", "exits", "MapGPA chunks (2M at most) KVM gave the VMM") { $0.kvmTotal(\.mapGPAExits) },
        Metric("tdx_pamt_kib", "KiB", "PAMT memory under host.tdx-pamt: static for all TDX memory, or dynamic's bitmap, 2M/1G levels, refcounts and page pairs") { $0.pamtBytes >> 10 },
        Metric("tdx_pamt_pairs", "regions", "2M regions with a 4K page in use: the page pairs a dynamic PAMT holds") { UInt64($0.module.pamt.regionsWith4KEntries) },
    ]
}

/// What a TDX platform counted.
public struct TDXStats: Hashable, Sendable {
    public var zeroReads: UInt64 = 0
    public var ownerBitsCleared: UInt64 = 0
    public var poisonedByErratum: UInt64 = 0
    public var hostMachineChecks: UInt64 = 0
    public var tdMachineChecks: UInt64 = 0
}

/// What a non-TD access to a page of TDX memory met.
public enum TDXMemoryOutcome: Outcome, Hashable {
    case ok, zeros, poisoned, machineCheck
    public var kind: OutcomeKind { self == .machineCheck ? .fault : .success }
    public var description: String {
        switch self {
        case .ok: "ok"
        case .zeros: "ok (reads zeros: TD-owner bit set)"
        case .poisoned: "ok (line poisoned: partial write, X86_BUG_TDX_PW_MCE)"
        case .machineCheck: "#MC: consumed poison (Hardware Error; TDX private memory error)"
        }
    }
}
