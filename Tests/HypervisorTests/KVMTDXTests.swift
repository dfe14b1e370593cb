import Testing
@testable import Hardware
@testable import Hypervisor
import HostKernel
import Expectations

/// KVM's TDX backend: private faults, zaps and MapGPA (arch/x86/kvm/vmx/tdx.c, 6.16).
struct KVMTDXTests {
    static let tdr: UInt64 = 0x1000

    static func setup(hugepages: Bool = false, finalize: Bool = true) -> (TDXModule, KVMTDX) {
        var m = TDXModule(tdmrs: [0..<(1 << 30)])
        _ = m.mngCreate(tdr: tdr)
        _ = m.mngKeyConfig(tdr: tdr)
        for k in 0..<UInt64(6) { _ = m.mngAddCX(tdr: tdr, page: 0x2000 + k * 0x1000) }
        _ = m.mngInit(tdr: tdr)
        _ = m.vpCreate(tdr: tdr, tdvpr: 0x9000)
        if finalize { _ = m.mrFinalize(tdr: tdr) }
        return (m, KVMTDX(tdr: tdr, placement: 0x1000_0000, size: 16 << 20, hugepages: hugepages))
    }

    /// The first fault links three S-EPT pages and AUGs the page; the next one in the same
    /// 2M region only AUGs.
    @Test func privateFaultLinksAndAugs() {
        var (m, k) = Self.setup()
        var spare: [UInt64] = [0x12_0000, 0x11_0000, 0x10_0000]
        expectEqual(k.privateFault(gpa: 0x1234, module: &m, spare: &spare) as? TDXResult, .status(.success))
        expectEqual(k.privateFault(gpa: 0x5000, module: &m, spare: &spare) as? TDXResult, .status(.success))
        expectEqual(k.stats.septAdds, 3)
        expectEqual(k.stats.augs, 2)
        expectEqual(m.tds[0].stateAt(0x1000, 0), .pending)
        expectTrue(spare.isEmpty)
        expectEqual(m.pamt.entry(0x1000_1000, .size4K).pt, .reg)
        expectEqual(m.pamt.entry(0x10_0000, .size4K).pt, .ept)
    }

    /// A SEPT.ADD the module refuses (its page is the TDR: PAGE_METADATA_INCORRECT on R8)
    /// leaves the page in KVM's cache; the next fault, with a usable page, links it.
    @Test func refusedSEPTPageStaysInTheCache() {
        var (m, k) = Self.setup()
        var spare: [UInt64] = [Self.tdr]
        expectEqual(k.privateFault(gpa: 0x1000, module: &m, spare: &spare) as? TDXResult, .status(TDXStatus(.pageMetadataIncorrect, 8)))
        expectEqual(spare, [Self.tdr])
        expectEqual(k.stats.septAdds, 0)
        spare = [0x12_0000, 0x11_0000, 0x10_0000]
        expectEqual(k.privateFault(gpa: 0x1000, module: &m, spare: &spare) as? TDXResult, .status(.success))
    }

    /// tdx_map_gpa's checks, each with R11 = the start GPA; the 2M chunks; RETRY with R11
    /// the next GPA when events are pending; SUBFUNC_UNSUPPORTED without the VMM's opt-in.
    @Test func mapGPAChecksAndChunks() {
        var (m, k) = Self.setup()
        let shared = KVMTDX.sharedBit
        expectEqual(k.mapGPA(gpa: 0x1000, size: 0, module: &m), TDVMCallResult(r10: TDVMCallResult.invalidOperand, r11: 0x1000))
        expectEqual(k.mapGPA(gpa: shared - 0x1000, size: 0x2000, module: &m), TDVMCallResult(r10: TDVMCallResult.invalidOperand, r11: shared - 0x1000))
        expectEqual(k.mapGPA(gpa: 1 << 48, size: 0x1000, module: &m), TDVMCallResult(r10: TDVMCallResult.invalidOperand, r11: 1 << 48))
        expectEqual(k.mapGPA(gpa: 0x1000, size: 0x800, module: &m), TDVMCallResult(r10: TDVMCallResult.alignError, r11: 0x1000))
        expectEqual(k.mapGPA(gpa: shared, size: 5 << 20, module: &m), TDVMCallResult(r10: TDVMCallResult.success, r11: 0))
        expectEqual(k.stats.mapGPAExits, 3)
        expectEqual(k.sharedGFNs.count, 1280)
        expectEqual(k.mapGPA(gpa: 0, size: 4 << 20, module: &m, pendingEvents: true), TDVMCallResult(r10: TDVMCallResult.retry, r11: 2 << 20))
        k.mapGPAExitEnabled = false
        expectEqual(k.mapGPA(gpa: 0, size: 0x1000, module: &m).r10, TDVMCallResult.subfuncUnsupported)
    }

    /// Converting a mapped private page to shared zaps it: BLOCK, TRACK, REMOVE, WBINVD.
    @Test func sharedConversionZaps() {
        var (m, k) = Self.setup()
        var spare: [UInt64] = [0x12_0000, 0x11_0000, 0x10_0000]
        _ = k.privateFault(gpa: 0x1000, module: &m, spare: &spare)
        expectEqual(m.accept(tdr: Self.tdr, gpa: 0x1000, level: 0), .status(.success))
        expectEqual(k.mapGPA(gpa: KVMTDX.sharedBit | 0x1000, size: 0x1000, module: &m).r10, TDVMCallResult.success)
        expectEqual(k.stats.zaps, 1)
        expectEqual(m.tds[0].stateAt(0x1000, 0), .free)
        expectEqual(m.pamt.entry(0x1000_1000, .size4K).pt, .nda)
        expectEqual(k.privateFault(gpa: 0x1000, module: &m, spare: &spare) as? KVMTDXExit, .memoryFault(gpa: 0x1000, toPrivate: true))
    }

    /// With a vCPU running in the TD, the zap still completes: after TRACK, KVM kicks the
    /// vCPU, which leaves the old epoch and enters the new one, so REMOVE finds the block
    /// tracked. A leaf someone else blocked is a zap failure (tdx_sept_zap_private_spte:
    /// KVM_BUG_ON on GPA_RANGE_ALREADY_BLOCKED as on any status but success).
    @Test func zapKicksRunningVCPUs() {
        var (m, k) = Self.setup()
        var spare: [UInt64] = [0x12_0000, 0x11_0000, 0x10_0000]
        _ = k.privateFault(gpa: 0x1000, module: &m, spare: &spare)
        _ = k.privateFault(gpa: 0x2000, module: &m, spare: &spare)
        expectEqual(m.vpEnter(tdr: Self.tdr, vcpu: 0), .success)
        expectEqual(k.mapGPA(gpa: KVMTDX.sharedBit | 0x1000, size: 0x1000, module: &m).r10, TDVMCallResult.success)
        expectEqual(k.stats.zaps, 1)
        expectEqual(k.stats.kicks, 1)
        expectEqual(k.stats.zapFailures, 0)
        expectEqual(m.tds[0].vcpuEpoch, [2])
        expectEqual(m.rangeBlock(tdr: Self.tdr, gpa: 0x2000, level: 0), .status(.success))
        expectEqual(k.mapGPA(gpa: KVMTDX.sharedBit | 0x2000, size: 0x1000, module: &m).r10, TDVMCallResult.success)
        expectEqual(k.stats.zaps, 1)
        expectEqual(k.stats.zapFailures, 1)
        expectEqual(m.tds[0].stateAt(0x2000, 0), .pendingBlocked)
        expectEqual(m.tds[0].vcpuEpoch, [2])
    }

    /// The huge-page series: a 2M accept that exits is mapped at 2M; a 4K accept inside a
    /// 2M PENDING leaf splits it (BLOCK, TRACK, DEMOTE) and inhibits 2M there for good;
    /// mainline maps the 2M accept's page at 4K, and the retried 2M ACCEPT is
    /// PAGE_SIZE_MISMATCH.
    @Test func hugePagesFollowTheAcceptLevel() {
        var (m, k) = Self.setup(hugepages: true)
        var spare: [UInt64] = [0x13_0000, 0x12_0000, 0x11_0000, 0x10_0000]
        expectEqual(k.privateFault(gpa: 0x20_0000, acceptLevel: 1, module: &m, spare: &spare) as? TDXResult, .status(.success))
        expectEqual(m.tds[0].stateAt(0x20_0000, 1), .pending)
        expectEqual(k.stats.hugeAugs, 1)
        expectEqual(spare.count, 2)
        expectEqual(m.accept(tdr: Self.tdr, gpa: 0x40_0000, level: 0), .eptViolationExit(requested: 0, level: 1, state: .free))
        expectEqual(m.accept(tdr: Self.tdr, gpa: 0x20_1000, level: 0), .eptViolationExit(requested: 0, level: 1, state: .pending))
        expectEqual(k.privateFault(gpa: 0x20_1000, acceptLevel: 0, module: &m, spare: &spare) as? TDXResult, .status(.success))
        expectEqual(k.stats.demotes, 1)
        expectEqual(m.tds[0].stateAt(0x20_1000, 0), .pending)
        expectEqual(m.accept(tdr: Self.tdr, gpa: 0x20_1000, level: 0), .status(.success))
        // The 2M range at 2M is inhibited for good (hugepage_set_guest_inhibit).
        expectEqual(k.inhibited, [1])
        var (m2, mainline) = Self.setup()
        spare = [0x12_0000, 0x11_0000, 0x10_0000]
        _ = mainline.privateFault(gpa: 0x20_0000, acceptLevel: 1, module: &m2, spare: &spare)
        expectEqual(m2.tds[0].stateAt(0x20_0000, 0), .pending)
        expectEqual(m2.accept(tdr: Self.tdr, gpa: 0x20_0000, level: 1), .status(TDXStatus(.pageSizeMismatch, 1)))
    }

    /// A conversion to shared of part of a 2M leaf splits it first and zaps only the part;
    /// of a whole 2M leaf, zaps it at 2M (WBINVD page by page). Back to private, the split
    /// range faults in at 4K: KVM never merges.
    @Test func partialConversionSplitsAndNothingMerges() {
        var (m, k) = Self.setup(hugepages: true)
        var spare: [UInt64] = [0x13_0000, 0x12_0000, 0x11_0000, 0x10_0000]
        _ = k.privateFault(gpa: 0x20_0000, acceptLevel: 1, module: &m, spare: &spare)
        _ = k.privateFault(gpa: 0x40_0000, acceptLevel: 1, module: &m, spare: &spare)
        expectEqual(m.accept(tdr: Self.tdr, gpa: 0x20_0000, level: 1), .status(.success))
        expectEqual(k.stats.hugeAugs, 2)
        spare = [0x14_0000]
        expectEqual(k.mapGPA(gpa: KVMTDX.sharedBit | 0x20_3000, size: 0x1000, module: &m, spare: &spare).r10, TDVMCallResult.success)
        expectEqual(k.stats.demotes, 1)
        expectEqual(k.stats.zaps, 1)
        expectEqual(m.tds[0].stateAt(0x20_3000, 0), .free)
        expectEqual(m.tds[0].stateAt(0x20_4000, 0), .mapped)
        expectEqual(k.mapGPA(gpa: KVMTDX.sharedBit | 0x40_0000, size: 0x20_0000, module: &m).r10, TDVMCallResult.success)
        expectEqual(k.stats.zaps, 2)
        expectEqual(k.lastZapped.count, 513)
        expectEqual(m.tds[0].stateAt(0x40_0000, 1), .free)
        expectEqual(k.mapGPA(gpa: 0x20_3000, size: 0x1000, module: &m).r10, TDVMCallResult.success)
        spare = [0x15_0000]
        _ = k.privateFault(gpa: 0x20_3000, acceptLevel: 1, module: &m, spare: &spare)
        expectEqual(m.tds[0].stateAt(0x20_3000, 0), .pending)
        expectEqual(k.stats.hugeAugs, 2)
        // A split KVM cannot make (no page for the new S-EPT table) fails the VMM's
        // KVM_SET_MEMORY_ATTRIBUTES: INVALID_OPERAND with R11 the chunk, attributes unchanged.
        spare = [0x16_0000]
        _ = k.privateFault(gpa: 0x60_0000, acceptLevel: 1, module: &m, spare: &spare)
        spare = []
        expectEqual(k.mapGPA(gpa: KVMTDX.sharedBit | 0x60_1000, size: 0x1000, module: &m, spare: &spare), TDVMCallResult(r10: TDVMCallResult.invalidOperand, r11: KVMTDX.sharedBit | 0x60_1000))
        expectTrue(k.isPrivate(0x601))
        expectEqual(m.tds[0].stateAt(0x60_0000, 1), .pending)
        expectEqual(k.stats.zapFailures, 1)
    }

    /// KVM_DESTROY_VM: every leaf zapped, the HKID released, the vCPU, S-EPT and TDCS pages
    /// and the TDR reclaimed: the module forgets the TD and every PAMT entry is PT_NDA. A
    /// leaf that cannot be zapped (the TD is FATAL: TDX_TD_FATAL) stays the TD's, so the
    /// TDR's RECLAIM finds children (TD_ASSOCIATED_PAGES_EXIST) and the TDR leaks.
    @Test func teardownReclaimsOrLeaks() {
        var (m, k) = Self.setup()
        var spare: [UInt64] = [0x12_0000, 0x11_0000, 0x10_0000]
        _ = k.privateFault(gpa: 0x1000, module: &m, spare: &spare)
        _ = k.privateFault(gpa: 0x2000, module: &m, spare: &spare)
        var t = k.destroy(module: &m)
        expectEqual(t.firstFailure, nil)
        expectTrue(t.leaked.isEmpty)
        expectEqual(t.reclaimed.count, 1 + 3 + 6 + 1)
        expectEqual(k.lastZapped.count, 2)
        expectTrue(m.tds.isEmpty)
        expectEqual(m.pamt.count, 0)
        (m, k) = Self.setup()
        spare = [0x12_0000, 0x11_0000, 0x10_0000]
        _ = k.privateFault(gpa: 0x1000, module: &m, spare: &spare)
        m.markFatal(tdr: Self.tdr)
        t = k.destroy(module: &m)
        expectEqual(t.firstFailure, .status(.tdFatal))
        expectEqual(t.leakedGuestPages, 1)
        expectEqual(t.leaked, [Self.tdr])
        expectEqual(t.reclaimed.count, 1 + 3 + 6)
        expectEqual(m.tds.count, 1)
        expectEqual(k.stats.zapFailures, 1)
    }

    /// KVM_TDX_INIT_MEM_REGION: S-EPT levels, PAGE.ADD, sixteen MR.EXTENDs per page; and
    /// TDH.MR.EXTEND's own checks in tdh_mr_extend.c's order.
    @Test func initMemRegionAddsAndMeasures() {
        var (m, k) = Self.setup(finalize: false)
        var spare: [UInt64] = [0x12_0000, 0x11_0000, 0x10_0000]
        expectEqual(k.initMemRegion(gpa: 0x1000, pages: 2, source: 0x60_0000, measure: true, module: &m, spare: &spare) as? TDXStatus, .success)
        expectEqual(k.stats.pageAdds, 2)
        expectEqual(k.stats.septAdds, 3)
        expectEqual(m.tds[0].extendedChunks, 32)
        expectEqual(m.tds[0].measuredPages, 2)
        expectEqual(k.lastAdded, [0x1000_1000, 0x1000_2000])
        expectEqual(m.tds[0].stateAt(0x2000, 0), .mapped)
        expectEqual(m.mrExtend(tdr: Self.tdr, gpa: 0x1080), .status(TDXStatus(.operandInvalid, 1)))
        expectEqual(m.mrExtend(tdr: Self.tdr, gpa: 0x4000_0000), .status(TDXStatus(.eptEntryNotPresent, 1)))
        expectEqual(m.mrExtend(tdr: Self.tdr, gpa: 0x5000), .status(TDXStatus(.eptEntryNotPresent, 1)))
        m.setSEPTState(tdr: Self.tdr, gpa: 0x6000, level: 0, .blockedW, hpa: 0x1000_6000)
        expectEqual(m.mrExtend(tdr: Self.tdr, gpa: 0x6000), .status(.eptEntryNotPresent))
        expectEqual(k.initMemRegion(gpa: 0x3000, pages: 1, source: 0x60_0800, measure: false, module: &m, spare: &spare) as? KernelStatus, .error(.EINVAL))
        expectEqual(k.initMemRegion(gpa: 0xfff000, pages: 2, source: 0x60_0000, measure: false, module: &m, spare: &spare) as? KernelStatus, .error(.EINVAL))
        expectEqual(TDXStatus.eptEntryNotPresent.description, "TDX_EPT_ENTRY_NOT_PRESENT 0xc0000b0300000000")
        _ = m.mrFinalize(tdr: Self.tdr)
        expectEqual(m.mrExtend(tdr: Self.tdr, gpa: 0x1000), .status(.opStateIncorrect))
        expectEqual(k.initMemRegion(gpa: 0x3000, pages: 1, source: 0x60_0000, measure: false, module: &m, spare: &spare) as? KernelStatus, .error(.EINVAL))
    }
}

