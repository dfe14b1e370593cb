import PageTables

/// The TDX module: its TDs, the PAMT over TDX memory (the TDMRs), and the SEAMCALLs and
/// TDCALLs that change them, each with its checks in the module's code order and the exact
/// status. tdx-module 1.5.01 (72d8cffb) src/vmm_dispatcher/api_calls, src/td_dispatcher.
public struct TDXModule: Sendable {
    public internal(set) var tds: [TDXTD] = []
    public internal(set) var pamt = PAMT()
    /// TDX memory: the TDMRs the host kernel configured (all of RAM).
    public let tdmrs: [Range<UInt64>]
    /// Pages ACCEPT zeroed.
    public internal(set) var acceptedPages: UInt64 = 0
    /// The page the last successful TDG.MEM.PAGE.ACCEPT zeroed (what the memory's TD-owner
    /// bits follow; the TDCALL itself returns no address).
    public internal(set) var lastAcceptedHPA: UInt64 = 0
    var nextHKID: UInt32 = 1

    /// The model's MAX_PA: 46 address bits, KeyID bits above them (a 52-bit MKTME layout).
    public static let maxPA: UInt64 = 1 << 46
    /// TDCS pages TDH.MNG.INIT needs (MIN_NUM_TDCS_PAGES).
    public static let minTDCSPages = 6
    /// The shared bit of a GPAW-48 TD's GPA.
    public static let sharedBit: UInt64 = 1 << 47

    public init(tdmrs: [Range<UInt64>]) { self.tdmrs = tdmrs }

    public func tdIndex(_ tdr: UInt64) -> Int? {
        tds.withUnsafeBufferPointer { b in b.indices.first { b[$0].tdr == tdr } }  // in place: iterating would copy each TD
    }

    typealias Op = TDXStatus.Operand

    // MARK: common checks (src/common/helpers/helpers.c)

    /// check_and_lock_explicit_4k_private_hpa: 4K-aligned below MAX_PA (no KeyID), inside a
    /// TDMR, its PAMT leaf a 4K entry of `expected` type.
    func checkExplicit4K(_ pa: UInt64, _ op: UInt64, _ expected: PAMTPageType) -> TDXStatus? {
        if pa & (pageBytes - 1) != 0 || pa >= Self.maxPA { return TDXStatus(.operandInvalid, op) }
        if !tdmrs.contains(where: { $0.contains(pa) }) { return TDXStatus(.operandAddrRangeError, op) }
        let w = pamt.walk(pa, to: .size4K)
        if w.size != .size4K || w.entry.pt != expected { return TDXStatus(.pageMetadataIncorrect, op) }
        return nil
    }

    /// check_lock_and_map_explicit_tdr, then check_state_map_tdcs_and_lock: the TDR page,
    /// TDR.fatal, the keys configured, the TDCS allocated, the op state allowed for `leaf`.
    func checkTD(_ tdr: UInt64, _ op: UInt64, leaf: Int) -> Result<Int, TDXStatus> {
        if let e = checkExplicit4K(tdr, op, .tdr) { return .failure(e) }
        guard let i = tdIndex(tdr) else { return .failure(TDXStatus(.pageMetadataIncorrect, op)) }
        // Field by field: a copy of the TD would retain its whole S-EPT.
        if tds[i].fatal { return .failure(.tdFatal) }
        if tds[i].lifecycle != .keysConfigured { return .failure(.tdKeysNotConfigured) }
        if tds[i].tdcx.count < Self.minTDCSPages { return .failure(.tdcsNotAllocated) }
        if !TDOpState.allowed(leaf: leaf, tds[i].opState) { return .failure(.opStateIncorrect) }
        return .success(i)
    }

    /// verify_page_info_input and check_gpa_validity(PRIVATE_ONLY): the level within
    /// [min, max], the GPA aligned to it, private (shared bit clear) and within GPAW 48.
    static func gpaValid(_ gpa: UInt64, _ level: Int, _ min: Int, _ max: Int) -> Bool {
        guard (min...max).contains(level) else { return false }
        return gpa & ((1 << (12 + 9 * UInt64(level))) - 1) == 0 && gpa < Self.sharedBit
    }

    /// TD `i`'s secure_ept_walk toward `level` (`TDXTD.walk`), reading the TD in place.
    /// Mutating only so that the TD is reached through the array's modify accessor: a read
    /// through its getter copies the S-EPT's storage references (retain and release each).
    public mutating func walk(td i: Int, _ gpa: UInt64, to level: Int) -> (level: Int, entry: Descriptor, state: SEPTState) {
        Self.walkInPlace(&tds[i], gpa, level)
    }

    @inline(__always) static func walkInPlace(_ td: inout TDXTD, _ gpa: UInt64, _ level: Int) -> (level: Int, entry: Descriptor, state: SEPTState) {
        TDXTD.walk(gpa, to: level, td.sept, td.nlBlocked)
    }

    /// TD `i`'s S-EPT state at exactly `level` for `gpa`, if the walk reaches it (in place,
    /// as `walk(td:)`).
    public mutating func stateAt(td i: Int, _ gpa: UInt64, _ level: Int) -> SEPTState? {
        let w = walk(td: i, gpa, to: level)
        return w.level == level ? w.state : nil
    }

    /// The walk to `level`, or EPT_WALK_FAILED|RCX where it stops above.
    mutating func walkTo(_ i: Int, _ gpa: UInt64, _ level: Int) -> Result<(Descriptor, SEPTState), TDXStatus> {
        let w = walk(td: i, gpa, to: level)
        return w.level == level ? .success((w.entry, w.state)) : .failure(TDXStatus(.eptWalkFailed, Op.rcx))
    }

    /// The PAMT entry whose BEPOCH an entry's block stamps: the page's at its size for a
    /// leaf, the child S-EPT page's 4K entry for a table.
    func blockedPage(_ i: Int, _ gpa: UInt64, _ level: Int, _ e: Descriptor, _ s: SEPTState) -> (UInt64, PageSize) {
        if s == .nlMapped || s == .nlBlocked { return (tds[i].septPages[TDXTD.key(gpa, level)] ?? 0, .size4K) }
        return (TDXTD.hpa(e) ?? 0, PageSize(level: level + 1) ?? .size4K)
    }

    /// The TLB-tracking check of REMOVE, PROMOTE, DEMOTE and SEPT.REMOVE: where both the
    /// state and the op state need tracking, not blocked is GPA_RANGE_NOT_BLOCKED and a
    /// BEPOCH not yet tracked TLB_TRACKING_NOT_DONE.
    func trackingCheck(_ i: Int, _ gpa: UInt64, _ level: Int, _ e: Descriptor, _ s: SEPTState, blockedRequired: Bool = true, op: UInt64 = Op.rcx) -> TDXStatus? {
        guard s.tlbTrackingRequired && tds[i].opState.tlbTrackingRequired else { return nil }
        if blockedRequired && !s.anyBlocked { return TDXStatus(.gpaRangeNotBlocked, Op.rcx) }
        let (pa, size) = blockedPage(i, gpa, level, e, s)
        if !tds[i].isTracked(pamt.entry(pa, size).bepoch) { return TDXStatus(.tlbTrackingNotDone, op) }
        return nil
    }

    // MARK: TD lifecycle (as KVM's tdx_td_init and tdx_vcpu_init call them)

    /// TDH.MNG.CREATE: the TDR page (PT_NDA) becomes PT_TDR with a new HKID.
    public mutating func mngCreate(tdr: UInt64) -> TDXStatus {
        if let e = checkExplicit4K(tdr, Op.rcx, .nda) { return e }
        pamt.set(tdr, .size4K, PAMTEntry(pt: .tdr, owner: tdr, bepoch: 0))
        tds.append(TDXTD(tdr: tdr, hkid: nextHKID))
        nextHKID += 1
        return .success
    }

    /// A model hint, no SEAMCALL: room for the S-EPT pages that map `bytes` of the TD at 4K,
    /// so linking them never copies the tables already built.
    public mutating func reserveSEPT(tdr: UInt64, bytes: UInt64) {
        guard let i = tdIndex(tdr) else { return }
        let tables: UInt64 = 1 + (bytes >> 39) + (bytes >> 30) + (bytes >> 21) + 3
        tds[i].sept.reserveCapacity(tables: Int(min(tables, 1 << 22)))
    }

    /// TDH.MNG.KEY.CONFIG: the TD's key programmed on every package.
    public mutating func mngKeyConfig(tdr: UInt64) -> TDXStatus {
        guard let i = tdIndex(tdr) else { return TDXStatus(.pageMetadataIncorrect, Op.rcx) }
        guard tds[i].lifecycle == .hkidAssigned else { return .lifecycleStateIncorrect }
        tds[i].lifecycle = .keysConfigured
        return .success
    }

    /// TDH.MNG.ADDCX: one TDCS page.
    public mutating func mngAddCX(tdr: UInt64, page: UInt64) -> TDXStatus {
        if let e = checkExplicit4K(page, Op.rcx, .nda) { return e }
        guard let i = tdIndex(tdr) else { return TDXStatus(.pageMetadataIncorrect, Op.rdx) }
        guard tds[i].lifecycle == .keysConfigured else { return .tdKeysNotConfigured }
        guard tds[i].opState == .uninitialized, tds[i].tdcx.count < Self.minTDCSPages else { return .opStateIncorrect }
        pamt.set(page, .size4K, PAMTEntry(pt: .tdcx, owner: tdr, bepoch: 0))
        tds[i].tdcx.append(page)
        tds[i].chldcnt += 1
        return .success
    }

    /// TDH.MNG.INIT: op state INITIALIZED, td_epoch 1.
    public mutating func mngInit(tdr: UInt64) -> TDXStatus {
        guard let i = tdIndex(tdr) else { return TDXStatus(.pageMetadataIncorrect, Op.rcx) }
        guard tds[i].lifecycle == .keysConfigured else { return .tdKeysNotConfigured }
        guard tds[i].tdcx.count >= Self.minTDCSPages else { return .tdcsNotAllocated }
        guard tds[i].opState == .uninitialized else { return .opStateIncorrect }
        tds[i].opState = .initialized
        tds[i].epoch = 1
        return .success
    }

    /// TDH.VP.CREATE (with its ADDCX and INIT): a vCPU on a TDVPR page.
    public mutating func vpCreate(tdr: UInt64, tdvpr: UInt64) -> TDXStatus {
        if let e = checkExplicit4K(tdvpr, Op.rcx, .nda) { return e }
        guard let i = tdIndex(tdr) else { return TDXStatus(.pageMetadataIncorrect, Op.rdx) }
        guard tds[i].opState == .initialized else { return .opStateIncorrect }
        pamt.set(tdvpr, .size4K, PAMTEntry(pt: .tdvpr, owner: tdr, bepoch: 0))
        tds[i].vcpus.append(tdvpr)
        tds[i].vcpuEpoch.append(nil)
        tds[i].chldcnt += 1
        return .success
    }

    /// TDH.MR.FINALIZE: op state RUNNABLE; PAGE.ADD is refused from now on.
    public mutating func mrFinalize(tdr: UInt64) -> TDXStatus {
        guard let i = tdIndex(tdr) else { return TDXStatus(.pageMetadataIncorrect, Op.rcx) }
        guard tds[i].opState == .initialized else { return .opStateIncorrect }
        tds[i].opState = .runnable
        return .success
    }

    /// TDH.VP.ENTER: the vCPU runs in the current epoch (refcount of its parity up).
    /// helpers.c adjust_tlb_tracking_state.
    public mutating func vpEnter(tdr: UInt64, vcpu v: Int) -> TDXStatus {
        guard let i = tdIndex(tdr), v < tds[i].vcpus.count else { return TDXStatus(.operandInvalid, Op.rcx) }
        if tds[i].fatal { return .tdFatal }
        guard tds[i].opState == .runnable, tds[i].vcpuEpoch[v] == nil else { return .opStateIncorrect }
        tds[i].refcount[Int(tds[i].epoch & 1)] += 1
        tds[i].vcpuEpoch[v] = tds[i].epoch
        return .success
    }

    /// A TD exit: the vCPU leaves its epoch (td_exit.c).
    public mutating func vpExit(tdr: UInt64, vcpu v: Int) {
        guard let i = tdIndex(tdr), v < tds[i].vcpus.count, let e = tds[i].vcpuEpoch[v] else { return }
        tds[i].refcount[Int(e & 1)] -= 1
        tds[i].vcpuEpoch[v] = nil
    }

    /// TDH.MNG.VPFLUSHDONE then TDH.MNG.KEY.FREEID: the TD's key released; its pages can be
    /// reclaimed (lifecycle TD_TEARDOWN).
    public mutating func teardown(tdr: UInt64) -> TDXStatus {
        guard let i = tdIndex(tdr) else { return TDXStatus(.pageMetadataIncorrect, Op.rcx) }
        guard tds[i].vcpuEpoch.allSatisfy({ $0 == nil }) else { return .opStateIncorrect }
        tds[i].lifecycle = .teardown
        return .success
    }

    /// Marks the TD fatal (a machine check consumed in it).
    public mutating func markFatal(tdr: UInt64) { if let i = tdIndex(tdr) { tds[i].fatal = true } }

    /// A test fixture's way to put an entry in any state, with the PAMT and TDR.chldcnt as
    /// the module would have them: a page-holding state's page PT_REG of the TD, a table's
    /// S-EPT page (`hpa`) PT_EPT.
    public mutating func setSEPTState(tdr: UInt64, gpa: UInt64, level: Int, _ s: SEPTState, hpa: UInt64 = 0) {
        guard let i = tdIndex(tdr), let size = PageSize(level: level + 1) ?? (s.isLeaf ? nil : .size1G) else { return }
        tds[i].setState(gpa, level: level, s, hpa: hpa)
        if s.holdsPage {
            pamt.set(hpa, size, PAMTEntry(pt: .reg, owner: tdr, bepoch: 0))
            tds[i].chldcnt += size.pages
        } else if s == .nlMapped || s == .nlBlocked {
            tds[i].septPages[TDXTD.key(gpa, level)] = hpa
            pamt.set(hpa, .size4K, PAMTEntry(pt: .ept, owner: tdr, bepoch: 0))
            tds[i].chldcnt += 1
        }
    }

    public mutating func setOpState(tdr: UInt64, _ s: TDOpState) { if let i = tdIndex(tdr) { tds[i].opState = s } }
}

extension TDXModule {
    // MARK: SEAMCALLs (src/vmm_dispatcher/api_calls/tdh_mem_*.c, tdh_phymem_*.c)

    /// TDH.MEM.PAGE.ADD (leaf 2): a 4K page copied from `source` into `target`, mapped and
    /// measured, before TDH.MR.FINALIZE.
    public mutating func pageAdd(tdr: UInt64, gpa: UInt64, level: Int = 0, target: UInt64, source: UInt64) -> TDXResult {
        let i: Int
        switch checkTD(tdr, Op.rdx, leaf: 2) { case .failure(let e): return .status(e); case .success(let x): i = x }
        guard Self.gpaValid(gpa, level, 0, 0) else { return .status(TDXStatus(.operandInvalid, Op.rcx)) }
        let s: SEPTState
        switch walkTo(i, gpa, 0) { case .failure(let e): return .status(e); case .success(let w): s = w.1 }
        guard SEPTCall.pageAdd.allows(s) else { return .status(TDXStatus(.eptEntryStateIncorrect, Op.rcx)) }
        guard source & (pageBytes - 1) == 0, source < Self.maxPA else { return .status(TDXStatus(.operandInvalid, Op.r9)) }
        if let e = checkExplicit4K(target, Op.r8, .nda) { return .status(e) }
        tds[i].write(gpa, 0, .mapped, hpa: target)
        tds[i].chldcnt += 1
        tds[i].measuredPages += 1
        pamt.set(target, .size4K, PAMTEntry(pt: .reg, owner: tdr, bepoch: 0))
        return .status(.success)
    }

    /// TDH.MR.EXTEND (leaf 16): 256 bytes of a MAPPED page measured into MRTD, before
    /// TDH.MR.FINALIZE. tdh_mr_extend.c: the TDR (RDX) and the op state (INITIALIZED only,
    /// op_state_lookup.c), the GPA 256-byte aligned and private (OPERAND_INVALID|RCX), the
    /// walk to a present leaf (check_and_walk_private_gpa_to_leaf: a walk that ends on
    /// anything else, FREE, PENDING or BLOCKED included, is EPT_ENTRY_NOT_PRESENT|RCX), the
    /// leaf MAPPED (a present leaf in another state, BLOCKEDW or EXPORTED_*, is
    /// EPT_ENTRY_NOT_PRESENT with no operand: sept_state_lookup.c allows MAPPED alone).
    public mutating func mrExtend(tdr: UInt64, gpa: UInt64) -> TDXResult {
        let i: Int
        switch checkTD(tdr, Op.rdx, leaf: 16) { case .failure(let e): return .status(e); case .success(let x): i = x }
        guard gpa & 255 == 0, gpa < Self.sharedBit else { return .status(TDXStatus(.operandInvalid, Op.rcx)) }
        let w = walk(td: i, gpa & ~(pageBytes - 1), to: 0)
        if !w.state.guestAccessibleLeaf { return .status(TDXStatus(.eptEntryNotPresent, Op.rcx)) }
        guard w.state == .mapped else { return .status(.eptEntryNotPresent) }
        tds[i].extendedChunks += 1
        return .status(.success)
    }

    /// TDH.MEM.SEPT.ADD (leaf 3, version 0): a new S-EPT page under the FREE entry at
    /// `level` (2M and up); an NL_MAPPED entry is refused unless `allowExisting`.
    public mutating func septAdd(tdr: UInt64, gpa: UInt64, level: Int, page: UInt64, allowExisting: Bool = false) -> TDXResult {
        let i: Int
        switch checkTD(tdr, Op.rdx, leaf: 3) { case .failure(let e): return .status(e); case .success(let x): i = x }
        guard Self.gpaValid(gpa, level, 1, 3) else { return .status(TDXStatus(.operandInvalid, Op.rcx)) }
        let s: SEPTState
        switch walkTo(i, gpa, level) { case .failure(let e): return .status(e); case .success(let w): s = w.1 }
        guard SEPTCall.septAdd.allows(s) else { return .status(TDXStatus(.eptEntryStateIncorrect, Op.rcx)) }
        if s == .nlMapped { return .status(allowExisting ? .success : TDXStatus(.eptEntryStateIncorrect, Op.rcx)) }
        if let e = checkExplicit4K(page, Op.r8, .nda) { return .status(e) }
        tds[i].write(gpa, level, .nlMapped)
        tds[i].septPages[TDXTD.key(gpa, level)] = page
        tds[i].chldcnt += 1
        pamt.set(page, .size4K, PAMTEntry(pt: .ept, owner: tdr, bepoch: 0))
        return .status(.success)
    }

    /// TDH.MEM.PAGE.AUG (leaf 6): a free page (4K, or 2M with all 512 4K entries free)
    /// added PENDING, for the TD to accept.
    public mutating func pageAug(tdr: UInt64, gpa: UInt64, level: Int, page: UInt64) -> TDXResult {
        let i: Int
        switch checkTD(tdr, Op.rdx, leaf: 6) { case .failure(let e): return .status(e); case .success(let x): i = x }
        guard Self.gpaValid(gpa, level, 0, 1) else { return .status(TDXStatus(.operandInvalid, Op.rcx)) }
        let s: SEPTState
        switch walkTo(i, gpa, level) { case .failure(let e): return .status(e); case .success(let w): s = w.1 }
        guard SEPTCall.pageAug.allows(s) else { return .status(TDXStatus(.eptEntryStateIncorrect, Op.rcx)) }
        let size = PageSize(level: level + 1)!
        if page & (size.bytes - 1) != 0 || page >= Self.maxPA { return .status(TDXStatus(.operandInvalid, Op.r8)) }
        if !tdmrs.contains(where: { $0.contains(page) }) { return .status(TDXStatus(.operandAddrRangeError, Op.r8)) }
        let w = pamt.walk(page, to: size)
        if w.size != size || w.entry.pt != .nda { return .status(TDXStatus(.pageMetadataIncorrect, Op.r8)) }
        if size == .size2M, (0..<UInt64(512)).contains(where: { pamt.entry(page + $0 << pageShift, .size4K).pt != .nda }) {
            return .status(TDXStatus(.pageMetadataIncorrect, Op.r8))
        }
        tds[i].write(gpa, level, .pending, hpa: page)
        tds[i].chldcnt += 1 << (9 * UInt64(level))
        pamt.set(page, size, PAMTEntry(pt: .reg, owner: tdr, bepoch: 0))
        return .status(.success)
    }

    /// TDH.MEM.RANGE.BLOCK (leaf 7): the entry made BLOCKED (or NL_/PENDING_BLOCKED), its
    /// BEPOCH the TD's epoch; an entry already blocked is GPA_RANGE_ALREADY_BLOCKED, not an
    /// error. No TLB-tracking check.
    public mutating func rangeBlock(tdr: UInt64, gpa: UInt64, level: Int) -> TDXResult {
        let i: Int
        switch checkTD(tdr, Op.rdx, leaf: 7) { case .failure(let e): return .status(e); case .success(let x): i = x }
        guard Self.gpaValid(gpa, level, 0, 3) else { return .status(TDXStatus(.operandInvalid, Op.rcx)) }
        let e: Descriptor, s: SEPTState
        switch walkTo(i, gpa, level) { case .failure(let x): return .status(x); case .success(let w): (e, s) = (w.0, w.1) }
        guard SEPTCall.rangeBlock.allows(s) else {
            return .status(TDXStatus(s.anyBlocked ? .gpaRangeAlreadyBlocked : .eptEntryStateIncorrect, Op.rcx))
        }
        let new: SEPTState = s == .nlMapped ? .nlBlocked : s == .mapped || s == .blockedW ? .blocked : .pendingBlocked
        tds[i].write(gpa, level, new, hpa: TDXTD.hpa(e) ?? 0)
        let (pa, size) = blockedPage(i, gpa, level, e, s)
        var p = pamt.entry(pa, size)
        p.bepoch = tds[i].epoch
        pamt.set(pa, size, p)
        return .status(.success)
    }

    /// TDH.MEM.TRACK (leaf 38): the TD's epoch advances, refused while a vCPU still runs in
    /// the previous one.
    public mutating func track(tdr: UInt64) -> TDXResult {
        let i: Int
        switch checkTD(tdr, Op.rcx, leaf: 38) { case .failure(let e): return .status(e); case .success(let x): i = x }
        if tds[i].refcount[Int(1 - (tds[i].epoch & 1))] != 0 { return .status(.previousTLBEpochBusy) }
        tds[i].epoch += 1
        return .status(.success)
    }

    /// TDH.MEM.PAGE.REMOVE (leaf 29): a leaf's page taken back (FREE, or REMOVED while
    /// importing); blocked and tracked first when the TD runs. RCX returns the page.
    public mutating func pageRemove(tdr: UInt64, gpa: UInt64, level: Int) -> TDXResult {
        let i: Int
        switch checkTD(tdr, Op.rdx, leaf: 29) { case .failure(let x): return .status(x); case .success(let y): i = y }
        guard Self.gpaValid(gpa, level, 0, 2) else { return .status(TDXStatus(.operandInvalid, Op.rcx)) }
        let e: Descriptor, s: SEPTState
        switch walkTo(i, gpa, level) { case .failure(let x): return .status(x); case .success(let w): (e, s) = (w.0, w.1) }
        guard s.isLeaf, SEPTCall.pageRemove.allows(s) else { return .status(TDXStatus(.eptEntryStateIncorrect, Op.rcx)) }
        if let x = trackingCheck(i, gpa, level, e, s) { return .status(x) }
        let hpa = TDXTD.hpa(e) ?? 0, size = PageSize(level: level + 1)!
        tds[i].write(gpa, level, tds[i].opState.importInProgress ? .removed : .free)
        tds[i].dropChildren(1 << (9 * UInt64(level)))
        var p = pamt.entry(hpa, size)
        p.pt = .nda
        pamt.set(hpa, size, p.pt == .nda && p.bepoch == 0 && p.owner == 0 ? .nda : p)
        return .released(.success, hpa: hpa)
    }

    /// TDH.MEM.RANGE.UNBLOCK (leaf 39): back to MAPPED, PENDING or NL_MAPPED, once tracked.
    public mutating func rangeUnblock(tdr: UInt64, gpa: UInt64, level: Int) -> TDXResult {
        let i: Int
        switch checkTD(tdr, Op.rdx, leaf: 39) { case .failure(let x): return .status(x); case .success(let y): i = y }
        guard Self.gpaValid(gpa, level, 0, 3) else { return .status(TDXStatus(.operandInvalid, Op.rcx)) }
        let e: Descriptor, s: SEPTState
        switch walkTo(i, gpa, level) { case .failure(let x): return .status(x); case .success(let w): (e, s) = (w.0, w.1) }
        guard SEPTCall.rangeUnblock.allows(s) else { return .status(TDXStatus(.eptEntryStateIncorrect, Op.rcx)) }
        if let x = trackingCheck(i, gpa, level, e, s, blockedRequired: false, op: Op.septTree) { return .status(x) }
        let new: SEPTState = s == .nlBlocked ? .nlMapped : s == .blocked ? .mapped : .pending
        tds[i].write(gpa, level, new, hpa: TDXTD.hpa(e) ?? 0)
        return .status(.success)
    }

    /// The state and HPA of every child of the table under (gpa, level).
    func children(_ i: Int, _ gpa: UInt64, _ level: Int) -> [(SEPTState, UInt64?)] {
        let base = gpa & ~((1 << (12 + 9 * UInt64(level))) - 1), step: UInt64 = 1 << (12 + 9 * UInt64(level - 1))
        return (0..<UInt64(512)).map { k in
            let g = base + k * step
            let e = tds[i].sept.descriptor(at: VirtAddr(g), level: level) ?? .none
            return (tds[i].state(e, g, level - 1), TDXTD.hpa(e))
        }
    }

    /// TDH.MEM.PAGE.PROMOTE (leaf 23): a blocked and tracked S-EPT table whose 512 children
    /// are one aligned run (the same MAPPED or PENDING state, contiguous HPAs) becomes one
    /// large leaf, unblocked; RCX returns the freed S-EPT page.
    public mutating func pagePromote(tdr: UInt64, gpa: UInt64, level: Int) -> TDXResult {
        let i: Int
        switch checkTD(tdr, Op.rdx, leaf: 23) { case .failure(let x): return .status(x); case .success(let y): i = y }
        guard Self.gpaValid(gpa, level, 1, 2) else { return .status(TDXStatus(.operandInvalid, Op.rcx)) }
        let e: Descriptor, s: SEPTState
        switch walkTo(i, gpa, level) { case .failure(let x): return .status(x); case .success(let w): (e, s) = (w.0, w.1) }
        guard SEPTCall.pagePromote.allows(s) else { return .status(TDXStatus(.eptEntryStateIncorrect, Op.rcx)) }
        if let x = trackingCheck(i, gpa, level, e, s) { return .status(x) }
        let kids = children(i, gpa, level), size = PageSize(level: level + 1)!, childSize = PageSize(level: level)!
        guard let hpa0 = kids[0].1, hpa0 & (size.bytes - 1) == 0, kids[0].0 == .mapped || kids[0].0 == .pending,
              kids.enumerated().allSatisfy({ $0.element.0 == kids[0].0 && $0.element.1 == hpa0 + UInt64($0.offset) * childSize.bytes }) else {
            return .status(TDXStatus(.eptInvalidPromoteConditions, Op.rcx))
        }
        let key = TDXTD.key(gpa, level), septPage = tds[i].septPages[key] ?? 0
        tds[i].write(gpa, level, kids[0].0, hpa: hpa0)
        tds[i].septPages[key] = nil
        tds[i].dropChildren(1)
        pamt.set(septPage, .size4K, .nda)
        // pamt_promote: pt and owner from child 0, the large entry's BEPOCH untouched (the
        // model keeps no BEPOCH in a PT_NDA entry, so it is 0 here, as DEMOTE's new page's).
        let child0 = pamt.entry(hpa0, childSize), large = pamt.entry(hpa0, size)
        for k in 0..<UInt64(512) { pamt.set(hpa0 + k * childSize.bytes, childSize, .nda) }
        pamt.set(hpa0, size, PAMTEntry(pt: child0.pt, owner: child0.owner, bepoch: large.bepoch))
        return .released(.success, hpa: septPage)
    }

    /// TDH.MEM.PAGE.DEMOTE (leaf 15): a large leaf (blocked and tracked when the TD runs)
    /// becomes an S-EPT table on `page` whose 512 children keep its state, unblocked.
    public mutating func pageDemote(tdr: UInt64, gpa: UInt64, level: Int, page: UInt64) -> TDXResult {
        let i: Int
        switch checkTD(tdr, Op.rdx, leaf: 15) { case .failure(let x): return .status(x); case .success(let y): i = y }
        guard Self.gpaValid(gpa, level, 1, 2) else { return .status(TDXStatus(.operandInvalid, Op.rcx)) }
        let e: Descriptor, s: SEPTState
        switch walkTo(i, gpa, level) { case .failure(let x): return .status(x); case .success(let w): (e, s) = (w.0, w.1) }
        guard SEPTCall.pageDemote.allows(s) else { return .status(TDXStatus(.eptEntryStateIncorrect, Op.rcx)) }
        if let x = trackingCheck(i, gpa, level, e, s) { return .status(x) }
        if let x = checkExplicit4K(page, Op.r8, .nda) { return .status(x) }
        let hpa = TDXTD.hpa(e) ?? 0, size = PageSize(level: level + 1)!, childSize = PageSize(level: level)!
        let childState: SEPTState = s == .blocked || s == .mapped ? .mapped : .pending
        let base = gpa & ~(size.bytes - 1), large = pamt.entry(hpa, size)
        tds[i].write(gpa, level, .free)
        tds[i].write(base, level, .nlMapped)
        for k in 0..<UInt64(512) {
            tds[i].write(base + k * childSize.bytes, level - 1, childState, hpa: hpa + k * childSize.bytes)
            pamt.set(hpa + k * childSize.bytes, childSize, PAMTEntry(pt: large.pt, owner: large.owner, bepoch: 0))
        }
        pamt.set(hpa, size, .nda)
        tds[i].septPages[TDXTD.key(gpa, level)] = page
        tds[i].chldcnt += 1
        pamt.set(page, .size4K, PAMTEntry(pt: .ept, owner: tdr, bepoch: 0))
        return .status(.success)
    }

    /// TDH.MEM.SEPT.REMOVE (leaf 30): an S-EPT table whose 512 entries are all FREE
    /// (REMOVED does not count), blocked and tracked when the TD runs, freed; RCX returns it.
    public mutating func septRemove(tdr: UInt64, gpa: UInt64, level: Int) -> TDXResult {
        let i: Int
        switch checkTD(tdr, Op.rdx, leaf: 30) { case .failure(let x): return .status(x); case .success(let y): i = y }
        guard Self.gpaValid(gpa, level, 1, 3) else { return .status(TDXStatus(.operandInvalid, Op.rcx)) }
        let e: Descriptor, s: SEPTState
        switch walkTo(i, gpa, level) { case .failure(let x): return .status(x); case .success(let w): (e, s) = (w.0, w.1) }
        guard SEPTCall.septRemove.allows(s) else { return .status(TDXStatus(.eptEntryStateIncorrect, Op.rcx)) }
        if let x = trackingCheck(i, gpa, level, e, s) { return .status(x) }
        guard children(i, gpa, level).allSatisfy({ $0.0 == .free }) else { return .status(TDXStatus(.eptPageNotFree, Op.rcx)) }
        let key = TDXTD.key(gpa, level), page = tds[i].septPages[key] ?? 0
        tds[i].write(gpa, level, .free)
        tds[i].dropChildren(1)
        pamt.set(page, .size4K, .nda)
        return .released(.success, hpa: page)
    }

    /// TDH.PHYMEM.PAGE.RECLAIM (leaf 28): a page of a TD in teardown (or its TDR, once no
    /// other page is left) back to PT_NDA. No S-EPT or op-state check.
    public mutating func phymemPageReclaim(pa: UInt64) -> TDXResult {
        if pa & (pageBytes - 1) != 0 || pa >= Self.maxPA { return .status(TDXStatus(.operandInvalid, Op.rcx)) }
        if !tdmrs.contains(where: { $0.contains(pa) }) { return .status(TDXStatus(.operandAddrRangeError, Op.rcx)) }
        let w = pamt.walk(pa, to: .size4K)
        if w.entry.pt == .nda || w.entry.pt == .rsvd { return .status(TDXStatus(.pageMetadataIncorrect, Op.rcx)) }
        if pa & (w.size.bytes - 1) != 0 { return .status(TDXStatus(.operandInvalid, Op.rcx)) }
        guard let i = tdIndex(w.entry.owner) else { return .status(TDXStatus(.operandBusy, Op.tdr)) }
        if tds[i].lifecycle != .teardown { return .status(.lifecycleStateIncorrect) }
        if w.entry.pt == .tdr {
            if tds[i].chldcnt != 0 { return .status(.tdAssociatedPagesExist) }
            tds.remove(at: i)
        } else {
            tds[i].dropChildren(w.size.pages)
        }
        pamt.set(pa, w.size, .nda)
        return .status(.success)
    }

    /// TDH.PHYMEM.PAGE.WBINVD (leaf 41): the page's cache lines under its KeyID written back
    /// and invalidated; the page must be PT_NDA (reclaimed). No TD state is checked.
    public func phymemPageWbinvd(pa: UInt64) -> TDXResult {
        .status(checkExplicit4K(pa, Op.rcx, .nda) ?? .success)
    }

    // MARK: TDCALL

    /// TDG.MEM.PAGE.ACCEPT (TDCALL 6) from TD `tdr`: a PENDING page at the requested level
    /// is zeroed and MAPPED. A larger leaf stops the walk above: ALREADY_ACCEPTED if the TD
    /// can use it, else an EPT-violation exit; a table at the level is PAGE_SIZE_MISMATCH.
    /// tdg_mem_page_accept.c check_tdaccept_failure.
    public mutating func accept(tdr: UInt64, gpa: UInt64, level: Int) -> TDXResult {
        guard let i = tdIndex(tdr) else { return .status(TDXStatus(.operandInvalid, Op.rcx)) }
        guard Self.gpaValid(gpa, level, 0, 1) else { return .status(TDXStatus(.operandInvalid, Op.rcx)) }
        let w = walk(td: i, gpa, to: level)
        if w.level > level {
            if w.state.guestAccessibleLeaf { return .status(TDXStatus(.pageAlreadyAccepted, UInt64(w.level))) }
            return .eptViolationExit(requested: level, level: w.level, state: w.state)
        }
        if w.state != .free && !w.state.isLeaf { return .status(TDXStatus(.pageSizeMismatch, UInt64(level))) }
        if w.state.guestAccessibleLeaf { return .status(TDXStatus(.pageAlreadyAccepted, UInt64(level))) }
        guard SEPTCall.accept.allows(w.state) else { return .eptViolationExit(requested: level, level: w.level, state: w.state) }
        lastAcceptedHPA = TDXTD.hpa(w.entry) ?? 0
        tds[i].write(gpa, level, w.state == .pending ? .mapped : .exportedDirty, hpa: lastAcceptedHPA)
        acceptedPages += 1 << (9 * UInt64(level))
        return .status(.success)
    }
}
