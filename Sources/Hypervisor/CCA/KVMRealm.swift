import Hardware
import HostKernel
import PageTables

/// KVM's realm state (the KVM CCA host series, enum realm_state).
public enum KVMRealmState: UInt8, Sendable, Hashable {
    case none, new, active, dying, dead
}

/// What KVM's realm backend counted.
public struct KVMRealmStats: Hashable, Sendable {
    public var delegations: UInt64 = 0, undelegations: UInt64 = 0
    public var privateFaults: UInt64 = 0, sharedFaults: UInt64 = 0
    public var ripasExits: UInt64 = 0, memoryFaultExits: UInt64 = 0
    public var rttCreates: UInt64 = 0, rttFolds: UInt64 = 0
    /// Granules KVM could not undelegate (WARN, the page kept from reuse).
    public var leaked: UInt64 = 0
    public init() {}

    public mutating func add(_ o: KVMRealmStats) {
        for c in [\KVMRealmStats.delegations, \.undelegations, \.privateFaults, \.sharedFaults, \.ripasExits, \.memoryFaultExits,
                  \.rttCreates, \.rttFolds, \.leaked] {
            self[keyPath: c] += o[keyPath: c]
        }
    }
}

/// The RMM and EL3 as KVM's realm code calls them: the RMM's commands and the GPT the
/// granule commands go through, with the host pages KVM may take (alloc_page) and those it
/// gave back.
public struct RealmFirmware: Sendable {
    public var rmm: RMM
    public var gpt: GPT
    /// Host pages for RTTs, RECs and the RD (KVM's memcache), taken from the end; the
    /// caller fills it before each call with what the call may need.
    public var pool: [UInt64]
    /// Pages KVM took from `pool` and gave back (undelegated): the caller returns them to
    /// the host's allocator.
    public var freed: [UInt64] = []
    public init(rmm: RMM, gpt: GPT, pool: [UInt64]) {
        self.rmm = rmm
        self.gpt = gpt
        self.pool = pool
    }

    /// RMI_GRANULE_DELEGATE through EL3's GPT.
    public mutating func granuleDelegate(_ pa: UInt64) -> RMIStatus { rmm.delegate(pa, gpt: &gpt) }
    /// RMI_GRANULE_UNDELEGATE through EL3's GPT (an RMM panic counted).
    public mutating func granuleUndelegate(_ pa: UInt64) -> any Outcome {
        let r = rmm.undelegate(pa, gpt: &gpt)
        if r is RMMPanic { panics += 1 }
        return r
    }

    mutating func delegate(_ pa: UInt64) -> Bool { granuleDelegate(pa) == .success }

    /// A pool page delegated (alloc_delegated_granule), or nil.
    mutating func delegatedGranule() -> UInt64? {
        guard let p = pool.popLast() else { return nil }
        if delegate(p) { return p }
        pool.append(p)
        return nil
    }

    /// RMM panics: an undelegate EL3 refused inside the RMM (the Realm world is gone; not a
    /// host leak).
    public internal(set) var panics: UInt64 = 0

    /// free_delegated_granule: RMI_GRANULE_UNDELEGATE, and the page freed (back to the pool
    /// when it came from there). Nil on success; otherwise the RMM's answer: an error
    /// status (the host keeps the page from reuse: a leak) or the RMM's panic.
    mutating func free(_ pa: UInt64, pool own: Bool = true) -> (any Outcome)? {
        let r = granuleUndelegate(pa)
        guard r.kind == .success else { return r }
        if own { freed.append(pa) }
        return nil
    }
}

/// An error of KVM's realm code, as the VMM sees it: an errno from an ioctl, or
/// KVM_EXIT_MEMORY_FAULT.
public enum KVMRealmOutcome: Outcome, Hashable {
    case ok
    case errno(Errno)
    /// KVM_EXIT_MEMORY_FAULT: the access's attribute and the memory's disagree; the VMM
    /// converts and runs the vCPU again.
    case memoryFault(gpa: UInt64, size: UInt64, private: Bool)
    /// The realm's access took a synchronous external abort the RMM injected (an IPA whose
    /// RIPAS is EMPTY, or past the IPA space): no exit to the host.
    case sea(ipa: UInt64)
    /// The realm's access cannot complete: its IPA is RIPAS DESTROYED, which nothing the
    /// host maps makes accessible; every retry exits again.
    case destroyed(ipa: UInt64)

    public var kind: OutcomeKind {
        switch self {
        case .ok: .success
        case .errno: .error
        case .memoryFault, .sea, .destroyed: .fault
        }
    }
    public var description: String {
        switch self {
        case .ok: "ok"
        case .errno(let e): "-\(e)"
        case .memoryFault(let gpa, let size, let p): "KVM_EXIT_MEMORY_FAULT (gpa \(hex(gpa)), size \(hex(size)), \(p ? "private" : "shared"))"
        case .sea(let ipa): "synchronous external abort injected into the realm (IPA \(hex(ipa)) RIPAS EMPTY)"
        case .destroyed(let ipa): "the realm cannot access IPA \(hex(ipa)): RIPAS DESTROYED (every access exits to the host again)"
        }
    }
}

/// KVM's realm backend for one realm, as the KVM CCA host series (v12, RMM 1.0;
/// arch/arm64/kvm/rmi.c, rmi-exit.c) does it: creating the realm (its RD and start tables
/// delegated), populating its image (DATA_CREATE), activating it on the first run (a REC
/// per vCPU, INIT_RIPAS over its memory, REALM_ACTIVATE), faults on protected IPAs
/// (DELEGATE, DATA_CREATE_UNKNOWN) and on unprotected ones (RTT_MAP_UNPROTECTED, level 3),
/// RTTs created on RMI_ERROR_RTT, RIPAS changes (the exit to the VMM, which converts the
/// memory attributes; RTT_SET_RIPAS on the next run), unmapping with RTT_FOLD after it, and
/// teardown. Stage 2 is always 4K ("Always use 4k pages for realms").
public struct KVMRealm: Sendable {
    /// The realm's memory in host memory: [placement, placement + size) backs IPA 0 up
    /// (guest_memfd); the unprotected alias is backed by the same pages (the VMM's mapping
    /// of them, shared in place).
    public let placement: UInt64, size: UInt64
    public let ipaBits: Int
    public let vmid: UInt64
    public let vcpus: Int
    /// `kvm.cca-rtt-fold`: fold RTTs after each unmap (the series), or leave them.
    public var foldRTTs = true
    public internal(set) var state = KVMRealmState.none
    public internal(set) var rd: UInt64 = 0
    public internal(set) var roots: [UInt64] = []
    /// Each vCPU's REC and its auxiliary granules.
    public internal(set) var recs: [UInt64] = []
    public internal(set) var aux: [[UInt64]] = []
    /// One bit per GFN, set where the memory attribute is shared (KVM_SET_MEMORY_ATTRIBUTES;
    /// all private at first).
    var sharedBits: [UInt64]

    /// Whether the attribute of `gfn` is shared.
    @inline(__always) public func isShared(_ gfn: UInt64) -> Bool {
        gfn < size >> pageShift && sharedBits[Int(gfn >> 6)] >> (gfn & 63) & 1 == 1
    }
    /// The GFNs whose attribute is shared, in order.
    public var sharedGFNs: [UInt64] {
        (0..<size >> pageShift).filter { sharedBits[Int($0 >> 6)] >> ($0 & 63) & 1 == 1 }
    }
    public internal(set) var stats = KVMRealmStats()

    public init(placement: UInt64, size: UInt64, ipaBits: Int, vmid: UInt64, vcpus: Int) {
        self.placement = placement
        self.size = size
        self.ipaBits = ipaBits
        self.vmid = vmid
        self.vcpus = vcpus
        sharedBits = Array(repeating: 0, count: Int((size >> pageShift + 63) >> 6))
    }

    /// The top IPA bit: set on the unprotected alias.
    @inlinable public var topBit: UInt64 { 1 << UInt64(ipaBits - 1) }
    public var params: RealmParams { .kvm(s2sz: ipaBits, vmid: vmid) }

    /// find_map_level: the shallowest level below the start level whose block at `ipa` is
    /// aligned and fits before `end`.
    func mapLevel(_ ipa: UInt64, _ end: UInt64) -> Int {
        for l in params.rttLevelStart + 1...3 where ipa & (RMM.mapSize(l) - 1) == 0 && end - ipa >= RMM.mapSize(l) { return l }
        return 3
    }

    /// realm_create_rd: the RD and every start table delegated (the start tables are
    /// `rttBase`, KVM's stage-2 PGD, aligned to their size), then RMI_REALM_CREATE. A
    /// failure undelegates what was delegated and is -ENXIO.
    public mutating func create(_ fw: inout RealmFirmware, rttBase: UInt64) -> KVMRealmOutcome {
        guard state == .none else { return .ok }
        guard let rd = fw.delegatedGranule() else { return .errno(.ENXIO) }  // DELEGATE(rd) failed
        let p = params
        var roots: [UInt64] = []
        for k in 0..<UInt64(p.rttNumStart) {
            guard fw.delegate(rttBase + k * pageBytes) else { break }
            roots.append(rttBase + k * pageBytes)
        }
        stats.delegations += 1 + UInt64(roots.count)
        guard roots.count == p.rttNumStart, fw.rmm.realmCreate(rd: rd, rttBase: rttBase, p) == .success else {
            for r in roots.reversed() { release(&fw, r, pool: false) }  // the PGD is the caller's
            release(&fw, rd)
            return .errno(.ENXIO)
        }
        self.rd = rd
        self.roots = roots
        fw.rmm.reserveRTTs(rd: rd, bytes: size)
        state = .new
        return .ok
    }

    /// A granule back to the host (`RealmFirmware.free`), counted: undelegated, or leaked
    /// when the RMM answers with an error (a panic is the RMM's, counted there). Whether it
    /// came back.
    @discardableResult
    mutating func release(_ fw: inout RealmFirmware, _ pa: UInt64, pool: Bool = true) -> Bool {
        guard let r = fw.free(pa, pool: pool) else { stats.undelegations += 1; return true }
        if !(r is RMMPanic) { stats.leaked += 1 }
        return false
    }

    /// realm_create_rtt_levels: RTTs from `level` + 1 down to `to` for `ipa`, each a pool
    /// page delegated first; an RTT someone else made (RMI_ERROR_RTT(level − 1)) is fine.
    mutating func createRTTs(_ fw: inout RealmFirmware, _ ipa: UInt64, from level: Int, to: Int = 3) -> Bool {
        guard level < to else { return true }
        for l in level + 1...to {
            guard let rtt = fw.delegatedGranule() else { return false }
            stats.delegations += 1
            let s = fw.rmm.rttCreate(rd: rd, rtt: rtt, ipa: ipa & ~(RMM.mapSize(l - 1) - 1), level: l)
            if s == .success { stats.rttCreates += 1; continue }
            release(&fw, rtt)
            if s != .errorRTT(level: l - 1) { return false }
        }
        return true
    }

    /// realm_create_protected_data_page for [0, bytes): each granule delegated and
    /// DATA_CREATE'd from the VMM's image (RTTs made on RMI_ERROR_RTT, one retry). -ENXIO on
    /// a failure (what was done stays, as the ioctl's partial progress).
    public mutating func populate(_ fw: inout RealmFirmware, bytes: UInt64, source: UInt64) -> KVMRealmOutcome {
        guard state == .new else { return .errno(.EINVAL) }
        var ipa: UInt64 = 0
        while ipa < min(bytes, size) {
            let pa = placement + ipa
            guard fw.delegate(pa) else { return .errno(.ENXIO) }
            stats.delegations += 1
            guard createData(&fw, pa, ipa, src: source) else { return .errno(.ENXIO) }
            ipa += pageBytes
        }
        return .ok
    }

    /// DATA_CREATE (from `src`) or DATA_CREATE_UNKNOWN (`src` nil) of the delegated granule
    /// `pa` at `ipa`, the RTTs made on RMI_ERROR_RTT and one retry; a failure undelegates
    /// the granule. realm_create_protected_data_granule, realm_map_protected.
    mutating func createData(_ fw: inout RealmFirmware, _ pa: UInt64, _ ipa: UInt64, src: UInt64?) -> Bool {
        var s = fw.rmm.dataCreate(rd: rd, data: pa, ipa: ipa, src: src)
        if s.status == RMIStatus.errorRTT(level: 0).status, createRTTs(&fw, ipa, from: Int(s.index)) {
            s = fw.rmm.dataCreate(rd: rd, data: pa, ipa: ipa, src: src)
        }
        guard s == .success else {
            release(&fw, pa, pool: false)
            return false
        }
        return true
    }

    /// ripas_change: RMI_RTT_INIT_RIPAS (`rec` nil) or RMI_RTT_SET_RIPAS over [base, top),
    /// looping on the returned top; RMI_ERROR_RTT above find_map_level makes RTTs down to
    /// it, at or below it skips a granule (v12's "FIXME: Ugly hack to skip regions which are
    /// already RIPAS_RAM"). Where it got to.
    mutating func ripasChange(_ fw: inout RealmFirmware, _ base: UInt64, _ top: UInt64, rec: UInt64?) -> UInt64 {
        var ipa = base
        while ipa < top {
            let r = rec.map { fw.rmm.rttSetRIPAS(rd: rd, rec: $0, base: ipa, top: top) } ?? fw.rmm.rttInitRIPAS(rd: rd, base: ipa, top: top)
            if r.status == .success { ipa = r["top"]!; continue }
            guard r.status.status == RMIStatus.errorRTT(level: 0).status else { break }
            let err = Int(r.status.index), level = mapLevel(ipa, top)
            if err < level {
                guard createRTTs(&fw, ipa, from: err, to: level) else { break }
            } else {
                ipa += pageBytes
            }
        }
        return ipa
    }

    /// kvm_activate_realm on the first KVM_RUN: a REC per vCPU (only vCPU 0 runnable, each
    /// with its auxiliary granules, delegated first), INIT_RIPAS over the realm's memory,
    /// REALM_ACTIVATE. -ENXIO on a refusal.
    public mutating func activate(_ fw: inout RealmFirmware) -> KVMRealmOutcome {
        guard state == .new else { return state == .active ? .ok : .errno(.EINVAL) }
        state = .dead  // "Mark state as dead in case we fail"
        for v in 0..<vcpus {
            guard let rec = fw.delegatedGranule() else { return .errno(.ENOMEM) }
            var a: [UInt64] = []
            for _ in 0..<RMM.recAuxGranules { if let g = fw.delegatedGranule() { a.append(g) } }
            stats.delegations += 1 + UInt64(a.count)
            // kvm_create_rec: a short alloc_rec_aux is -ENOMEM, a refused REC_CREATE -ENXIO;
            // either way what was delegated is undelegated, in reverse.
            let s = a.count < RMM.recAuxGranules ? nil : fw.rmm.recCreate(rd: rd, rec: rec, mpidr: RMM.mpidr(index: v), runnable: v == 0, aux: a)
            guard s == .success else {
                for g in (a + [rec]).reversed() { release(&fw, g) }
                return .errno(s == nil ? .ENOMEM : .ENXIO)
            }
            recs.append(rec)
            aux.append(a)
        }
        // set_ripas_of_protected_regions: any error but v12's skip stops the activation.
        guard ripasChange(&fw, 0, size, rec: nil) >= size else { return .errno(.ENXIO) }
        guard fw.rmm.realmActivate(rd: rd) == .success else { return .errno(.ENXIO) }
        state = .active
        return .ok
    }

    /// A realm access to `ipa` that exited to KVM (stage-2 abort): on a protected IPA,
    /// realm_map_protected (DELEGATE, DATA_CREATE_UNKNOWN, RTTs on RMI_ERROR_RTT and one
    /// retry; a DELEGATE that fails is taken as another vCPU's win); on the unprotected
    /// alias, RTT_MAP_UNPROTECTED at level 3 (RTTs made on RMI_ERROR_RTT, a second one
    /// ignored). An attribute that disagrees is KVM_EXIT_MEMORY_FAULT.
    public mutating func fault(_ fw: inout RealmFirmware, ipa: UInt64) -> KVMRealmOutcome {
        let shared = ipa & topBit != 0, gpa = ipa & ~topBit & ~(pageBytes - 1)
        guard gpa < size else { return .errno(.EFAULT) }
        if isShared(gpa >> pageShift) != shared {
            stats.memoryFaultExits += 1
            return .memoryFault(gpa: gpa, size: pageBytes, private: !shared)
        }
        let pa = placement + gpa
        if shared {
            stats.sharedFaults += 1
            var s = fw.rmm.rttMapUnprotected(rd: rd, ipa: gpa | topBit, level: 3, pa: pa)
            if s.status == RMIStatus.errorRTT(level: 0).status {
                guard createRTTs(&fw, gpa | topBit, from: Int(s.index)) else { return .errno(.ENXIO) }
                s = fw.rmm.rttMapUnprotected(rd: rd, ipa: gpa | topBit, level: 3, pa: pa)
            }
            return s == .success || s.status == RMIStatus.errorRTT(level: 0).status ? .ok : .errno(.ENXIO)
        }
        stats.privateFaults += 1
        guard fw.delegate(pa) else { return .ok }  // "raced with another vCPU"
        stats.delegations += 1
        return createData(&fw, pa, gpa, src: nil) ? .ok : .errno(.ENXIO)
    }

    /// realm_unmap_private_range: DATA_DESTROY of each assigned granule (skipping on to the
    /// next live entry the RMM reports; a live block there, top == ipa, is split to level 3
    /// with RTT_CREATE and tried again), then UNDELEGATE; a failed undelegate is a WARN that
    /// stops the loop. Then the RTTs folded. realm_destroy_private_granule.
    mutating func unmapPrivate(_ fw: inout RealmFirmware, _ start: UInt64, _ end: UInt64) {
        var ipa = start
        while ipa < end {
            let r = fw.rmm.dataDestroy(rd: rd, ipa: ipa)
            guard r.status == .success, let pa = r["pa"] else {
                guard let top = r["top"] else { break }
                if top == ipa, r.status.status == RMIStatus.errorRTT(level: 0).status {
                    guard createRTTs(&fw, ipa, from: Int(r.status.index)) else { break }
                    continue
                }
                guard top > ipa else { break }
                ipa = top
                continue
            }
            guard release(&fw, pa, pool: false) else { break }  // WARN, and the loop stops
            ipa += pageBytes
        }
        fold(&fw, level: params.rttLevelStart + 1, start, end)
    }

    /// realm_unmap_shared_range: RTT_UNMAP_UNPROTECTED of each level-3 mapping, skipping to
    /// the next live entry (a block mapping there, top == ipa, split to level 3 first);
    /// then the RTTs folded.
    mutating func unmapShared(_ fw: inout RealmFirmware, _ start: UInt64, _ end: UInt64) {
        var ipa = start
        while ipa < end {
            let r = fw.rmm.rttUnmapUnprotected(rd: rd, ipa: ipa | topBit, level: 3)
            if r.status == .success { ipa += pageBytes; continue }
            guard let top = r["top"] else { break }
            if top & ~topBit == ipa, r.status.status == RMIStatus.errorRTT(level: 0).status {
                guard createRTTs(&fw, ipa | topBit, from: Int(r.status.index)) else { break }
                continue
            }
            guard top & ~topBit > ipa else { break }
            ipa = top & ~topBit
        }
        fold(&fw, level: params.rttLevelStart + 1, start | topBit, end | topBit)
    }

    /// realm_fold_rtt_level: RTT_FOLD of each `level` RTT over [start, end); an RTT whose
    /// entries are not all alike has its children folded first (only those over the range),
    /// then is tried again; a folded RTT is undelegated and freed. Whether all folded.
    @discardableResult
    mutating func fold(_ fw: inout RealmFirmware, level: Int, _ start: UInt64, _ end: UInt64) -> Bool {
        guard foldRTTs else { return false }
        let size = RMM.mapSize(level - 1)
        var addr = start & ~(size - 1), all = true
        while addr < end {
            var r = fw.rmm.rttFold(rd: rd, ipa: addr, level: level)
            if r.status == .errorRTT(level: level), level < 3,
               fold(&fw, level: level + 1, max(start, addr), min(end, addr + size)) {
                r = fw.rmm.rttFold(rd: rd, ipa: addr, level: level)
            }
            if r.status == .success, let rtt = r["rtt"] {
                stats.rttFolds += 1
                release(&fw, rtt)
            } else {
                all = false
            }
            addr += size
        }
        return all
    }

    /// KVM_SET_MEMORY_ATTRIBUTES from the VMM over [gpa, gpa + bytes) and
    /// kvm_arch_post_set_memory_attributes: to private, the shared alias unmapped; to
    /// shared, the private pages destroyed and undelegated and the alias unmapped.
    public mutating func setAttributes(_ fw: inout RealmFirmware, gpa: UInt64, bytes: UInt64, shared: Bool) {
        let end = min(gpa + bytes, size)
        guard gpa < end else { return }
        for gfn in gpa >> pageShift..<end >> pageShift {
            if shared { sharedBits[Int(gfn >> 6)] |= 1 << (gfn & 63) } else { sharedBits[Int(gfn >> 6)] &= ~(1 << (gfn & 63)) }
        }
        if shared { unmapPrivate(&fw, gpa, end) }
        unmapShared(&fw, gpa, end)
    }

    /// The RIPAS change exit (rec_exit_ripas_change), the VMM's conversion of the range's
    /// attributes (private for RAM, shared for EMPTY), and the next KVM_RUN's completion
    /// (kvm_complete_ripas_change: RTT_SET_RIPAS until done, the private pages of an EMPTY
    /// range destroyed) and REC_ENTER with ACCEPT. What the realm reads. A range outside
    /// the protected half would be KVM_RUN's -EINVAL with REJECT set for a later run (the RMM
    /// refuses such a request already, so it never reaches KVM here): the realm reads nothing.
    public mutating func ripasExit(_ fw: inout RealmFirmware, vcpu: Int, _ exit: RECExit) -> (KVMRealmOutcome, RSIResult?) {
        stats.ripasExits += 1
        let rec = recs[vcpu]
        guard exit.base < topBit, exit.top <= topBit else { return (.errno(.EINVAL), nil) }
        stats.memoryFaultExits += 1
        setAttributes(&fw, gpa: exit.base, bytes: exit.top - exit.base, shared: exit.ripas == .empty)
        let reached = ripasChange(&fw, exit.base, exit.top, rec: rec)
        if exit.ripas == .empty && reached > exit.base { unmapPrivate(&fw, exit.base, reached) }
        return (.ok, fw.rmm.recEnter(rec: rec, response: .accept).delivered)
    }

    /// Teardown (kvm_free_stage2_pgd, kvm_destroy_rec, kvm_destroy_realm): everything
    /// unmapped; every RTT below the start tables destroyed, deepest first; each REC destroyed
    /// and undelegated with its auxiliary granules; REALM_DESTROY; the RD and the start
    /// tables undelegated. A refused command is a WARN: what it held is leaked and the
    /// later steps are skipped. The first failure, or ok.
    public mutating func destroy(_ fw: inout RealmFirmware) -> KVMRealmOutcome {
        guard state != .none else { return .ok }
        let top = size
        unmapPrivate(&fw, 0, top)
        unmapShared(&fw, 0, top)
        for level in stride(from: 3, to: params.rttLevelStart, by: -1) {
            destroyRTTs(&fw, level: level, 0, topBit)
            destroyRTTs(&fw, level: level, topBit, topBit << 1)
        }
        state = .dying
        for (k, rec) in recs.enumerated() {
            guard fw.rmm.recDestroy(rec: rec) == .success else { stats.leaked += 1 + UInt64(aux[k].count); return .errno(.EBUSY) }
            for g in aux[k] + [rec] { release(&fw, g) }
        }
        recs = []
        aux = []
        guard fw.rmm.realmDestroy(rd: rd) == .success else { stats.leaked += 1 + UInt64(roots.count); return .errno(.EBUSY) }
        release(&fw, rd)
        for r in roots {
            guard release(&fw, r) else { return .errno(.EBUSY) }
        }
        state = .dead
        return .ok
    }

    /// RTT_DESTROY of every level-`level` RTT over [start, end), skipping on to the next
    /// live entry the RMM reports.
    mutating func destroyRTTs(_ fw: inout RealmFirmware, level: Int, _ start: UInt64, _ end: UInt64) {
        var ipa = start
        while ipa < end {
            let r = fw.rmm.rttDestroy(rd: rd, ipa: ipa, level: level)
            if r.status == .success, let rtt = r["rtt"] {
                release(&fw, rtt)
            }
            guard let next = r["top"], next > ipa else { ipa += RMM.mapSize(level - 1); continue }
            ipa = next
        }
    }
}
