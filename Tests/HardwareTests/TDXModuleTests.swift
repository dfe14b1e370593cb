import Testing
@testable import Hardware
@testable import PageTables
import Expectations

/// The TDX module 1.5.01 model (commit 72d8cffb): the allowed-state table of every call that
/// walks the S-EPT, exhaustively, and each error path of the SEAMCALLs with its exact status.
struct TDXModuleTests {
    static let tdr: UInt64 = 0x1000
    static let gpa: UInt64 = 0x4000_0000

    /// A module over 1 GiB of TDX memory with one TD, keys configured, TDCS added, initialized.
    static func module(runnable: Bool = false) -> TDXModule {
        var m = TDXModule(tdmrs: [0..<(1 << 30)])
        expectEqual(m.mngCreate(tdr: tdr), .success)
        expectEqual(m.mngKeyConfig(tdr: tdr), .success)
        for k in 0..<UInt64(TDXModule.minTDCSPages) { #expect(m.mngAddCX(tdr: tdr, page: 0x2000 + k * 0x1000) == .success) }
        expectEqual(m.mngInit(tdr: tdr), .success)
        expectEqual(m.vpCreate(tdr: tdr, tdvpr: 0x9000), .success)
        if runnable { #expect(m.mrFinalize(tdr: tdr) == .success) }
        return m
    }

    /// The HPA a fixture gives a leaf state at `level`: aligned to it, in TDX memory.
    static func hpa(_ level: Int) -> UInt64 { level == 0 ? 0x80_0000 : 0x1000_0000 }

    /// Each call's entry point at the level the test puts the state at.
    static func call(_ c: SEPTCall, _ m: inout TDXModule, level: Int) -> TDXResult {
        switch c {
        case .pageAdd: m.pageAdd(tdr: tdr, gpa: gpa, target: 0x70_0000, source: 0x60_0000)
        case .septAdd: m.septAdd(tdr: tdr, gpa: gpa, level: level, page: 0x70_0000, allowExisting: true)
        case .pageAug: m.pageAug(tdr: tdr, gpa: gpa, level: level, page: 0x2000_0000)
        case .rangeBlock: m.rangeBlock(tdr: tdr, gpa: gpa, level: level)
        case .pageDemote: m.pageDemote(tdr: tdr, gpa: gpa, level: level, page: 0x70_0000)
        case .pagePromote: m.pagePromote(tdr: tdr, gpa: gpa, level: level)
        case .pageRemove: m.pageRemove(tdr: tdr, gpa: gpa, level: level)
        case .septRemove: m.septRemove(tdr: tdr, gpa: gpa, level: level)
        case .rangeUnblock: m.rangeUnblock(tdr: tdr, gpa: gpa, level: level)
        case .accept: m.accept(tdr: tdr, gpa: gpa, level: level)
        }
    }

    /// The oracle, copied from tdx-module 72d8cffb include/auto_gen/sept_state_lookup.c:
    /// seamcall_sept_state_lookup[leaf] (tdcall_sept_state_lookup[6] for ACCEPT), columns in
    /// sept_special_flags_lookup .index order.
    static let oracle: [SEPTCall: [Int]] = [
        .pageAdd: [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        .septAdd: [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        .pageAug: [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        .rangeBlock: [0, 0, 1, 0, 1, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0],
        .pageDemote: [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0],
        .pagePromote: [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        .pageRemove: [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0],
        .septRemove: [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        .rangeUnblock: [0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
        .accept: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0],
    ]

    /// sept_state_lookup.c, every row this model implements × all sixteen states, each state
    /// set directly: an allowed state passes the state check, a refused one gets
    /// TDX_EPT_ENTRY_STATE_INCORRECT|RCX (RANGE.BLOCK: GPA_RANGE_ALREADY_BLOCKED for a blocked
    /// one; ACCEPT: PAGE_SIZE_MISMATCH for a table, PAGE_ALREADY_ACCEPTED for a page the TD
    /// can use, an EPT-violation exit for the rest).
    @Test(arguments: SEPTCall.allCases)
    func everySEPTStateAgainstTheLookupTable(_ c: SEPTCall) {
        let level = c == .pageAdd ? 0 : 1
        // A 4K entry is never a table: PAGE.ADD (4K only) meets the fourteen other states.
        for s in SEPTState.allCases where level > 0 || s.isLeaf || s == .free {
            var m = Self.module()
            m.setSEPTState(tdr: Self.tdr, gpa: Self.gpa, level: level, s, hpa: s.isLeaf ? Self.hpa(level) : 0x50_0000)
            expectEqual(m.tds[0].stateAt(Self.gpa, level), s, "fixture: \(s)")
            let r = Self.call(c, &m, level: level)
            let refusal: TDXResult
            switch c {
            case .rangeBlock where s.anyBlocked: refusal = .status(TDXStatus(.gpaRangeAlreadyBlocked, 1))
            case .accept where s == .nlMapped || s == .nlBlocked: refusal = .status(TDXStatus(.pageSizeMismatch, UInt64(level)))
            case .accept where s.guestAccessibleLeaf: refusal = .status(TDXStatus(.pageAlreadyAccepted, UInt64(level)))
            case .accept: refusal = .eptViolationExit(requested: level, level: level, state: s)
            default: refusal = .status(TDXStatus(.eptEntryStateIncorrect, 1))
            }
            if Self.oracle[c]![s.index] == 1 {
                expectNotEqual(r, refusal, "\(c) refused \(s): \(r)")
                expectNotEqual(r.status?.code, .eptEntryStateIncorrect, "\(c) refused \(s): \(r)")
            } else {
                expectEqual(r, refusal, "\(c) on \(s): \(r)")
            }
        }
    }

    /// A row's two encodings agree (`row`, and the bits `allows` reads), and a state's index
    /// is its place in the table's order.
    @Test func rowsAndMasksAgree() {
        for c in SEPTCall.allCases { #expect(SEPTState.allCases.map(c.allows) == c.row, "\(c)") }
        expectEqual(SEPTState.allCases.map(\.index), Array(0..<16))
    }

    /// The oracle itself: the table's rows as sept_state_lookup.c has them, by state name.
    @Test func theLookupRowsByName() {
        func names(_ c: SEPTCall) -> [String] { SEPTState.allCases.filter(c.allows).map(\.description) }
        expectEqual(names(.pageAdd), ["FREE"])
        expectEqual(names(.septAdd), ["FREE", "NL_MAPPED"])
        expectEqual(names(.pageAug), ["FREE", "REMOVED"])
        expectEqual(names(.rangeBlock), ["NL_MAPPED", "MAPPED", "BLOCKEDW", "PENDING", "PENDING_BLOCKEDW"])
        expectEqual(names(.pageDemote), ["MAPPED", "BLOCKED", "PENDING", "PENDING_BLOCKED"])
        expectEqual(names(.pagePromote), ["NL_MAPPED", "NL_BLOCKED"])
        expectEqual(names(.pageRemove), ["MAPPED", "BLOCKED", "BLOCKEDW", "PENDING", "PENDING_BLOCKED", "PENDING_BLOCKEDW"])
        expectEqual(names(.septRemove), ["NL_MAPPED", "NL_BLOCKED"])
        expectEqual(names(.rangeUnblock), ["NL_BLOCKED", "BLOCKED", "PENDING_BLOCKED"])
        expectEqual(names(.accept), ["PENDING", "PENDING_EXPORTED_DIRTY"])
    }

    @Test func statusesPrintWithTheirNameAndFullCode() {
        expectEqual(TDXStatus(.eptEntryStateIncorrect, 1).description, "TDX_EPT_ENTRY_STATE_INCORRECT 0xc0000b0d00000001")
        expectEqual(TDXStatus.success.description, "TDX_SUCCESS")
        expectEqual(TDXStatus(.gpaRangeAlreadyBlocked, 1).kind, .success)
        expectEqual(TDXStatus(.tlbTrackingNotDone, 1).kind, .status)
    }

    // MARK: one test per error path

    @Test func pageAddChecksInOrder() {
        var m = Self.module()
        // RCX: a 2M level, or an unaligned or shared GPA.
        expectEqual(m.pageAdd(tdr: Self.tdr, gpa: Self.gpa, level: 1, target: 0x70_0000, source: 0x60_0000), .status(TDXStatus(.operandInvalid, 1)))
        expectEqual(m.pageAdd(tdr: Self.tdr, gpa: Self.gpa + 0x800, target: 0x70_0000, source: 0x60_0000), .status(TDXStatus(.operandInvalid, 1)))
        expectEqual(m.pageAdd(tdr: Self.tdr, gpa: TDXModule.sharedBit, target: 0x70_0000, source: 0x60_0000), .status(TDXStatus(.operandInvalid, 1)))
        // No S-EPT page for the 4K level yet: the walk stops above.
        expectEqual(m.pageAdd(tdr: Self.tdr, gpa: Self.gpa, target: 0x70_0000, source: 0x60_0000), .status(TDXStatus(.eptWalkFailed, 1)))
        // SEPT.ADD at 512G, 1G and 2M, each GPA aligned to its level.
        expectEqual(m.septAdd(tdr: Self.tdr, gpa: Self.gpa, level: 3, page: 0x71_0000), .status(TDXStatus(.operandInvalid, 1)))
        for (level, page) in [(3, 0x71_0000), (2, 0x72_0000), (1, 0x73_0000)] as [(Int, UInt64)] {
            let aligned = Self.gpa & ~((1 << (12 + 9 * UInt64(level))) - 1)
            expectEqual(m.septAdd(tdr: Self.tdr, gpa: aligned, level: level, page: page), .status(.success))
        }
        expectEqual(m.septAdd(tdr: Self.tdr, gpa: Self.gpa, level: 1, page: 0x74_0000), .status(TDXStatus(.eptEntryStateIncorrect, 1)))
        expectEqual(m.septAdd(tdr: Self.tdr, gpa: Self.gpa, level: 1, page: 0x74_0000, allowExisting: true), .status(.success))
        // The target must be a free 4K page (PT_NDA): a TDCS page is not.
        expectEqual(m.pageAdd(tdr: Self.tdr, gpa: Self.gpa, target: 0x2000, source: 0x60_0000), .status(TDXStatus(.pageMetadataIncorrect, 8)))
        expectEqual(m.pageAdd(tdr: Self.tdr, gpa: Self.gpa, target: 2 << 30, source: 0x60_0000), .status(TDXStatus(.operandAddrRangeError, 8)))
        expectEqual(m.pageAdd(tdr: Self.tdr, gpa: Self.gpa, target: 0x70_0000, source: 0x60_0000), .status(.success))
        expectEqual(m.tds[0].stateAt(Self.gpa, 0), .mapped)
        expectEqual(m.pamt.entry(0x70_0000, .size4K).pt, .reg)
        expectEqual(m.tds[0].measuredPages, 1)
        // A TDR that is not one: PAGE_METADATA_INCORRECT on RDX.
        expectEqual(m.pageAdd(tdr: 0x70_0000, gpa: Self.gpa, target: 0x74_0000, source: 0x60_0000), .status(TDXStatus(.pageMetadataIncorrect, 2)))
        // After TDH.MR.FINALIZE: OP_STATE_INCORRECT.
        expectEqual(m.mrFinalize(tdr: Self.tdr), .success)
        expectEqual(m.pageAdd(tdr: Self.tdr, gpa: Self.gpa + 0x1000, target: 0x74_0000, source: 0x60_0000), .status(.opStateIncorrect))
    }

    /// BLOCK → TRACK → REMOVE on a running TD, with the refusals on the way:
    /// GPA_RANGE_NOT_BLOCKED, TLB_TRACKING_NOT_DONE, GPA_RANGE_ALREADY_BLOCKED,
    /// PREVIOUS_TLB_EPOCH_BUSY while a vCPU is in the old epoch.
    @Test func blockTrackRemove() {
        var m = Self.module(runnable: true)
        m.setSEPTState(tdr: Self.tdr, gpa: Self.gpa, level: 0, .mapped, hpa: 0x80_0000)
        expectEqual(m.pageRemove(tdr: Self.tdr, gpa: Self.gpa, level: 0), .status(TDXStatus(.gpaRangeNotBlocked, 1)))
        expectEqual(m.vpEnter(tdr: Self.tdr, vcpu: 0), .success)  // runs in epoch 1
        expectEqual(m.rangeBlock(tdr: Self.tdr, gpa: Self.gpa, level: 0), .status(.success))
        expectEqual(m.rangeBlock(tdr: Self.tdr, gpa: Self.gpa, level: 0), .status(TDXStatus(.gpaRangeAlreadyBlocked, 1)))
        expectEqual(m.pamt.entry(0x80_0000, .size4K).bepoch, 1)
        expectEqual(m.pageRemove(tdr: Self.tdr, gpa: Self.gpa, level: 0), .status(TDXStatus(.tlbTrackingNotDone, 1)))
        expectEqual(m.track(tdr: Self.tdr), .status(.success))  // epoch 2; the vCPU is still in 1
        expectEqual(m.pageRemove(tdr: Self.tdr, gpa: Self.gpa, level: 0), .status(TDXStatus(.tlbTrackingNotDone, 1)))
        expectEqual(m.track(tdr: Self.tdr), .status(.previousTLBEpochBusy))
        m.vpExit(tdr: Self.tdr, vcpu: 0)
        expectEqual(m.rangeUnblock(tdr: Self.tdr, gpa: Self.gpa, level: 0), .status(.success))
        expectEqual(m.tds[0].stateAt(Self.gpa, 0), .mapped)
        expectEqual(m.rangeBlock(tdr: Self.tdr, gpa: Self.gpa, level: 0), .status(.success))  // BEPOCH 2
        expectEqual(m.rangeUnblock(tdr: Self.tdr, gpa: Self.gpa, level: 0), .status(TDXStatus(.tlbTrackingNotDone, TDXStatus.Operand.septTree)))
        expectEqual(m.track(tdr: Self.tdr), .status(.success))
        expectEqual(m.pageRemove(tdr: Self.tdr, gpa: Self.gpa, level: 0), .released(.success, hpa: 0x80_0000))
        expectEqual(m.tds[0].stateAt(Self.gpa, 0), .free)
        expectEqual(m.pamt.entry(0x80_0000, .size4K).pt, .nda)
    }

    /// AUG then ACCEPT: PENDING → MAPPED; again is PAGE_ALREADY_ACCEPTED; a 4K ACCEPT
    /// inside a 2M PENDING leaf is an EPT-violation exit; a 2M ACCEPT over a table is
    /// PAGE_SIZE_MISMATCH; a 4K ACCEPT inside a 2M MAPPED leaf is ALREADY_ACCEPTED at level 1.
    @Test func augAndAccept() {
        var m = Self.module(runnable: true)
        m.setSEPTState(tdr: Self.tdr, gpa: Self.gpa, level: 1, .nlMapped, hpa: 0x50_0000)
        m.setSEPTState(tdr: Self.tdr, gpa: Self.gpa + (2 << 20), level: 1, .free)
        expectEqual(m.pageAug(tdr: Self.tdr, gpa: Self.gpa, level: 0, page: 0x80_0000), .status(.success))
        expectEqual(m.tds[0].stateAt(Self.gpa, 0), .pending)
        expectEqual(m.accept(tdr: Self.tdr, gpa: Self.gpa, level: 0), .status(.success))
        expectEqual(m.accept(tdr: Self.tdr, gpa: Self.gpa, level: 0), .status(TDXStatus(.pageAlreadyAccepted, 0)))
        expectEqual(m.accept(tdr: Self.tdr, gpa: Self.gpa, level: 1), .status(TDXStatus(.pageSizeMismatch, 1)))
        // A 2M AUG needs a 2M-aligned page whose 512 4K PAMT entries are free.
        expectEqual(m.pageAug(tdr: Self.tdr, gpa: Self.gpa + (2 << 20), level: 1, page: 0x81_0000), .status(TDXStatus(.operandInvalid, 8)))
        expectEqual(m.pageAug(tdr: Self.tdr, gpa: Self.gpa + (2 << 20), level: 1, page: 0), .status(TDXStatus(.pageMetadataIncorrect, 8)))
        expectEqual(m.pageAug(tdr: Self.tdr, gpa: Self.gpa + (2 << 20), level: 1, page: 0x1000_0000), .status(.success))
        expectEqual(m.accept(tdr: Self.tdr, gpa: Self.gpa + (2 << 20) + 0x1000, level: 0), .eptViolationExit(requested: 0, level: 1, state: .pending))
        expectEqual(m.accept(tdr: Self.tdr, gpa: Self.gpa + (2 << 20), level: 1), .status(.success))
        expectEqual(m.accept(tdr: Self.tdr, gpa: Self.gpa + (2 << 20) + 0x1000, level: 0), .status(TDXStatus(.pageAlreadyAccepted, 1)))
        expectEqual(m.acceptedPages, 513)
    }

    /// DEMOTE then PROMOTE of a 2M MAPPED page (blocked and tracked on a running TD), and
    /// PROMOTE's refusal when one child differs; SEPT.REMOVE's EPT_PAGE_NOT_FREE.
    @Test func demotePromoteAndSEPTRemove() {
        var m = Self.module()
        m.setSEPTState(tdr: Self.tdr, gpa: Self.gpa, level: 1, .mapped, hpa: 0x1000_0000)
        expectEqual(m.pageDemote(tdr: Self.tdr, gpa: Self.gpa, level: 1, page: 0x70_0000), .status(.success))
        expectEqual(m.tds[0].stateAt(Self.gpa + 0x5000, 0), .mapped)
        expectEqual(m.pamt.entry(0x1000_5000, .size4K).pt, .reg)
        expectEqual(m.septRemove(tdr: Self.tdr, gpa: Self.gpa, level: 1), .status(TDXStatus(.eptPageNotFree, 1)))
        // Child 7 maps another page: not one aligned run.
        let saved = m
        m.setSEPTState(tdr: Self.tdr, gpa: Self.gpa + 0x7000, level: 0, .mapped, hpa: 0x80_0000)
        expectEqual(m.pagePromote(tdr: Self.tdr, gpa: Self.gpa, level: 1), .status(TDXStatus(.eptInvalidPromoteConditions, 1)))
        m = saved
        expectEqual(m.pagePromote(tdr: Self.tdr, gpa: Self.gpa, level: 1), .released(.success, hpa: 0x70_0000))
        expectEqual(m.tds[0].stateAt(Self.gpa, 1), .mapped)
        expectEqual(m.pamt.entry(0x1000_0000, .size2M).pt, .reg)
        expectEqual(m.pamt.entry(0x70_0000, .size4K).pt, .nda)
        expectEqual(m.pamt.entry(0x1000_5000, .size4K).pt, .nda)
    }

    /// Teardown: RECLAIM needs TD_TEARDOWN, the TDR goes last (TD_ASSOCIATED_PAGES_EXIST
    /// before), WBINVD needs a reclaimed (PT_NDA) page.
    @Test func reclaimAndWbinvd() {
        var m = Self.module()
        expectEqual(m.phymemPageReclaim(pa: 0x2000), .status(.lifecycleStateIncorrect))
        expectEqual(m.phymemPageWbinvd(pa: 0x2000), .status(TDXStatus(.pageMetadataIncorrect, 1)))
        expectEqual(m.teardown(tdr: Self.tdr), .success)
        expectEqual(m.phymemPageReclaim(pa: Self.tdr), .status(.tdAssociatedPagesExist))
        for k in 0..<UInt64(6) { #expect(m.phymemPageReclaim(pa: 0x2000 + k * 0x1000) == .status(.success)) }
        expectEqual(m.phymemPageReclaim(pa: 0x9000), .status(.success))
        expectEqual(m.phymemPageReclaim(pa: Self.tdr), .status(.success))
        expectTrue(m.tds.isEmpty)
        expectEqual(m.phymemPageWbinvd(pa: 0x2000), .status(.success))
        expectEqual(m.phymemPageReclaim(pa: 0x2000), .status(TDXStatus(.pageMetadataIncorrect, 1)))
        expectEqual(m.phymemPageReclaim(pa: 0x2001), .status(TDXStatus(.operandInvalid, 1)))
    }
}

/// The PAMT's memory: tdmr_get_pamt_sz's three levels, and the dynamic form's parts.
struct TDXPAMTSizeTests {
    @Test func staticAndDynamicSizes() {
        let tib: UInt64 = 1 << 40
        // 16 bytes per 4K page (4 GiB), per 2M (8 MiB) and per 1G (16 KiB).
        expectEqual(TDXPAMTSize.staticBytes(tdmr: tib), (4 << 30) + (8 << 20) + (16 << 10) as UInt64)
        // A bit per 4K page (32 MiB) with the same 2M and 1G levels; 4 bytes per 2M of PA.
        expectEqual(TDXPAMTSize.dynamicFixedBytes(tdmr: tib), (32 << 20) + (8 << 20) + (16 << 10) as UInt64)
        expectEqual(TDXPAMTSize.refcountBytes(maxPA: tib), 2 << 20)
        expectEqual(TDXPAMTSize.dynamicBytes(tdmr: tib, maxPA: tib, regions: 3), (42 << 20) + (16 << 10) + 3 * 8192 as UInt64)
        // A page pair per 2M region holding a 4K entry in use.
        var p = PAMT()
        p.set(0x20_0000, .size4K, PAMTEntry(pt: .reg, owner: 1, bepoch: 0))
        p.set(0x20_1000, .size4K, PAMTEntry(pt: .reg, owner: 1, bepoch: 0))
        p.set(0x60_0000, .size2M, PAMTEntry(pt: .reg, owner: 1, bepoch: 0))
        expectEqual(p.regionsWith4KEntries, 1)
    }
}
