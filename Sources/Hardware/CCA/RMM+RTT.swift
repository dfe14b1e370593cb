import PageTables

/// Where an RTT walk stopped: the level reached (as the RMM counts, `startLevel`…3), the
/// table and index of the entry there, and the entry. TF-RMM lib/s2tt s2tt_walk_lock_unlock.
public struct RTTWalk: Hashable, Sendable {
    public let level: Int
    public let table: Int
    public let index: Int
    public let entry: RTTEntry
}

/// RMI_RTT_READ_ENTRY's outputs: X1 the level the walk reached, X2 the state (UNASSIGNED,
/// ASSIGNED, TABLE), X3 the descriptor (the PA of an ASSIGNED entry or a table's RTT), X4
/// the RIPAS (EMPTY where the entry has none). smc_rtt_read_entry.
public struct RTTEntryRead: Outcome, Hashable {
    public let level: Int
    public let entry: RTTEntry
    public let desc: UInt64
    public var kind: OutcomeKind { .success }
    public var state: String {
        switch entry {
        case .unassigned, .unassignedNS: "UNASSIGNED"
        case .assigned, .assignedNS: "ASSIGNED"
        case .table: "TABLE"
        }
    }
    public var ripas: RIPAS { entry.ripas ?? .empty }
    public var description: String {
        "RMI_SUCCESS (level \(level), \(state), RIPAS \(ripas)" + (desc != 0 ? ", desc \(hex(desc)))" : ")")
    }
}

extension Realm {
    /// The shift of an entry at RMM level `level`.
    @inline(__always) static func shift(_ level: Int) -> UInt64 { 12 + 9 * UInt64(3 - level) }

    /// s2tt_walk_lock_unlock toward `target`: from the start level (the concatenated start
    /// tables indexed as one), down through TABLE entries, stopping at `target` or at the
    /// first entry that is not a table.
    @inline(__always) public func walk(_ ipa: UInt64, to target: Int) -> RTTWalk {
        var l = startLevel
        let idx = Int(truncatingIfNeeded: (ipa & ((1 << UInt64(params.s2sz)) - 1)) >> Self.shift(l))
        var table = idx >> 9, index = idx & 511
        while true {
            let e = rtt.entry(table: table, index: index)
            guard l < target, e.isTable else { return RTTWalk(level: l, table: table, index: index, entry: RTTEntry(e)) }
            table = e.tableNumber
            l += 1
            index = Int(truncatingIfNeeded: ipa >> Self.shift(l)) & 511
        }
    }

    /// The entry at `level` for `ipa` if the walk reaches it.
    public func entry(_ ipa: UInt64, level: Int) -> RTTEntry? {
        let w = walk(ipa, to: level)
        return w.level == level ? w.entry : nil
    }

    mutating func write(_ w: RTTWalk, index: Int? = nil, _ e: RTTEntry) {
        setEntry(table: w.table, index: index ?? w.index, level: w.level, e.descriptor)
    }

    /// The RIPAS commands' loop (rtt_init_ripas_range, rtt_set_ripas_range): from the walk's
    /// entry to the end of its one table, while entries fit below `top`, each entry
    /// replaced by what `update` gives (written only if it changed), stopping at the first
    /// it refuses (nil). The first address not done.
    mutating func update(_ w: RTTWalk, from base: UInt64, below top: UInt64, _ update: (RTTEntry) -> RTTEntry?) -> UInt64 {
        let size = RMM.mapSize(w.level)
        var addr = base
        for i in w.index..<entriesPerTable {
            guard addr + size <= top else { break }
            let e = RTTEntry(rtt.entry(table: w.table, index: i))
            guard let now = update(e) else { break }
            if now != e { write(w, index: i, now) }
            addr += size
        }
        return addr
    }

    /// validate_map_addr: inside the IPA space, aligned to `level`'s map size, below 2^48.
    @inline(__always) func validMapAddress(_ ipa: UInt64, _ level: Int) -> Bool {
        ipa < 1 << UInt64(params.s2sz) && ipa & (RMM.mapSize(level) - 1) == 0
    }

    /// validate_rtt_structure_cmds (RTT_CREATE, RTT_DESTROY, RTT_FOLD): sl < level ≤ 3 and
    /// the address aligned to the parent's level.
    @inline(__always) func validStructure(_ ipa: UInt64, _ level: Int) -> Bool {
        level > startLevel && level <= 3 && validMapAddress(ipa, level - 1)
    }

    /// s2tt_skip_non_live_entries: `addr` if the walk's entry is live; otherwise the next
    /// live entry of the same table, or that table's end.
    @inline(__always) func skipNonLive(_ addr: UInt64, _ w: RTTWalk) -> UInt64 {
        if w.entry.isLive { return addr }
        let size = RMM.mapSize(w.level), aligned = addr & ~(size - 1)
        if let i = nextLive(table: w.table, after: w.index) { return aligned + UInt64(i - w.index) * size }
        return aligned + UInt64(entriesPerTable - w.index) * size
    }
}

extension RMM {
    /// Where the realm whose RD is `rd` is held, if `rd` is an RD: its realm is then read
    /// and changed in place (`realmList[i]`, through the array's addressors), never copied
    /// out (a copy alive while the realm changes would copy its tables).
    @inline(__always) func slot(_ rd: UInt64) -> Int? {
        if realmList.count <= 4 {  // a few realms: no hashing
            for i in realmList.indices where realmList[i].rd == rd { return i }
            return nil
        }
        return realmSlot[rd]
    }

    /// The walk of the realm in slot `ri` toward `level`, read in place (a method called on
    /// `realmList[ri]` would copy the realm first).
    @inline(__always) func rttWalk(_ ri: Int, _ ipa: UInt64, to level: Int) -> RTTWalk {
        realmList.withUnsafeBufferPointer { $0[ri].walk(ipa, to: level) }
    }

    /// The RMM's walk of realm `rd`'s RTTs toward `level`, read in place.
    public func walk(rd: UInt64, _ ipa: UInt64, to level: Int) -> RTTWalk? {
        guard let ri = slot(rd) else { return nil }
        return rttWalk(ri, ipa, to: level)
    }

    // MARK: RTT structure (runtime/rmi/rtt.c)

    /// RMI_RTT_CREATE(rd, rtt, ipa, level): rtt DELEGATED and rd an RD, level in (sl, 3] and
    /// ipa aligned to level − 1 (else RMI_ERROR_INPUT); the walk to level − 1 stopping above
    /// is RMI_ERROR_RTT(where it stopped), a parent that is a table already
    /// RMI_ERROR_RTT(level − 1). The parent's state is unfolded into the new table: an
    /// unassigned entry 512 times, an ASSIGNED block as 512 entries of consecutive PAs (a
    /// valid one, RAM or NS, broken first: TLBI). smc_rtt_create.
    public mutating func rttCreate(rd: UInt64, rtt: UInt64, ipa: UInt64, level: Int) -> RMIStatus {
        guard rtt != rd, isGranule(rtt, .delegated), let ri = slot(rd) else { return .errorInput }
        guard realmList[ri].validStructure(ipa, level) else { return .errorInput }
        let w = rttWalk(ri, ipa, to: level - 1)
        guard w.level == level - 1 else { return .errorRTT(level: w.level) }
        if case .table = w.entry { return .errorRTT(level: level - 1) }
        guard let child = try? realmList[ri].newTable(level: level, filledWith: w.entry, step: Self.mapSize(level)) else { return .errorInput }
        if case .assigned(.ram, _) = w.entry { stats.tlbis += 1 }  // break-before-make
        if case .assignedNS = w.entry { stats.tlbis += 1 }
        realmList[ri].write(w, .table(child))
        realmList[ri].rttGranule[child] = rtt
        set(rtt, .rtt)
        stats.rttCreates += 1
        return .success
    }

    /// RMI_RTT_DESTROY(rd, ipa, level) → X1 the RTT, X2 the next live address: rd an RD and
    /// the structure arguments valid (else RMI_ERROR_INPUT); the walk to level − 1 stopping
    /// above or a parent that is no table is RMI_ERROR_RTT(where it stopped); a child RTT
    /// with a table or a protected ASSIGNED entry is RMI_ERROR_RTT(level) (X2 the address
    /// itself). The parent becomes UNASSIGNED_DESTROYED inside the PAR, UNASSIGNED_NS
    /// outside (TLBI); the RTT becomes DELEGATED. smc_rtt_destroy.
    public mutating func rttDestroy(rd: UInt64, ipa: UInt64, level: Int) -> RMIResult {
        guard let ri = slot(rd), realmList[ri].validStructure(ipa, level) else { return RMIResult(.errorInput, .init("top", 0)) }
        let w = rttWalk(ri, ipa, to: level - 1)
        guard w.level == level - 1, case .table(let child) = w.entry else {
            return RMIResult(.errorRTT(level: w.level), .init("top", realmList[ri].skipNonLive(ipa, w)))
        }
        guard realmList[ri].refcount(table: child) == 0 else { return RMIResult(.errorRTT(level: level), .init("top", ipa)) }
        let pa = realmList[ri].rttGranule[child]!
        let now: RTTEntry = realmList[ri].inPAR(ipa) ? .unassigned(.destroyed) : .unassignedNS
        realmList[ri].write(w, now)
        realmList[ri].rttGranule[child] = nil
        let top = realmList[ri].skipNonLive(ipa, RTTWalk(level: w.level, table: w.table, index: w.index, entry: now))
        set(pa, .delegated)
        stats.tlbis += 1
        stats.rttDestroys += 1
        return RMIResult(.success, .init("rtt", pa), .init("top", top))
    }

    /// RMI_RTT_FOLD(rd, ipa, level) → X1 the folded RTT: the walk as RTT_DESTROY's (a parent
    /// that is no table is RMI_ERROR_RTT(level − 1)); a child with refcount 0 folds when all
    /// 512 entries are UNASSIGNED with one RIPAS, or all UNASSIGNED_NS, or all ASSIGNED_NS
    /// with consecutive PAs from an aligned first (not into a level-0 block:
    /// RMI_ERROR_RTT(level − 1)); a child with refcount 512 (never into level 0) when all are
    /// ASSIGNED with one RIPAS and consecutive PAs from an aligned first; anything else is
    /// RMI_ERROR_RTT(level). The parent becomes the block (break-before-make, TLBI), the RTT
    /// DELEGATED. smc_rtt_fold.
    public mutating func rttFold(rd: UInt64, ipa: UInt64, level: Int) -> RMIResult {
        guard let ri = slot(rd), realmList[ri].validStructure(ipa, level) else { return RMIResult(.errorInput) }
        let w = rttWalk(ri, ipa, to: level - 1)
        guard w.level == level - 1 else { return RMIResult(.errorRTT(level: w.level)) }
        guard case .table(let child) = w.entry else { return RMIResult(.errorRTT(level: level - 1)) }
        // The refcount first (TF-RMM's, kept as entries change), then the 512 entries against
        // the first, stopping at the first that differs.
        let refcount = realmList[ri].refcount(table: child)
        guard refcount == 0 || refcount == entriesPerTable else { return RMIResult(.errorRTT(level: level)) }
        if refcount == entriesPerTable && level <= 1 { return RMIResult(.errorRTT(level: level - 1)) }
        let first = RTTEntry(realmList[ri].rtt.entry(table: child, index: 0)), step = Self.mapSize(level)
        var alike = true
        if first.pa == nil {
            // Unassigned entries: the same raw value 512 times.
            let raw = first.descriptor.rawValue
            for i in 1..<entriesPerTable where realmList[ri].rtt.entry(table: child, index: i).rawValue != raw {
                alike = false
                break
            }
        } else {
            for i in 1..<entriesPerTable where realmList[ri].rtt.entry(table: child, index: i) != first.offset(UInt64(i) * step).descriptor {
                alike = false
                break
            }
        }
        let aligned = first.pa.map { $0 & (Self.mapSize(level - 1) - 1) == 0 } ?? true
        guard alike, aligned else { return RMIResult(.errorRTT(level: level)) }
        switch first {
        case .unassigned, .unassignedNS, .assigned: break
        case .assignedNS: if level <= 1 { return RMIResult(.errorRTT(level: level - 1)) }
        case .table: return RMIResult(.errorRTT(level: level))
        }
        let pa = realmList[ri].rttGranule[child]!
        realmList[ri].write(w, first)
        realmList[ri].rttGranule[child] = nil
        set(pa, .delegated)
        stats.tlbis += 1
        stats.rttFolds += 1
        return RMIResult(.success, .init("rtt", pa))
    }

    /// RMI_RTT_READ_ENTRY(rd, ipa, level): rd an RD, level in [sl, 3], ipa aligned to it
    /// (else RMI_ERROR_INPUT); the entry where the walk toward level stops, never an RTT
    /// error. smc_rtt_read_entry.
    public func rttReadEntry(rd: UInt64, ipa: UInt64, level: Int) -> any Outcome {
        guard let ri = slot(rd), level >= realmList[ri].startLevel, level <= 3, realmList[ri].validMapAddress(ipa, level) else { return RMIStatus.errorInput }
        let w = rttWalk(ri, ipa, to: level)
        let desc: UInt64
        if case .table(let t) = w.entry { desc = realmList[ri].rttGranule[t] ?? 0 } else { desc = w.entry.pa ?? 0 }
        return RTTEntryRead(level: w.level, entry: w.entry, desc: desc)
    }

    // MARK: Unprotected mappings

    /// RMI_RTT_MAP_UNPROTECTED(rd, ipa, level, desc): level in [1, 3] (checked first), rd an
    /// RD, the host's descriptor valid (its PA aligned to the level), ipa aligned and inside
    /// the IPA space but outside the PAR (else RMI_ERROR_INPUT); the walk stopping above is
    /// RMI_ERROR_RTT(where), an entry not UNASSIGNED_NS RMI_ERROR_RTT(level). Then
    /// ASSIGNED_NS; no refcount. map_unmap_ns.
    public mutating func rttMapUnprotected(rd: UInt64, ipa: UInt64, level: Int, pa: UInt64) -> RMIStatus {
        guard (1...3).contains(level), let ri = slot(rd) else { return .errorInput }
        guard pa & (Self.mapSize(level) - 1) == 0, pa < 1 << 48, realmList[ri].validMapAddress(ipa, level), !realmList[ri].inPAR(ipa) else { return .errorInput }
        let w = rttWalk(ri, ipa, to: level)
        guard w.level == level else { return .errorRTT(level: w.level) }
        guard w.entry == .unassignedNS else { return .errorRTT(level: level) }
        realmList[ri].write(w, .assignedNS(pa: pa))
        stats.mapUnprotected += 1
        return .success
    }

    /// RMI_RTT_UNMAP_UNPROTECTED(rd, ipa, level) → X1 the next live address: the checks of
    /// MAP_UNPROTECTED; a walk that stops above or an entry not ASSIGNED_NS is
    /// RMI_ERROR_RTT(where the walk stopped). Then UNASSIGNED_NS and a TLBI.
    /// smc_rtt_unmap_unprotected.
    public mutating func rttUnmapUnprotected(rd: UInt64, ipa: UInt64, level: Int) -> RMIResult {
        guard (1...3).contains(level), let ri = slot(rd), realmList[ri].validMapAddress(ipa, level), !realmList[ri].inPAR(ipa) else { return RMIResult(.errorInput) }
        let w = rttWalk(ri, ipa, to: level)
        guard w.level == level, case .assignedNS = w.entry else { return RMIResult(.errorRTT(level: w.level), .init("top", realmList[ri].skipNonLive(ipa, w))) }
        realmList[ri].write(w, .unassignedNS)
        let top = realmList[ri].skipNonLive(ipa, RTTWalk(level: w.level, table: w.table, index: w.index, entry: .unassignedNS))
        stats.tlbis += 1
        stats.unmapUnprotected += 1
        return RMIResult(.success, .init("top", top))
    }

    // MARK: DATA (runtime/rmi/rtt.c data_create, smc_data_destroy)

    /// RMI_DATA_CREATE(rd, data, ipa, src) and, with `src` nil, RMI_DATA_CREATE_UNKNOWN:
    /// src an NS granule (DATA_CREATE), data DELEGATED and rd an RD (else RMI_ERROR_INPUT); the
    /// realm NEW (DATA_CREATE only, else RMI_ERROR_REALM); ipa in the PAR and 4K-aligned
    /// (else RMI_ERROR_INPUT); the walk to level 3 stopping above is
    /// RMI_ERROR_RTT(where), an entry not UNASSIGNED RMI_ERROR_RTT(3). DATA_CREATE makes
    /// ASSIGNED_RAM whatever the RIPAS was (and measures); DATA_CREATE_UNKNOWN ASSIGNED with
    /// the entry's RIPAS (a valid mapping only for RAM). The granule becomes DATA.
    public mutating func dataCreate(rd: UInt64, data: UInt64, ipa: UInt64, src: UInt64?) -> RMIStatus {
        if let src, !isGranule(src, .ns) { return .errorInput }
        guard isGranule(data, .delegated), let ri = slot(rd) else { return .errorInput }
        if src != nil && realmList[ri].state != .new { return .errorRealm }
        guard realmList[ri].inPAR(ipa), realmList[ri].validMapAddress(ipa, 3) else { return .errorInput }
        let w = rttWalk(ri, ipa, to: 3)
        guard w.level == 3 else { return .errorRTT(level: w.level) }
        guard case .unassigned(let ripas) = w.entry else { return .errorRTT(level: 3) }
        realmList[ri].write(w, .assigned(src != nil ? .ram : ripas, pa: data))
        if src != nil { realmList[ri].rimExtensions += 1 }
        set(data, .data)
        stats.dataCreates += 1
        return .success
    }

    /// RMI_DATA_DESTROY(rd, ipa) → X1 the granule, X2 the next live address: rd an RD, ipa
    /// in the PAR and 4K-aligned (else RMI_ERROR_INPUT); the walk stopping above level 3 or
    /// an entry not protected ASSIGNED is RMI_ERROR_RTT(where). ASSIGNED_RAM becomes
    /// UNASSIGNED_DESTROYED (TLBI), ASSIGNED_EMPTY UNASSIGNED_EMPTY, ASSIGNED_DESTROYED
    /// UNASSIGNED_DESTROYED; the granule DELEGATED (zeroed).
    public mutating func dataDestroy(rd: UInt64, ipa: UInt64) -> RMIResult {
        guard let ri = slot(rd), realmList[ri].inPAR(ipa), realmList[ri].validMapAddress(ipa, 3) else { return RMIResult(.errorInput, .init("top", 0)) }
        let w = rttWalk(ri, ipa, to: 3)
        guard w.level == 3, case .assigned(let ripas, let pa) = w.entry else {
            return RMIResult(.errorRTT(level: w.level), .init("top", realmList[ri].skipNonLive(ipa, w)))
        }
        let now: RTTEntry = .unassigned(ripas == .empty ? .empty : .destroyed)
        if ripas == .ram { stats.tlbis += 1 }
        realmList[ri].write(w, now)
        let top = realmList[ri].skipNonLive(ipa, RTTWalk(level: 3, table: w.table, index: w.index, entry: now))
        set(pa, .delegated)
        stats.dataDestroys += 1
        return RMIResult(.success, .init("pa", pa), .init("top", top))
    }

    // MARK: RIPAS

    /// RMI_RTT_INIT_RIPAS(rd, base, top) → X1 the first address not done: top above base
    /// (checked first), rd an RD, both 4K-aligned inside the PAR (else RMI_ERROR_INPUT), the
    /// realm NEW (else RMI_ERROR_REALM); from the deepest entry the walk reaches for base
    /// (base aligned to its level, else RMI_ERROR_RTT(level)), entry by entry to the end of
    /// that one table while they fit below top: UNASSIGNED_EMPTY becomes UNASSIGNED_RAM,
    /// UNASSIGNED_RAM stays, anything else stops; none done is RMI_ERROR_RTT(level). Each
    /// entry is measured. smc_rtt_init_ripas.
    public mutating func rttInitRIPAS(rd: UInt64, base: UInt64, top: UInt64) -> RMIResult {
        guard top > base, let ri = slot(rd) else { return RMIResult(.errorInput) }
        guard realmList[ri].validMapAddress(base, 3), realmList[ri].validMapAddress(top, 3), realmList[ri].inPAR(base), realmList[ri].inPAR(top - pageBytes) else {
            return RMIResult(.errorInput)
        }
        guard realmList[ri].state == .new else { return RMIResult(.errorRealm) }
        let w = rttWalk(ri, base, to: 3), size = Self.mapSize(w.level)
        guard base & (size - 1) == 0 else { return RMIResult(.errorRTT(level: w.level)) }
        let addr = realmList[ri].update(w, from: base, below: top) { $0 == .unassigned(.empty) || $0 == .unassigned(.ram) ? .unassigned(.ram) : nil }
        realmList[ri].rimExtensions += (addr - base) / size  // each entry done is measured
        return addr == base ? RMIResult(.errorRTT(level: w.level)) : RMIResult(.success, .init("top", addr))
    }

    /// update_ripas: the entry after a change to `target`, nil where the change stops (no
    /// RIPAS: NS or a table; DESTROYED without CHANGE_DESTROYED), and whether a live
    /// mapping went (ASSIGNED_RAM to EMPTY: TLBI).
    static func updateRIPAS(_ e: RTTEntry, _ target: RIPAS, changeDestroyed: Bool) -> (RTTEntry, tlbi: Bool)? {
        switch e {
        case .unassigned(let r):
            if r == .destroyed && !changeDestroyed { return nil }
            return (.unassigned(target), false)
        case .assigned(let r, let pa):
            if r == .destroyed && !changeDestroyed { return nil }
            return (.assigned(target, pa: pa), target == .empty && r != .empty)
        default: return nil
        }
    }

    /// RMI_RTT_SET_RIPAS(rd, rec, base, top) → X1 the first address not done: top above base
    /// (checked first, RMI_ERROR_INPUT), rd an RD and rec a REC (RMI_ERROR_INPUT), the REC
    /// the realm's own (RMI_ERROR_REC), base where the REC's request has got to and top
    /// within it (RMI_ERROR_INPUT); then, as RTT_INIT_RIPAS, entry by entry in the one table
    /// the walk reaches, each changed per update_ripas until one refuses; none done is
    /// RMI_ERROR_RTT(level). The REC's request advances to X1. No realm-state check.
    /// smc_rtt_set_ripas.
    public mutating func rttSetRIPAS(rd: UInt64, rec: UInt64, base: UInt64, top: UInt64) -> RMIResult {
        guard top > base, let ri = slot(rd), isGranule(rec, .rec), let ci = recs.slot(rec) else { return RMIResult(.errorInput) }
        let c = recs.list[ci].request
        guard recs.list[ci].rd == rd else { return RMIResult(.errorRec) }
        guard c.pending, base == c.addr, top <= c.top else { return RMIResult(.errorInput) }
        let w = rttWalk(ri, base, to: 3), size = Self.mapSize(w.level)
        guard base & (size - 1) == 0 else { return RMIResult(.errorRTT(level: w.level)) }
        var tlbis: UInt64 = 0
        let addr = realmList[ri].update(w, from: base, below: top) { e in
            guard let (now, tlbi) = Self.updateRIPAS(e, c.value, changeDestroyed: c.changeDestroyed) else { return nil }
            if tlbi { tlbis += 1 }
            return now
        }
        stats.tlbis += tlbis
        guard addr != base else { return RMIResult(.errorRTT(level: w.level)) }
        recs.list[ci].ripasAddr = addr
        stats.ripasChanges += 1
        return RMIResult(.success, .init("top", addr))
    }

    // MARK: RSI (runtime/rsi/memory.c)

    /// RSI_IPA_STATE_SET(base, top, ripas, flags) from the realm on `rec`: RIPAS EMPTY or
    /// RAM, base and top 4K-aligned, top above base and at most the PAR's size (else
    /// RSI_ERROR_INPUT back to the realm); then the REC records the request and exits to the
    /// host with RMI_EXIT_RIPAS_CHANGE. Only flags == 1 (RSI_CHANGE_DESTROYED) lets DESTROYED
    /// change. handle_rsi_ipa_state_set.
    public mutating func rsiIPAStateSet(rec: UInt64, base: UInt64, top: UInt64, ripas: RIPAS, flags: UInt64) -> any Outcome {
        guard let ci = recs.slot(rec), let ri = slot(recs.list[ci].rd) else { return RSIResult(.errorInput) }
        guard ripas != .destroyed, base & (pageBytes - 1) == 0, top & (pageBytes - 1) == 0, top > base, top <= realmList[ri].parSize else {
            return RSIResult(.errorInput)
        }
        recs.list[ci].ripasBase = base
        recs.list[ci].ripasTop = top
        recs.list[ci].ripasAddr = base
        recs.list[ci].ripasValue = ripas
        recs.list[ci].changeDestroyed = flags == 1
        return RECExit(ripasChange: base, top: top, ripas: ripas)
    }

    /// RSI_IPA_STATE_GET(base, end): both 4K-aligned inside the PAR, base below end (else
    /// RSI_ERROR_INPUT); the RIPAS of base and how far it runs, entry by entry within the
    /// one table the walk reaches: X1 = min(where it changes, end), X2 the RIPAS (a valid
    /// ASSIGNED_RAM entry is RAM). handle_rsi_ipa_state_get, realm_ipa_get_ripas.
    public func rsiIPAStateGet(rec: UInt64, base: UInt64, end: UInt64) -> RSIResult {
        guard let ci = recs.slot(rec), let ri = slot(recs.list[ci].rd), base & (pageBytes - 1) == 0, end & (pageBytes - 1) == 0,
              realmList[ri].inPAR(base), end > base, realmList[ri].inPAR(end - 1) else { return RSIResult(.errorInput) }
        let w = rttWalk(ri, base, to: 3), size = Self.mapSize(w.level)
        guard let ripas = w.entry.ripas else { return RSIResult(.errorInput) }
        var addr = base & ~(size - 1)
        for i in w.index..<entriesPerTable {
            guard addr < end, RTTEntry(realmList[ri].rtt.entry(table: w.table, index: i)).ripas == ripas else { break }
            addr += size
        }
        return RSIResult(.success, [.init("top", min(addr, end))], ripas: ripas)
    }
}
