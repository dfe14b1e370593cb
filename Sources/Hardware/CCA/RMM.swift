import PageTables

/// A realm's lifecycle state (RMM 1.0 §A2.1; TF-RMM runtime/include/realm.h).
public enum RealmState: UInt8, Sendable, Hashable, CustomStringConvertible {
    case new, active, systemOff
    public var description: String { ["REALM_NEW", "REALM_ACTIVE", "REALM_SYSTEM_OFF"][Int(rawValue)] }
}

/// RMI_REALM_CREATE's parameters as the model takes them (the rest of the 4K parameter
/// granule, SVE, PMU and breakpoints, is not modelled): the IPA width, the RTT's start level
/// and number of concatenated start tables, the VMID and the measurement algorithm.
/// TF-RMM lib/smc/include/smc-rmi.h struct rmi_realm_params.
public struct RealmParams: Hashable, Sendable {
    public var s2sz: Int
    public var rttLevelStart: Int
    public var rttNumStart: Int
    public var vmid: UInt64
    public var hashAlgorithm: UInt64 = 0
    public init(s2sz: Int, rttLevelStart: Int, rttNumStart: Int, vmid: UInt64, hashAlgorithm: UInt64 = 0) {
        self.s2sz = s2sz
        self.rttLevelStart = rttLevelStart
        self.rttNumStart = rttNumStart
        self.vmid = vmid
        self.hashAlgorithm = hashAlgorithm
    }

    /// KVM's choice for an IPA width (the KVM CCA host series, realm_create_rd): the start
    /// level of its own stage-2 geometry (as few levels as the width allows, the root
    /// concatenated), and as many start tables as that needs.
    public static func kvm(s2sz: Int, vmid: UInt64) -> RealmParams {
        let levels = max(1, (s2sz - 8) / 9), sl = 4 - levels
        return RealmParams(s2sz: s2sz, rttLevelStart: sl, rttNumStart: RMM.numRootRTTs(s2sz: s2sz, sl: sl), vmid: vmid)
    }
}

/// A realm as the RMM keeps it in its RD: state, stage-2 geometry and its RTTs (on the
/// shared `PageTable`: RMM level L is the table's level 4 − L; each RTT's granule by table
/// number), the RECs it counts. TF-RMM runtime/include/realm.h struct rd.
public struct Realm: Sendable {
    public let rd: UInt64
    public let params: RealmParams
    public internal(set) var state = RealmState.new
    /// The RTTs: entries hold `S2TTEState`s (invalid) or valid leaves (ASSIGNED_RAM; with
    /// the shared attribute ASSIGNED_NS) and tables.
    public internal(set) var rtt: PageTable
    /// The granule of each RTT, by its table number (the start tables are 0 to n − 1).
    public internal(set) var rttGranule: [Int: UInt64] = [:]
    /// rd.rec_count: the next REC's index (REC_DESTROY does not lower it).
    public internal(set) var recCount = 0
    /// The RD's refcount: RECs alive.
    public internal(set) var liveRECs = 0
    /// Measurement extensions (RIM): DATA_CREATE, RTT_INIT_RIPAS entries, runnable RECs.
    public internal(set) var rimExtensions: UInt64 = 0
    /// Per RTT (by table number): its refcount as TF-RMM keeps it (TABLE and protected
    /// ASSIGNED entries), and which of its entries are live (s2tte_is_live; eight words of
    /// bits per table), kept on every write.
    var refs: [UInt16] = [], live: [UInt64] = []

    /// The RTT's refcount.
    @inline(__always) public func refcount(table: Int) -> Int { table < refs.count ? Int(refs[table]) : 0 }
    /// The RTT's live entries.
    public func liveEntries(table: Int) -> Int {
        table < refs.count ? (0..<8).reduce(0) { $0 + live[table &* 8 &+ $1].nonzeroBitCount } : 0
    }
    /// The first live entry of RTT `table` after `index`, or nil.
    @inline(__always) func nextLive(table: Int, after index: Int) -> Int? {
        guard table < refs.count, index < entriesPerTable - 1 else { return nil }
        var i = index + 1
        while i < entriesPerTable {
            let word = live[table &* 8 &+ i >> 6] >> UInt64(i & 63)
            if word != 0 { return i + word.trailingZeroBitCount }
            i = (i | 63) + 1
        }
        return nil
    }

    mutating func grow(_ table: Int) {
        guard table >= refs.count else { return }
        refs += repeatElement(0, count: table + 1 - refs.count)
        live += repeatElement(0, count: (table + 1) * 8 - live.count)
    }

    /// Writes entry `index` of RTT `table` (entries at RMM level `level`), keeping the counts.
    mutating func setEntry(table: Int, index: Int, level: Int, _ d: Descriptor) {
        grow(table)
        let old = rtt.entry(table: table, index: index)
        if old.isTable, d != old, old.tableNumber < refs.count {  // the RTT goes (DESTROY, FOLD): nothing counted in it
            refs[old.tableNumber] = 0
            for w in 0..<8 { live[old.tableNumber &* 8 &+ w] = 0 }
        }
        if old.isRefcountedRTTEntry { refs[table] -= 1 }
        if d.isRefcountedRTTEntry { refs[table] += 1 }
        let bit: UInt64 = 1 << UInt64(index & 63), w = table &* 8 &+ index >> 6
        if d.isLiveRTTEntry { live[w] |= bit } else { live[w] &= ~bit }
        rtt.setEntry(table: table, index: index, level: 4 - level, d)
    }

    /// A new RTT whose 512 entries at RMM level `level` are `first` moved on by `step` bytes
    /// each (an unfolded entry: the same state, or consecutive PAs), its counts set at once.
    mutating func newTable(level: Int, filledWith first: RTTEntry, step: UInt64) throws(PageTableError) -> Int {
        let t = try newTable()
        grow(t)
        // Consecutive PAs: a leaf's frame field, or an invalid entry's PA in its payload.
        let d = first.descriptor
        let increment: UInt64 = first.pa == nil ? 0 : d.isLeaf ? first.offset(step).descriptor.rawValue &- d.rawValue : step
        rtt.fill(table: t, level: 4 - level, first: d, increment: increment)
        refs[t] = first.isRefcounted ? UInt16(entriesPerTable) : 0
        for w in 0..<8 { live[t &* 8 &+ w] = first.isLive ? ~0 : 0 }
        return t
    }

    /// A new, empty RTT (its counts zero).
    mutating func newTable() throws(PageTableError) -> Int {
        let t = try rtt.newTable()
        if t < refs.count {
            refs[t] = 0
            for w in 0..<8 { live[t &* 8 &+ w] = 0 }
        }
        return t
    }

    public var startLevel: Int { params.rttLevelStart }
    /// The protected IPA range's size: the lower half of the IPA space (PAR).
    public var parSize: UInt64 { 1 << UInt64(params.s2sz - 1) }
    @inline(__always) public func inPAR(_ ipa: UInt64) -> Bool { ipa < parSize }
    /// The top IPA bit: set on unprotected (NS-shared) addresses.
    public var unprotectedBit: UInt64 { parSize }
}

/// A REC (realm execution context) as the RMM keeps it. TF-RMM runtime/include/rec.h.
public struct REC: Sendable, Hashable {
    public let pa: UInt64
    public let rd: UInt64
    public let index: Int
    public let runnable: Bool
    public let aux: [UInt64]
    /// The RIPAS change the realm asked for (RSI_IPA_STATE_SET) and how far the host's
    /// RMI_RTT_SET_RIPAS calls got (`addr`); base == top when none is pending.
    public internal(set) var ripasBase: UInt64 = 0, ripasTop: UInt64 = 0, ripasAddr: UInt64 = 0
    public internal(set) var ripasValue = RIPAS.empty
    public internal(set) var changeDestroyed = false
    /// Whether the REC exited for a RIPAS change the host has not answered with REC_ENTER.
    public var awaitingRIPASResponse: Bool { ripasBase != ripasTop }
    /// The pending request as plain values (reading them copies no array).
    var request: (pending: Bool, addr: UInt64, top: UInt64, value: RIPAS, changeDestroyed: Bool) {
        (awaitingRIPASResponse, ripasAddr, ripasTop, ripasValue, changeDestroyed)
    }
}

/// The RECs the RMM holds, by the address of their granule: a list changed in place (a
/// dictionary's value would be copied out and back for every field the RSI and RMI calls
/// set), found by a scan while there are few and through an index beyond that.
public struct RECTable: Sendable {
    var list: [REC] = []
    var index: [UInt64: Int] = [:]
    public var count: Int { list.count }

    /// Where REC `pa` is in `list`.
    @inline(__always) func slot(_ pa: UInt64) -> Int? {
        if list.count <= 8 {
            for i in list.indices where list[i].pa == pa { return i }
            return nil
        }
        return index[pa]
    }

    /// REC `pa`, copied out; set to add, replace or remove one.
    public subscript(pa: UInt64) -> REC? {
        get { slot(pa).map { list[$0] } }
        set {
            switch (slot(pa), newValue) {
            case (let i?, let rec?): list[i] = rec
            case (nil, let rec?):
                index[pa] = list.count
                list.append(rec)
            case (let i?, nil):
                let last = list.removeLast()
                if i < list.count {
                    list[i] = last
                    index[last.pa] = i
                }
                index[pa] = nil
            case (nil, nil): break
            }
        }
    }
}

/// The RMM's granule array (TF-RMM's struct granule per 4K of DRAM), as the model keeps it:
/// a page of 512 states per 2M region, made when the region first holds a granule that is
/// not NS, so that neither a lookup nor a change hashes anything.
public struct GranuleTable: Sendable {
    /// Per 2M region: the first of its 512 states in `states`, or -1 (all NS).
    var regions: [Int32]
    var states: [UInt8] = []
    /// Granules in each state (NS not counted).
    var counts = [Int](repeating: 0, count: GranuleState.allCases.count)

    init(end: UInt64) { regions = Array(repeating: -1, count: Int((end + (2 << 20) - 1) >> 21)) }

    /// The state of frame `pfn` (NS where nothing was recorded).
    public subscript(pfn: UInt64) -> GranuleState {
        get {
            let r = Int(pfn >> 9)
            guard r < regions.count, regions[r] >= 0 else { return .ns }
            return GranuleState(rawValue: states[Int(regions[r]) + Int(pfn & 511)])!
        }
        set {
            let r = Int(pfn >> 9)
            guard r < regions.count else { return }
            if regions[r] < 0 {
                guard newValue != .ns else { return }
                regions[r] = Int32(states.count)
                if states.count + 512 > states.capacity { HugePages.reserve(&states, capacity: max(2 * states.capacity, 512)) }
                states += repeatElement(0, count: 512)
            }
            let i = Int(regions[r]) + Int(pfn & 511), old = GranuleState(rawValue: states[i])!
            if old != .ns { counts[Int(old.rawValue)] -= 1 }
            if newValue != .ns { counts[Int(newValue.rawValue)] += 1 }
            states[i] = newValue.rawValue
        }
    }

    /// Granules in `state` (not NS).
    public func count(_ state: GranuleState) -> Int { state == .ns ? 0 : counts[Int(state.rawValue)] }
    /// Granules that are not NS.
    public var count: Int { counts.reduce(0, +) }
    public var isEmpty: Bool { count == 0 }
}

/// What the RMM counted.
public struct RMMStats: Hashable, Sendable {
    /// Stage-2 TLB invalidations the RMM issued (TLBI IPAS2E1IS / VMALLS12E1IS after a live
    /// entry changed: break-before-make, DATA_DESTROY, RIPAS RAM → EMPTY, unmap).
    public var tlbis: UInt64 = 0
    public var rttCreates: UInt64 = 0, rttDestroys: UInt64 = 0, rttFolds: UInt64 = 0
    public var dataCreates: UInt64 = 0, dataDestroys: UInt64 = 0
    public var ripasChanges: UInt64 = 0, recEntries: UInt64 = 0
    public var mapUnprotected: UInt64 = 0, unmapUnprotected: UInt64 = 0
}

/// The RMM (TF-RMM tf-rmm-v0.6.0, RMM specification 1.0): the state of every granule of DRAM,
/// the realms and their RECs, and the RMI commands that change them, with TF-RMM's checks in
/// its order and its exact statuses. Granule transitions to and from the Realm PAS go
/// through EL3 (`GPT`). docs/cca.md; research notes in ../shared/reference/arm.md §2.
public struct RMM: Sendable {
    /// The DRAM banks the RMM was told about (plat_granule_addr_to_idx).
    public let dram: [Range<UInt64>]
    /// The state of each granule of DRAM, by frame number.
    public internal(set) var granules: GranuleTable
    /// The realms, and where each RD's is in the list.
    public internal(set) var realmList: [Realm] = []
    var realmSlot: [UInt64: Int] = [:]
    /// The realms by RD (a dictionary made on each call: for tests and reports).
    public var realms: [UInt64: Realm] { realmSlot.mapValues { realmList[$0] } }
    /// Realm `rd`, copied out (for reading).
    public func realm(_ rd: UInt64) -> Realm? { realmSlot[rd].map { realmList[$0] } }
    public internal(set) var recs = RECTable()
    /// VMIDs in use (vmid_reserve); 8-bit VMIDs (no FEAT_VMID16).
    public internal(set) var vmids: Set<UInt64> = []
    public internal(set) var stats = RMMStats()
    /// The RD's REC limit: its refcount is 10 bits (REFCOUNT_MAX).
    public static let refcountMax = 1023
    /// MAX_REC_AUX_GRANULES: the number of auxiliary granules every REC takes (rd.num_rec_aux).
    public static let recAuxGranules = 16
    /// The PE's physical address size (ID_AA64MMFR0_EL1.PARange): feat.S2SZ's bound.
    public static let paBits = 48

    public init(dram: [Range<UInt64>]) {
        self.dram = dram
        granules = GranuleTable(end: dram.map(\.upperBound).max() ?? 0)
    }

    /// The granule's state, nil outside DRAM (plat_granule_addr_to_idx finds no bank).
    public func state(_ pa: UInt64) -> GranuleState? {
        guard dram.contains(where: { $0.contains(pa) }) else { return nil }
        return granules[pa >> pageShift]
    }

    /// Granules in a state.
    public func count(_ state: GranuleState) -> Int { granules.count(state) }

    /// find_lock_granule: aligned, in DRAM, and in `state`.
    func isGranule(_ pa: UInt64, _ state: GranuleState) -> Bool { pa & (pageBytes - 1) == 0 && self.state(pa) == state }

    mutating func set(_ pa: UInt64, _ state: GranuleState) {
        granules[pa >> pageShift] = state
    }

    /// RMI_GRANULE_DELEGATE: find_lock_granule(addr, NS) (aligned, in DRAM, NS, else
    /// RMI_ERROR_INPUT), then EL3's GTSI delegate (a refusal, -EINVAL or -EPERM from the GPT,
    /// is RMI_ERROR_INPUT), then DELEGATED. runtime/rmi/granule.c smc_granule_delegate.
    public mutating func delegate(_ pa: UInt64, gpt: inout GPT) -> RMIStatus {
        guard isGranule(pa, .ns) else { return .errorInput }
        guard gpt.delegate(pa, caller: .realm) == nil else { return .errorInput }
        set(pa, .delegated)
        return .success
    }

    /// RMI_GRANULE_UNDELEGATE: find_lock_granule(addr, DELEGATED) (else RMI_ERROR_INPUT),
    /// then EL3's GTSI undelegate; a refusal there is the RMM's panic, not an error to the
    /// host ("Granule undelegate call failed"). smc_granule_undelegate.
    public mutating func undelegate(_ pa: UInt64, gpt: inout GPT) -> any Outcome {
        guard isGranule(pa, .delegated) else { return RMIStatus.errorInput }
        if let e = gpt.undelegate(pa, caller: .realm) { return RMMPanic(reason: "Granule \(hex(pa)) undelegate call failed (\(e))") }
        set(pa, .ns)
        return RMIStatus.success
    }

    // MARK: Realms (runtime/rmi/realm.c)

    /// s2_num_root_rtts: the start tables an IPA width needs at a start level (at most 16).
    public static func numRootRTTs(s2sz: Int, sl: Int) -> Int {
        let b = (3 - sl) * 9 + 12 + 9
        return s2sz <= b ? 1 : 1 << min(s2sz - b, 4)
    }

    /// validate_ipa_bits_and_sl (no LPA2): 32 ≤ s2sz ≤ 48, 0 ≤ sl ≤ 3, and s2sz within what
    /// sl's levels translate with up to 16 concatenated start tables (sl 0: 40–48, sl 1:
    /// 32–43, sl 2: 32–34). s2_inconsistent_sl.
    public static func validIPABits(s2sz: Int, sl: Int) -> Bool {
        guard (32...48).contains(s2sz), (0...3).contains(sl) else { return false }
        let levels = 3 - sl, lo = levels * 9 + 13, hi = lo + 8 + (sl > 0 ? 4 : 0)
        return (lo...hi).contains(s2sz)
    }

    /// RMI_REALM_CREATE(rd, params): validate_realm_params (the IPA width against the PA
    /// size, the start level, the number of start tables, the hash algorithm, the VMID free
    /// and below 256), then rd outside the start tables, rd and every start table
    /// DELEGATED: else RMI_ERROR_INPUT. The start tables' entries inside the PAR become
    /// UNASSIGNED_EMPTY, the others UNASSIGNED_NS. smc_realm_create, init_s2_starting_level.
    /// (rtt_base aligned to its tables' size is not checked by tf-rmm-v0.6.0.)
    public mutating func realmCreate(rd: UInt64, rttBase: UInt64, _ p: RealmParams) -> RMIStatus {
        guard p.s2sz >= 32, p.s2sz <= Self.paBits, Self.validIPABits(s2sz: p.s2sz, sl: p.rttLevelStart),
              Self.numRootRTTs(s2sz: p.s2sz, sl: p.rttLevelStart) == p.rttNumStart, p.hashAlgorithm <= 1,
              p.vmid < 256, !vmids.contains(p.vmid) else { return .errorInput }
        let roots = (0..<UInt64(p.rttNumStart)).map { rttBase &+ $0 * pageBytes }
        guard !(rd >= rttBase && rd &- rttBase < UInt64(p.rttNumStart) &* pageBytes), isGranule(rd, .delegated),
              roots.allSatisfy({ isGranule($0, .delegated) }),
              let format = PageTableFormat.arm64Stage2(startLevel: p.rttLevelStart, rootTables: p.rttNumStart) else { return .errorInput }
        var t = PageTable(format: format)
        t.compactSplits = false
        var realm = Realm(rd: rd, params: p, rtt: t)
        let sl = p.rttLevelStart, size = Self.mapSize(sl)
        for k in 0..<p.rttNumStart {
            realm.rttGranule[k] = roots[k]
            for i in 0..<entriesPerTable {
                let ipa = UInt64(k * entriesPerTable + i) * size
                guard ipa < 1 << UInt64(p.s2sz) else { break }
                realm.setEntry(table: k, index: i, level: sl, .s2tte(realm.inPAR(ipa) ? .unassignedEmpty : .unassignedNS))
            }
            set(roots[k], .rtt)
        }
        set(rd, .rd)
        vmids.insert(p.vmid)
        realmSlot[rd] = realmList.count
        realmList.append(realm)
        return .success
    }

    /// RMI_REALM_ACTIVATE: rd an RD (else RMI_ERROR_INPUT), the realm NEW (else
    /// RMI_ERROR_REALM); then ACTIVE. smc_realm_activate.
    public mutating func realmActivate(rd: UInt64) -> RMIStatus {
        guard isGranule(rd, .rd), let ri = realmSlot[rd] else { return .errorInput }
        guard realmList[ri].state == .new else { return .errorRealm }
        realmList[ri].state = .active
        return .success
    }

    /// RMI_REALM_DESTROY: rd an RD (else RMI_ERROR_INPUT); no REC left and no table or
    /// assigned entry in the start tables (else RMI_ERROR_REALM), in any realm state. The
    /// VMID is freed, the start tables and the RD become DELEGATED. smc_realm_destroy.
    public mutating func realmDestroy(rd: UInt64) -> RMIStatus {
        guard isGranule(rd, .rd), let ri = realmSlot[rd] else { return .errorInput }
        let r = realmList[ri]
        guard r.liveRECs == 0, (0..<r.params.rttNumStart).allSatisfy({ r.refcount(table: $0) == 0 }) else {
            return .errorRealm
        }
        for k in 0..<r.params.rttNumStart { set(r.rttGranule[k]!, .delegated) }
        set(rd, .delegated)
        vmids.remove(r.params.vmid)
        let last = realmList.removeLast()
        if ri < realmList.count {
            realmList[ri] = last
            realmSlot[last.rd] = ri
        }
        realmSlot[rd] = nil
        return .success
    }

    // MARK: RECs (runtime/rmi/rec.c)

    /// RMI_REC_CREATE(rd, rec, params): at most 16 auxiliary granules, each DELEGATED (taken
    /// one by one, given back on any later failure); rec DELEGATED and rd an RD (else
    /// RMI_ERROR_INPUT); the RD's refcount below its limit and the realm NEW (else
    /// RMI_ERROR_REALM); the MPIDR valid and the realm's next index (RECs are made in MPIDR
    /// order), and exactly rd.num_rec_aux (16) auxiliary granules (else RMI_ERROR_INPUT).
    /// smc_rec_create.
    public mutating func recCreate(rd: UInt64, rec: UInt64, mpidr: UInt64, runnable: Bool, aux: [UInt64]) -> RMIStatus {
        guard aux.count <= Self.recAuxGranules else { return .errorInput }
        var taken: [UInt64] = []
        func fail(_ s: RMIStatus) -> RMIStatus {
            for a in taken { set(a, .delegated) }
            return s
        }
        for a in aux {
            guard isGranule(a, .delegated) else { return fail(.errorInput) }
            set(a, .recAux)
            taken.append(a)
        }
        guard rec != rd, isGranule(rec, .delegated), isGranule(rd, .rd), let ri = realmSlot[rd] else { return fail(.errorInput) }
        let r = realmList[ri]
        guard r.liveRECs < Self.refcountMax, r.state == .new else { return fail(.errorRealm) }
        guard let index = Self.mpidrIndex(mpidr), index == r.recCount, aux.count == Self.recAuxGranules else { return fail(.errorInput) }
        set(rec, .rec)
        recs[rec] = REC(pa: rec, rd: rd, index: index, runnable: runnable, aux: aux)
        realmList[ri].liveRECs += 1
        realmList[ri].recCount = index + 1
        if runnable { realmList[ri].rimExtensions += 1 }
        return .success
    }

    /// A model hint, no RMI command: room for the RTTs that map `bytes` of the realm at 4K,
    /// so creating them never copies the tables already built.
    public mutating func reserveRTTs(rd: UInt64, bytes: UInt64) {
        guard let i = realmSlot[rd] else { return }
        let tables: UInt64 = 1 + (bytes >> 30) + (bytes >> 21) + 4
        realmList[i].rtt.reserveCapacity(tables: Int(min(tables, 1 << 22)))
    }

    /// rec_mpidr_to_idx: Aff0[3:0], Aff1, Aff2, Aff3 packed; nil when another bit is set
    /// (rec_mpidr_is_valid).
    public static func mpidrIndex(_ mpidr: UInt64) -> Int? {
        guard mpidr & ~0xff_ff_ff_0f == 0 else { return nil }
        return Int(mpidr & 0xf | (mpidr >> 8 & 0xff) << 4 | (mpidr >> 16 & 0xff) << 12 | (mpidr >> 24 & 0xff) << 20)
    }

    /// The MPIDR of the REC with index `index` (Aff0 holds four bits).
    public static func mpidr(index: Int) -> UInt64 {
        let i = UInt64(index)
        return i & 0xf | (i >> 4 & 0xff) << 8 | (i >> 12 & 0xff) << 16 | (i >> 20 & 0xff) << 24
    }

    /// RMI_REC_DESTROY: rec a REC (else RMI_ERROR_INPUT); a running REC is RMI_ERROR_REC
    /// (never seen here: the model's REC_ENTER returns before the next command). The REC
    /// and its auxiliary granules become DELEGATED; the RD's refcount drops, its rec_count
    /// does not. smc_rec_destroy.
    public mutating func recDestroy(rec: UInt64) -> RMIStatus {
        guard isGranule(rec, .rec), let c = recs[rec] else { return .errorInput }
        for a in c.aux { set(a, .delegated) }
        set(rec, .delegated)
        if let ri = realmSlot[c.rd] { realmList[ri].liveRECs -= 1 }
        recs[rec] = nil
        return .success
    }

    /// RMI_REC_ENTER(rec, run): rec a REC (else RMI_ERROR_INPUT); the realm NEW is
    /// RMI_ERROR_REALM(0), SYSTEM_OFF RMI_ERROR_REALM(1); a REC that is not runnable is
    /// RMI_ERROR_REC. Then complete_set_ripas answers a pending RIPAS change: X1 the first
    /// address RMI_RTT_SET_RIPAS did not reach, X2 RSI_REJECT only when the host rejected a
    /// RAM request it did not complete (`response`), else RSI_ACCEPT; and the realm runs on.
    /// The RSI answer it delivered, or nil when nothing was pending. runtime/rmi/run.c
    /// smc_rec_enter, runtime/core/exit.c complete_set_ripas.
    public mutating func recEnter(rec: UInt64, response: RIPASResponse) -> (status: RMIStatus, delivered: RSIResult?) {
        guard isGranule(rec, .rec), let ci = recs.slot(rec), let ri = slot(recs.list[ci].rd) else { return (.errorInput, nil) }
        switch realmList[ri].state {
        case .new: return (.errorRealm, nil)
        case .systemOff: return (RMIStatus(2, index: 1), nil)
        case .active: break
        }
        guard recs.list[ci].runnable else { return (.errorRec, nil) }
        stats.recEntries += 1
        guard recs.list[ci].awaitingRIPASResponse else { return (.success, nil) }
        let (value, addr, top) = (recs.list[ci].ripasValue, recs.list[ci].ripasAddr, recs.list[ci].ripasTop)
        let rejected = value == .ram && addr != top && response == .reject
        recs.list[ci].ripasBase = 0
        recs.list[ci].ripasTop = 0
        return (.success, RSIResult(.success, [.init("base", addr)], response: rejected ? .reject : .accept))
    }

    // MARK: Geometry (lib/s2tt)

    /// The bytes one entry at RMM level `level` maps (3: 4K, 2: 2M, 1: 1G, 0: 512G).
    @inline(__always) public static func mapSize(_ level: Int) -> UInt64 { 1 << (12 + 9 * UInt64(3 - level)) }

    /// The RTT refcount TF-RMM keeps, counted afresh from the table's entries (what
    /// `Realm.refcount(table:)` keeps as it goes; tests compare the two).
    static func countedRefcount(_ t: PageTable, table: Int) -> Int {
        var n = 0
        for i in 0..<entriesPerTable where RTTEntry(t.entry(table: table, index: i)).isRefcounted { n += 1 }
        return n
    }
}
