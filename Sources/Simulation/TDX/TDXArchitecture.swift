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
    /// Metadata pages handed back unused or reclaimed.
    var metaFree: [UInt64] = []
    /// KVM's counters of destroyed TDs, summed.
    var retired = KVMTDXStats()
    /// TDs KVM marked dead (kvm_vm_dead): their vCPU ioctls are -EIO until destroyed.
    var dead: [Bool]
    /// Each guest's unaccepted memory and accept_memory's arch calls, as its kernel last
    /// left them (the metrics read them here).
    var unaccepted: [UInt64], acceptCalls: [UInt64]

    /// Where KVM's metadata pages come from in the model: 16 MiB up, past guests' memory.
    static let metaStart: UInt64 = 16 << 20

    init(kernel: inout Kernel, guests: [GuestSpec]) {
        module = TDXModule(tdmrs: kernel.memory.ram)
        tdrs = Array(repeating: nil, count: guests.count)
        kvm = Array(repeating: nil, count: guests.count)
        unaccepted = Array(repeating: 0, count: guests.count)
        dead = Array(repeating: false, count: guests.count)
        acceptCalls = Array(repeating: 0, count: guests.count)
        self.guests = guests
        erratum = kernel.config.tdxErratum
        pamtMode = kernel.config.tdxPAMT
        pageReset = kernel.config.tdxPageReset
        hugepages = kernel.config.tdxHugepages
        tdmrBytes = kernel.memory.ram.reduce(0) { $0 + UInt64($1.count) }
        maxPA = kernel.memory.endOfRAM
        ram = kernel.memory.ram
    }

    /// `host.tdx-page-reset` and `kvm.tdx-hugepages`.
    public let pageReset: TDXPageReset
    public let hugepages: Bool
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

    /// Whether guest `i` has a TD the module still holds: KVM's KVM_TDX_INIT_VM on it again
    /// is -EINVAL (tdx_td_init), so a guest has one TD at a time.
    func hasTD(_ i: Int) -> Bool { tdrs[i].flatMap { module.tdIndex($0) } != nil }

    /// TDH.MNG.CREATE succeeded for guest `i`: its TDR, and KVM's backend for it (all of
    /// its memory private, as a TD starts).
    mutating func created(_ i: Int, tdr: UInt64, _ g: GuestSpec) {
        tdrs[i] = tdr
        kvm[i] = KVMTDX(tdr: tdr, placement: g.placement, size: g.memory, hugepages: hugepages)
        module.reserveSEPT(tdr: tdr, bytes: g.memory)
    }


    /// Pages a TD released (zapped or reclaimed) go back to the host. Under
    /// `host.tdx-page-reset` always, or on an erratum CPU, each is reset first
    /// (tdx_clear_page, tdx_quirk_reset_page: MOVDIR64B with the host's KeyID): no TD-owner
    /// bit, no poison left. Without the reset the lines keep the TD-owner bit: the host's
    /// next read of them returns zeros, its next write takes the bit back.
    mutating func released(_ pages: [UInt64]) {
        guard pageReset == .always || erratum else { stats.pagesNotReset += UInt64(pages.count); return }
        for hpa in pages {
            owned.remove(hpa >> pageShift)
            poisoned.remove(hpa >> pageShift)
        }
        stats.pageResets += UInt64(pages.count)
    }

    /// A successful TDG.MEM.PAGE.ACCEPT at `level`: the page it zeroed.
    mutating func accepted(level: Int) { tdWrote(module.lastAcceptedHPA >> pageShift, pages: 1 << (9 * UInt64(level))) }

    /// Pages written whole with the TD's KeyID (MOVDIR64B: ACCEPT's zeroing, PAGE.ADD's
    /// copy): their lines carry the TD-owner bit and no poison.
    mutating func tdWrote(_ firstPFN: UInt64, pages: UInt64 = 1) {
        for pfn in firstPFN..<firstPFN + pages {
            owned.insert(pfn)
            poisoned.remove(pfn)
        }
    }

    /// Runs `body` with KVM's backend for guest `i` moved out of the platform (held there
    /// alone while it changes) and an S-EPT page cache `body` fills as it needs; then the
    /// cache's unused pages go back to the pool, the pages KVM zapped are released (reset
    /// under `host.tdx-page-reset`), and the pages PAGE.ADD filled carry the TD-owner bit.
    /// Nil when the guest has no TD backend.
    mutating func withKVM<R>(_ i: Int, _ body: (inout TDXPlatform, inout KVMTDX, inout [UInt64]) -> R) -> R? {
        guard var k = kvm[i].take() else { return nil }
        var spare: [UInt64] = []
        let r = body(&self, &k, &spare)
        giveBack(spare)
        released(k.lastZapped)
        k.lastZapped.removeAll(keepingCapacity: true)
        for pa in k.lastAdded { tdWrote(pa >> pageShift) }
        k.lastAdded.removeAll()
        kvm[i] = k
        return r
    }

    /// TDG.MEM.PAGE.ACCEPT from the TD, as the TD sees it complete: an EPT-violation exit
    /// is KVM's private fault (S-EPT levels linked from `spare`, the page AUGed), after
    /// which the TD executes the TDCALL again. True on TDX_SUCCESS.
    mutating func tdcallAccept(k: inout KVMTDX, tdr: UInt64, gpa: UInt64, level: Int, spare: inout [UInt64]) -> Bool {
        for _ in 0..<2 {
            switch module.accept(tdr: tdr, gpa: gpa, level: level) {
            case .status(let s) where s == .success:
                accepted(level: level)
                return true
            case .eptViolationExit:
                stats.acceptExits += 1
                topUp(&spare, hugepages: k.hugepages)
                guard k.privateFault(gpa: gpa, acceptLevel: level, module: &module, spare: &spare).kind == .success else { return false }
            default: return false
            }
        }
        return false
    }

    /// Metadata pages KVM took and did not use, back to the pool (without the "none left"
    /// value `allocMeta` answers when RAM runs out).
    mutating func giveBack(_ spare: [UInt64]) {
        for page in spare where page != TDXModule.maxPA { metaFree.append(page) }
    }

    /// Fills `spare` with the S-EPT pages KVM may need: three levels for a private fault,
    /// and with huge pages one per 2M leaf a MapGPA of `bytes` may split (the chunk edges).
    /// Takes KVM's flag, not KVM: a KVMTDX passed by value from `inout` is a copy.
    mutating func topUp(_ spare: inout [UInt64], forMapGPA bytes: UInt64 = 0, hugepages: Bool) {
        let splits = hugepages ? Int(min(bytes >> 21, 1 << 16)) + 2 : 0
        while spare.count < max(3, splits) { spare.append(allocMeta()) }
    }

    /// The sum of one KVM counter over the TDs, destroyed ones included.
    func kvmTotal(_ counter: KeyPath<KVMTDXStats, UInt64>) -> UInt64 {
        kvm.reduce(retired[keyPath: counter]) { $0 + ($1?.stats[keyPath: counter] ?? 0) }
    }

    /// KVM_DESTROY_VM for guest `i`'s TD (`KVMTDX.destroy`): the guest's pages and the
    /// reclaimed control and S-EPT pages released to the host (reset under
    /// `host.tdx-page-reset`), leaked pages counted; the guest can be created again.
    /// The first failing SEAMCALL, or ok.
    mutating func destroy(_ i: Int) -> any Outcome {
        guard var k = kvm[i].take() else { return KernelStatus.error(.EINVAL) }
        let t = k.destroy(module: &module)
        released(k.lastZapped)
        released(t.reclaimed)
        metaFree += t.reclaimed
        stats.leakedPages += UInt64(t.leaked.count) + t.leakedGuestPages
        retired.add(k.stats)
        tdrs[i] = nil
        dead[i] = false
        unaccepted[i] = 0
        acceptCalls[i] = 0
        return t.firstFailure ?? OK()
    }

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
        guestCalls(&m, guest: i) { g, mapGPA, accept in g.tdxSetMemory(gfns, encrypt: encrypt, mapGPA: mapGPA, accept: accept) }
    }

    /// Runs `body` on TD guest `i`'s kernel with its requests wired: MapGPA to KVM (and the
    /// VMM, which converts and zaps), ACCEPT to the module through `tdcallAccept`. KVM's
    /// backend is held here alone while it changes; pages it released are reset after.
    static func guestCalls(_ m: inout Machine, guest i: Int, _ body: (inout GuestKernel, TDXMapGPA, TDXAccept) -> any Outcome) -> any Outcome {
        m.withPlatform(TDXPlatform.self) { p, m in
            guard let tdr = p.tdrs[i], p.module.tdIndex(tdr) != nil, !p.dead[i] else { return KernelStatus.error(.EIO) }
            let r = p.withKVM(i) { p, k, spare in
                body(&m.guestKernels[i], { r12, r13 in
                    p.topUp(&spare, forMapGPA: r13, hugepages: k.hugepages)
                    let out = k.mapGPA(gpa: r12, size: r13, module: &p.module, spare: &spare)
                    return (out.r10, out.r11)
                }, { gpa, level in
                    p.tdcallAccept(k: &k, tdr: tdr, gpa: gpa, level: level, spare: &spare)
                })
            } ?? KernelStatus.error(.EIO)
            if let a = m.guestKernels[i].acceptance {
                p.unaccepted[i] = a.table.unacceptedUnits * a.table.unitSize
                p.acceptCalls[i] = a.table.archCalls
            }
            return r
        }
    }

    /// The TD built as KVM does (tdx_td_init, tdx_vcpu_init): MNG.CREATE, KEY.CONFIG, six
    /// ADDCX, MNG.INIT, a VP.CREATE per vCPU; the first failing status, or TDX_SUCCESS.
    /// KVM_TDX_INIT_VM on a guest that has a TD is -EINVAL.
    mutating func launch(_ i: Int, _ g: GuestSpec) -> any Outcome {
        if hasTD(i) { return KernelStatus.error(.EINVAL) }
        let tdr = allocMeta()
        var s = module.mngCreate(tdr: tdr)
        guard s == .success else { return s }
        created(i, tdr: tdr, g)
        s = module.mngKeyConfig(tdr: tdr)
        for _ in 0..<TDXModule.minTDCSPages where s == .success { s = module.mngAddCX(tdr: tdr, page: allocMeta()) }
        if s == .success { s = module.mngInit(tdr: tdr) }
        for _ in 0..<g.vcpus where s == .success { s = module.vpCreate(tdr: tdr, tdvpr: allocMeta()) }
        return s
    }

    /// A TD guest boots: launched if it has no TD yet, finalized if it was not; its firmware
    /// (TDVF) accepts [0, `firmwareAccepted`) rounded up to 2M as tdx_accept_memory would;
    /// the kernel takes the rest from the EFI unaccepted-memory table (`guest.accept-memory`:
    /// eager accepts it now, lazy when the allocator needs it); then it allocates `allocate`
    /// pages. On a guest already booted, only the allocation.
    static func guestBoot(_ m: inout Machine, guest i: Int, firmwareAccepted: UInt64, allocate: UInt64) -> any Outcome {
        let g = m.guests[i]
        let up: any Outcome = m.withPlatform(TDXPlatform.self) { p, _ in
            if !p.hasTD(i) {
                let r = p.launch(i, g)
                guard r.kind == .success else { return r }
            }
            guard let t = p.module.tdIndex(p.tdrs[i]!), p.module.tds[t].opState != .runnable else { return OK() }
            return p.module.mrFinalize(tdr: p.tdrs[i]!)
        }
        guard up.kind == .success else { return up }
        return guestCalls(&m, guest: i) { guest, _, accept in
            func arch(_ s: UInt64, _ e: UInt64) -> Bool { GuestKernel.tdxAcceptMemory(s, e, accept) }
            // Booted already: the kernel runs on; only the allocation is new.
            if guest.acceptance == nil {
                // The firmware and the EFI stub accept whole 2M units (the stub accepts a
                // partial unit itself: process_unaccepted_memory).
                let unit: UInt64 = 2 << 20, fw = min(firmwareAccepted, g.memory)
                guard arch(0, min(fw.addingReportingOverflow(unit - 1).overflow ? g.memory : (fw + unit - 1) & ~(unit - 1), g.memory)) else {
                    return TDXGuestPanic.acceptFailed
                }
                guard guest.bootAcceptance(firmwareAccepted: fw, arch: arch) else { return TDXGuestPanic.acceptFailed }
            }
            return guest.allocatePages(allocate, arch: arch) ? OK() as any Outcome : TDXGuestPanic.outOfMemory
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
        Metric("tdx_kvm_augs", "leaves", "private pages KVM added on faults (TDH.MEM.PAGE.AUG: 4K, or 2M under kvm.tdx-hugepages)") { $0.kvmTotal(\.augs) },
        Metric("tdx_kvm_zaps", "leaves", "private leaves (4K or 2M) KVM zapped: BLOCK, TRACK, REMOVE, WBINVD") { $0.kvmTotal(\.zaps) },
        Metric("tdx_mapgpa_exits", "exits", "MapGPA chunks (2M at most) KVM gave the VMM") { $0.kvmTotal(\.mapGPAExits) },
        Metric("tdx_pamt_kib", "KiB", "PAMT memory under host.tdx-pamt: static for all TDX memory, or dynamic's bitmap, 2M/1G levels, refcounts and page pairs") { $0.pamtBytes >> 10 },
        Metric("tdx_pamt_pairs", "regions", "2M regions with a 4K page in use: the page pairs a dynamic PAMT holds") { UInt64($0.module.pamt.regionsWith4KEntries) },
        Metric("tdx_accept_exits", "exits", "TDG.MEM.PAGE.ACCEPTs that exited to KVM with an EPT violation (the TD re-executes them)") { $0.stats.acceptExits },
        Metric("tdx_kvm_kicks", "vCPUs", "vCPUs kicked out of a TD after TDH.MEM.TRACK") { $0.kvmTotal(\.kicks) },
        Metric("tdx_kvm_zap_failures", "leaves", "zaps or splits a SEAMCALL refused (KVM_BUG_ON)") { $0.kvmTotal(\.zapFailures) },
        Metric("tdx_kvm_huge_augs", "2M pages", "private 2M pages KVM added (kvm.tdx-hugepages)") { $0.kvmTotal(\.hugeAugs) },
        Metric("tdx_kvm_demotes", "2M ranges", "2M leaves KVM split to 4K (TDH.MEM.PAGE.DEMOTE); never merged again") { $0.kvmTotal(\.demotes) },
        Metric("tdx_page_resets", "pages", "released pages the host reset before reuse (host.tdx-page-reset)") { $0.stats.pageResets },
        Metric("tdx_pages_not_reset", "pages", "released pages left as the TD left them (erratum-only on a CPU without the erratum)") { $0.stats.pagesNotReset },
        Metric("tdx_leaked_pages", "pages", "pages KVM leaked tearing TDs down (a failed reclaim or zap)") { $0.stats.leakedPages },
        Metric("guest_zeropad_fixups", "faults", "load_unaligned_zeropad reads whose MMIO #VE in the next page ex_handler_zeropad fixed up") { $0.stats.zeropadFixups },
        Metric("tdx_vm_dead", "events", "TD accesses to a private page before accepting it: KVM marks the VM dead") { $0.stats.vmDead },
        Metric("guest_unaccepted_mib", "MiB", "memory the guests have not accepted yet (the EFI unaccepted table)") { $0.unaccepted.reduce(0, +) >> 20 },
        Metric("guest_accept_calls", "calls", "arch_accept_memory calls: one per run of unaccepted 2M units accept_memory found") { $0.acceptCalls.reduce(0, +) },
    ]
}

/// What a TDX platform counted.
public struct TDXStats: Hashable, Sendable {
    public var zeroReads: UInt64 = 0
    public var ownerBitsCleared: UInt64 = 0
    public var poisonedByErratum: UInt64 = 0
    public var hostMachineChecks: UInt64 = 0
    public var tdMachineChecks: UInt64 = 0
    /// Released pages the host reset, and those it left as they were.
    public var pageResets: UInt64 = 0
    public var pagesNotReset: UInt64 = 0
    /// TDG.MEM.PAGE.ACCEPTs that exited to KVM with an EPT violation.
    public var acceptExits: UInt64 = 0
    /// load_unaligned_zeropad reads whose #VE in the next page was fixed up, and TDs KVM
    /// killed for touching a page before accepting it.
    public var zeropadFixups: UInt64 = 0
    public var vmDead: UInt64 = 0
    /// Pages KVM leaked at teardown (a failed RECLAIM, or a guest page whose zap failed).
    public var leakedPages: UInt64 = 0
}

/// A TD guest kernel's panic.
public enum TDXGuestPanic: Outcome, Hashable {
    case acceptFailed, outOfMemory
    public var kind: OutcomeKind { .fault }
    public var description: String {
        switch self {
        case .acceptFailed: "guest panic: TDX: Failed to accept memory"
        case .outOfMemory: "guest out of memory: the allocator has no memory left to accept"
        }
    }
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
