import PageTables

/// PAMT page types. tdx-module 1.5.01 src/common/memory_handlers/pamt_manager.h.
public enum PAMTPageType: UInt8, Hashable, Sendable, CustomStringConvertible {
    case nda = 0, rsvd = 1, reg = 3, tdr = 4, tdcx = 5, tdvpr = 6, ept = 8
    public var description: String {
        switch self {
        case .nda: "PT_NDA"
        case .rsvd: "PT_RSVD"
        case .reg: "PT_REG"
        case .tdr: "PT_TDR"
        case .tdcx: "PT_TDCX"
        case .tdvpr: "PT_TDVPR"
        case .ept: "PT_EPT"
        }
    }
}

/// One PAMT entry: the page's type, its owner (a TDR's address) and BEPOCH, the TD epoch
/// in which RANGE.BLOCK blocked it.
public struct PAMTEntry: Hashable, Sendable {
    public var pt: PAMTPageType
    public var owner: UInt64
    public var bepoch: UInt64
    public static let nda = PAMTEntry(pt: .nda, owner: 0, bepoch: 0)
}

/// The PAMT over TDX memory: one entry per 1G, 2M and 4K page, PT_NDA unless set.
/// pamt_walk takes the 1G entry, then the 2M one, then the 4K one, stopping at the first
/// PT_REG (a page mapped at that size). pamt_manager.c pamt_walk.
public struct PAMT: Hashable, Sendable {
    /// The entries of each size that are not PT_NDA, by page number at that size.
    var e4K: [UInt64: PAMTEntry] = [:], e2M: [UInt64: PAMTEntry] = [:], e1G: [UInt64: PAMTEntry] = [:]

    /// Entries that are not PT_NDA (a removed page keeps its owner and BEPOCH as PT_NDA).
    public var count: Int { [e4K, e2M, e1G].reduce(0) { $0 + $1.values.filter { $0.pt != .nda }.count } }

    public func entry(_ pa: UInt64, _ size: PageSize) -> PAMTEntry {
        let k = pa >> size.shift
        switch size {
        case .size4K: return e4K[k] ?? .nda
        case .size2M: return e2M[k] ?? .nda
        case .size1G: return e1G[k] ?? .nda
        }
    }

    public mutating func set(_ pa: UInt64, _ size: PageSize, _ e: PAMTEntry) {
        let k = pa >> size.shift, v: PAMTEntry? = e == .nda ? nil : e
        switch size {
        case .size4K: e4K[k] = v
        case .size2M: e2M[k] = v
        case .size1G: e1G[k] = v
        }
    }

    /// The entry covering `pa` as pamt_walk finds it toward `target`: 1G or 2M if that one is
    /// PT_REG (or the target), else the smaller.
    public func walk(_ pa: UInt64, to target: PageSize) -> (size: PageSize, entry: PAMTEntry) {
        let g = e1G.isEmpty ? .nda : entry(pa, .size1G)
        if g.pt == .reg || target == .size1G { return (.size1G, g) }
        let m = e2M.isEmpty ? .nda : entry(pa, .size2M)
        if m.pt == .reg || target == .size2M { return (.size2M, m) }
        return (.size4K, entry(pa, .size4K))
    }
}

/// A TD's operational state (TDCS.op_state). include/auto_gen/op_state_lookup.h.
public enum TDOpState: Int, CaseIterable, Hashable, Sendable, CustomStringConvertible {
    case uninitialized, initialized, runnable, liveExport, pausedExport, postExport, memoryImport, stateImport, postImport, liveImport, failedImport

    /// op_state_is_tlb_tracking_required.
    public var tlbTrackingRequired: Bool { self == .runnable || self == .liveExport || self == .liveImport }
    /// Removed pages become REMOVED rather than FREE while importing.
    public var importInProgress: Bool { (6...9).contains(rawValue) }

    public var description: String {
        ["OP_STATE_UNINITIALIZED", "OP_STATE_INITIALIZED", "OP_STATE_RUNNABLE", "OP_STATE_LIVE_EXPORT", "OP_STATE_PAUSED_EXPORT",
         "OP_STATE_POST_EXPORT", "OP_STATE_MEMORY_IMPORT", "OP_STATE_STATE_IMPORT", "OP_STATE_POST_IMPORT", "OP_STATE_LIVE_IMPORT",
         "OP_STATE_FAILED_IMPORT"][rawValue]
    }

    /// Whether seamcall_state_lookup allows `state` for `leaf` (no set is built).
    static func allowed(leaf: Int, _ state: TDOpState) -> Bool {
        switch leaf {
        case 2, 16: return state == .initialized
        case 3: return [.initialized, .runnable, .liveExport, .memoryImport, .stateImport, .postImport, .liveImport].contains(state)
        case 6: return state == .initialized || state == .runnable || state == .liveExport || state == .liveImport
        case 7, 15, 23, 39: return [.initialized, .runnable, .liveExport, .pausedExport, .postExport, .postImport, .liveImport].contains(state)
        case 29: return [.initialized, .runnable, .liveExport, .pausedExport, .postExport, .postImport, .liveImport, .failedImport].contains(state)
        case 30: return state != .uninitialized
        case 38: return state != .uninitialized && state != .failedImport
        default: return false
        }
    }

}

/// The TDR's lifecycle state. tdx-module src/common/data_structures/tdx_tdr.h.
public enum TDLifecycle: Int, Hashable, Sendable {
    case hkidAssigned = 0, keysConfigured = 1, blocked = 2, teardown = 3
}

/// A TD as the module keeps it: TDR and TDCS fields the memory calls read, its Secure EPT
/// and the TLB epochs.
public struct TDXTD: Sendable {
    public let tdr: UInt64
    public let hkid: UInt32
    public internal(set) var lifecycle = TDLifecycle.hkidAssigned
    public internal(set) var opState = TDOpState.uninitialized
    public internal(set) var fatal = false
    public internal(set) var tdcx: [UInt64] = []
    /// The Secure EPT: 4-level, its root the TDCS's; see `SEPTState` for how states are held.
    public internal(set) var sept: PageTable
    /// NL_BLOCKED entries: tables the TD lists as blocked, by `TDXTD.key(gpa, level)`.
    public internal(set) var nlBlocked: Set<UInt64> = []
    /// The HPA of each S-EPT page below the root, by the key of the entry pointing to it.
    public internal(set) var septPages: [UInt64: UInt64] = [:]
    /// TDCS.td_epoch (1 from TDH.MNG.INIT) and the vCPUs running in each parity's epoch.
    public internal(set) var epoch: UInt64 = 0
    public internal(set) var refcount: [UInt32] = [0, 0]
    /// TDR.chldcnt: pages (4K units) and S-EPT pages the TD owns.
    public internal(set) var chldcnt: UInt64 = 0
    /// The vCPUs (TDVPR pages) and the epoch each entered in, if running.
    public internal(set) var vcpus: [UInt64] = []
    public internal(set) var vcpuEpoch: [UInt64?] = []
    /// MRTD extensions by PAGE.ADD, and the 256-byte chunks TDH.MR.EXTEND measured.
    public internal(set) var measuredPages = 0
    public internal(set) var extendedChunks = 0

    init(tdr: UInt64, hkid: UInt32) {
        self.tdr = tdr
        self.hkid = hkid
        var t = PageTable(format: .x86_64)
        t.compactSplits = false
        sept = t
    }

    /// The key of the S-EPT entry at module level `level` (0 4K, 1 2M, 2 1G, 3 512G) for `gpa`.
    public static func key(_ gpa: UInt64, _ level: Int) -> UInt64 {
        (gpa & ~((1 << (12 + 9 * UInt64(level))) - 1)) | UInt64(level)
    }

    /// The state of the S-EPT entry `e` found at `level` for `gpa`.
    public func state(_ e: Descriptor, _ gpa: UInt64, _ level: Int) -> SEPTState {
        Self.state(e, gpa, level, nlBlocked)
    }

    /// The state of entry `e` at `level` for `gpa`, given the TD's NL_BLOCKED set.
    @inline(__always) static func state(_ e: Descriptor, _ gpa: UInt64, _ level: Int, _ nlBlocked: Set<UInt64>) -> SEPTState {
        if e.isNone { return .free }
        if e.isTable { return !nlBlocked.isEmpty && nlBlocked.contains(key(gpa, level)) ? .nlBlocked : .nlMapped }
        if e.isLeaf { return .mapped }
        return e.septState ?? .free
    }

    /// secure_ept_walk toward `level`: from the root (level 3), down through NL_MAPPED
    /// entries, stopping at the requested level or at the first entry that is not a present
    /// table (a leaf, a non-present entry, NL_BLOCKED). The level reached and its entry.
    /// sept_manager.c.
    public func walk(_ gpa: UInt64, to level: Int) -> (level: Int, entry: Descriptor, state: SEPTState) {
        Self.walk(gpa, to: level, sept, nlBlocked)
    }

    /// The walk over an S-EPT and its NL_BLOCKED set, borrowed where they are stored.
    @inline(__always) static func walk(_ gpa: UInt64, to level: Int, _ sept: borrowing PageTable, _ nlBlocked: borrowing Set<UInt64>) -> (level: Int, entry: Descriptor, state: SEPTState) {
        var l = 3, table = 0  // the root: one table, number 0
        while true {
            let e = sept.entry(table: table, index: tableIndex(gpa, level: l + 1))
            let s = state(e, gpa, l, copy nlBlocked)
            if l == level || s != .nlMapped { return (l, e, s) }
            table = e.tableNumber
            l -= 1
        }
    }

    /// The S-EPT state at exactly `level` for `gpa`, if the walk reaches it.
    public func stateAt(_ gpa: UInt64, _ level: Int) -> SEPTState? {
        let w = walk(gpa, to: level)
        return w.level == level ? w.state : nil
    }

    /// The HPA a leaf entry maps or keeps.
    public static func hpa(_ e: Descriptor) -> UInt64? {
        if e.isLeaf { return e.frame.rawValue << pageShift }
        return e.septAddress
    }

    /// Writes `state` at `level` for `gpa` (`hpa` for a leaf state; a new S-EPT page for
    /// NL_MAPPED over FREE).
    mutating func write(_ gpa: UInt64, _ level: Int, _ state: SEPTState, hpa: UInt64 = 0) {
        let va = VirtAddr(gpa & ~((1 << (12 + 9 * UInt64(level))) - 1)), k = Self.key(gpa, level)
        switch state {
        case .free:
            if level == 3 { try? sept.unmap(virt: va, size: 1 << 39) } else { try? sept.setEntry(virt: va, level: level + 1, .none) }
            nlBlocked.remove(k)
            septPages[k] = nil
        case .nlMapped, .nlBlocked:
            if !(sept.descriptor(at: va, level: level + 1)?.isTable ?? false) {
                try? sept.setEntry(virt: va, level: level, .none)  // makes the table below
            }
            if state == .nlBlocked { nlBlocked.insert(k) } else { nlBlocked.remove(k) }
        case .mapped:
            guard let size = PageSize(level: level + 1) else { return }  // no 512G leaf
            try? sept.installLeaf(virt: va, phys: PhysAddr(hpa), size: size, attributes: [.present, .writable])
            nlBlocked.remove(k)
        default:
            try? sept.setEntry(virt: va, level: level + 1, .sept(state, pa: hpa))
            nlBlocked.remove(k)
        }
    }

    /// Writes a state directly (a test fixture's way into every state), making the tables
    /// above it NL_MAPPED.
    public mutating func setState(_ gpa: UInt64, level: Int, _ state: SEPTState, hpa: UInt64 = 0) { write(gpa, level, state, hpa: hpa) }

    /// TDR.chldcnt less `n` (never below zero).
    mutating func dropChildren(_ n: UInt64) { chldcnt = chldcnt >= n ? chldcnt - n : 0 }

    /// is_tlb_tracked: BEPOCH older than the previous epoch, or the previous epoch with no
    /// vCPU left in it. helpers.h.
    public func isTracked(_ bepoch: UInt64) -> Bool {
        (bepoch == epoch &- 1 && refcount[Int(bepoch & 1)] == 0) || bepoch < epoch &- 1
    }
}

/// What a SEAMCALL or TDCALL returned: its status, and the RCX output where the call gives
/// one (REMOVE's page, PROMOTE's and SEPT.REMOVE's freed S-EPT page); or, for ACCEPT, an
/// EPT-violation exit to the VMM instead of a status.
public enum TDXResult: Outcome, Hashable {
    case status(TDXStatus)
    case released(TDXStatus, hpa: UInt64)
    /// TDG.MEM.PAGE.ACCEPT left the TD with an EPT violation (exit reason 48, extended exit
    /// qualification type ACCEPT): the requested level, the level and state that stopped it.
    case eptViolationExit(requested: Int, level: Int, state: SEPTState)

    public var status: TDXStatus? {
        switch self {
        case .status(let s), .released(let s, _): s
        case .eptViolationExit: nil
        }
    }

    public var kind: OutcomeKind {
        switch self {
        case .status(let s), .released(let s, _): s.kind
        case .eptViolationExit: .fault
        }
    }

    public var description: String {
        switch self {
        case .status(let s): s.description
        case .released(let s, let hpa): "\(s) (RCX \(hex(hpa)))"
        case .eptViolationExit(let r, let l, let s):
            "EPT violation exit to the VMM (ACCEPT: requested level \(r), stopped at level \(l) in \(s))"
        }
    }
}
