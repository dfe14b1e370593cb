import Testing
import PageTables
@testable import Hardware
@testable import HardwareCore
import Expectations

/// The SEV-SNP cases of hardware-specs.md §5 and the rules of the SNP issue, one test each.
struct RMPTests {
    static let M: UInt64 = 2 << 20
    static let base: UInt64 = 0x4000_0000  // a 2M-aligned SPA

    func rmp() -> RMP { RMP(end: 8 << 30) }
    func guest(_ gpa: UInt64, spa: UInt64, asid: UInt32 = 5, vmpl: Int = 0, npt: PageSize = .size4K) -> GuestContext {
        GuestContext(asid: asid, vmpl: vmpl, gpa: gpa, spa: spa, nptSize: npt)
    }
    /// A 4K page assigned to ASID 5 at GPA 0x1000.
    func assigned4K(validated: Bool = false) -> RMP {
        var r = rmp()
        expectEqual(r.rmpupdate(spa: Self.base, RMPUpdate(gpa: 0x1000, assigned: true, asid: 5)), .success)
        if validated { #expect(r.pvalidate(guest(0x1000, spa: Self.base), size: .size4K, validate: true) == .status(.success)) }
        return r
    }
    /// A 2M page assigned to ASID 5 at GPA 0x200000.
    func assigned2M(validated: Bool = false) -> RMP {
        var r = rmp()
        expectEqual(r.rmpupdate(spa: Self.base, RMPUpdate(gpa: Self.M, assigned: true, size: .size2M, asid: 5)), .success)
        if validated { #expect(r.pvalidate(guest(Self.M, spa: Self.base), size: .size2M, validate: true) == .status(.success)) }
        return r
    }

    // §5 case 1
    @Test func rmpupdateAssignsAndResetsValidatedVMSAAndPermissions() throws {
        var r = assigned4K(validated: true)
        expectEqual(r.rmpupdate(spa: Self.base, RMPUpdate(gpa: 0x3000, assigned: true, asid: 6)), .success)
        let e = r[Self.base >> 12]
        expectTrue(e.assigned)
        expectEqual(e.asid, 6)
        expectEqual(e.gpa, 0x3000)
        expectTrue(!e.isLarge)
        expectTrue(!e.immutable)
        expectTrue(!e.validated)
        expectTrue(!e.vmsa)
        expectEqual(e.permissions(vmpl: 0), .all)
        expectEqual(e.permissions(vmpl: 1), [])
        expectEqual(e.permissions(vmpl: 3), [])
        expectEqual(e.state, .guestInvalid)
        try r.checkInvariants()
    }

    // §5 case 2
    @Test func rmpupdateOfImmutableEntryIsFailPermission() {
        var r = rmp()
        expectEqual(r.rmpupdate(spa: Self.base, RMPUpdate(assigned: true, immutable: true, asid: 0)), .success)
        let before = r[Self.base >> 12]
        expectEqual(before.state, .firmware)
        expectEqual(r.rmpupdate(spa: Self.base, RMPUpdate(assigned: false)), .failPermission)
        expectEqual(r[Self.base >> 12], before)
    }

    // §5 case 3
    @Test func rmpupdate2MWithMisalignedSPAIsFailInput() {
        var r = rmp()
        expectEqual(r.rmpupdate(spa: Self.base + 0x1000, RMPUpdate(gpa: 0, assigned: true, size: .size2M, asid: 5)), .failInput)
        expectEqual(r.rmpupdate(spa: Self.base, RMPUpdate(gpa: 0x1000, assigned: true, size: .size2M, asid: 5)), .failInput)
        expectEqual(r.rmpupdate(spa: 16 << 30, RMPUpdate(assigned: true, asid: 5)), .failInput)  // past the RMP
        expectEqual(r.rmpupdate(spa: Self.base, RMPUpdate(assigned: true, asid: 1024)), .failInput)
        expectEqual(r.chunksInUse, 0)
    }

    // §5 case 4
    @Test func rmpupdateOfARunningVMSAIsFailInUse() {
        var r = assigned4K()
        r.setInUse(Self.base >> pageShift, true)
        expectEqual(r.rmpupdate(spa: Self.base, RMPUpdate(assigned: false)), .failInUse)
        r.setInUse(Self.base >> pageShift, false)
        expectEqual(r.rmpupdate(spa: Self.base, RMPUpdate(assigned: false)), .success)
    }

    /// Every field of an entry round-trips through the chunk: held as flags by the region's
    /// formula when it follows it, whole aside when it does not; the chunk takes its formula
    /// from its first assigned entry and from a new one when no entry follows the old.
    @Test func everyFieldRoundTripsThroughFlagsAndAside() throws {
        var r = rmp()
        let base = Self.base >> pageShift
        var guestPage = RMPEntry()
        guestPage.assigned = true
        guestPage.asid = 5
        guestPage.gpa = 0x7000_0000
        guestPage.setPermissions(.all, vmpl: 0)
        r.set(base + 3, guestPage)  // sets the formula: GPA 0x7000_0000 - 3 pages, ASID 5
        var followers: [(UInt64, RMPEntry)] = []
        for (i, change) in [(4, { (e: inout RMPEntry) in e.validated = true }), (5, { $0.vmsa = true; $0.validated = true }),
                            (6, { $0.immutable = true })] as [(UInt64, (inout RMPEntry) -> Void)] {
            var e = guestPage
            e.gpa = 0x7000_0000 + (i - 3) << pageShift
            change(&e)
            followers.append((base + i, e))
        }
        var outliers: [(UInt64, RMPEntry)] = []
        for (i, change) in [(8, { (e: inout RMPEntry) in e.asid = 6 }), (9, { $0.gpa = 0x1234_5000 }), (10, { $0.setPermissions([.read], vmpl: 1) }),
                            (11, { $0.setPermissions([.read], vmpl: 0) }), (12, { $0.asid = 0; $0.hi = 0 }), (13, { $0.assigned = false; $0.asid = 0; $0.gpa = 0; $0.hi = 0; $0.validated = true })]
                            as [(UInt64, (inout RMPEntry) -> Void)] {
            var e = guestPage
            e.gpa = 0x7000_0000 + (i - 3) << pageShift
            change(&e)
            outliers.append((base + i, e))
        }
        for (p, e) in followers + outliers { r.set(p, e) }
        let c = r.code(Int(base >> 9))
        for (p, e) in followers {
            expectEqual(r[p], e)
            expectTrue(!r.flags[Int(c) << 9 | Int(p & 511)].contains(.aside), "\(e)")
        }
        for (p, e) in outliers {
            expectEqual(r[p], e)
            expectTrue(r.flags[Int(c) << 9 | Int(p & 511)].contains(.aside), "\(e)")
        }
        expectEqual(r.aside.count, outliers.count)
        expectEqual(r.assigned4KCount(base), 1 + 3 + 5)  // the unassigned 13 does not count
        try r.checkInvariants()
        // The page size: a 2M page is one entry; PSMASH expands it to 512 4K entries, all
        // held by the formula, and a 2M region's 512 agree while it is one.
        var large = guestPage
        large.isLarge = true
        large.validated = true
        large.gpa = 0x8000_0000
        let next = base + 512
        r.setRegion(next, large)
        var expected = large
        expected.gpa += 2 << pageShift
        expectEqual(r[next + 2], expected)
        expectEqual(r.psmash(spa: next << pageShift), .success)
        expected.isLarge = false
        expectEqual(r[next + 2], expected)
        expectEqual(r.aside.count, outliers.count)
        expectTrue(!r.flags[Int(r.code(Int(next >> 9))) << 9 | 2].contains(.aside))
        try r.checkInvariants()
        // Every entry but the outliers and one follower gone: the formula cannot move while
        // that follower holds it; once it goes too, the next assignment brings its own.
        for (p, _) in followers.dropFirst() + [(base + 3, guestPage)] { r.set(p, .hypervisor) }
        for (p, _) in outliers where p != base + 8 { r.set(p, .hypervisor) }
        r.set(followers[0].0, .hypervisor)
        expectEqual(r.aside.count, 1)  // ASID 6's page
        var other = outliers[0].1
        other.gpa = 0x9000_0000
        r.set(base + 20, other)  // ASID 6 again, at a GPA that makes entry 8 follow the new formula
        other.gpa = 0x9000_0000 - 12 << pageShift
        expectEqual(r[base + 8], outliers[0].1)
        expectEqual(r.aside.isEmpty, (outliers[0].1.gpa == other.gpa))
        try r.checkInvariants()
    }

    /// VMRUN takes only a page the RMP says is a VMSA; #VMEXIT of a page nobody runs on
    /// changes nothing.
    @Test func vmrunNeedsAVMSAPageAndVmexitARunningOne() {
        var r = assigned4K(validated: true)
        expectEqual(r.vmrun(spa: Self.base), .vmexitInvalid)  // assigned and validated, but no VMSA bit
        expectEqual(r.vmrun(spa: Self.base + 0x1000), .vmexitInvalid)  // a hypervisor page
        expectEqual(r.vmrun(spa: 16 << 30), .vmexitInvalid)  // past the RMP
        expectEqual(r.rmpadjust(guest(0x1000, spa: Self.base), size: .size4K, targetVMPL: 1, permissions: [], vmsa: true), .status(.success))
        expectEqual(r.vmexit(spa: Self.base), .notRunning)
        expectEqual(r.vmrun(spa: Self.base), .ok)
        expectEqual(r.rmpupdate(spa: Self.base, RMPUpdate(assigned: false)), .failInUse)
        expectEqual(r.vmexit(spa: Self.base), .ok)
        expectEqual(r.vmexit(spa: Self.base), .notRunning)
        expectEqual(SNPOutcome.vmexitInvalid.kind, .fault)
        expectEqual(SNPOutcome.notRunning.kind, .status)
    }

    @Test func rmpupdate2MOverAssigned4KIsFailOverlap() {
        var r = rmp()
        expectEqual(r.rmpupdate(spa: Self.base + 0x5000, RMPUpdate(gpa: 0x5000, assigned: true, asid: 5)), .success)
        expectEqual(r.assigned4KCount(Self.base >> 12), 1)
        expectEqual(r.rmpupdate(spa: Self.base, RMPUpdate(gpa: 0, assigned: true, size: .size2M, asid: 5)), .failOverlap)
        expectEqual(r.rmpupdate(spa: Self.base, RMPUpdate(assigned: false, size: .size2M)), .failOverlap)
    }

    @Test func rmpupdate4KInsideAssigned2MIsFailOverlap() {
        var r = assigned2M()
        expectEqual(r.rmpupdate(spa: Self.base + 0x3000, RMPUpdate(assigned: false)), .failOverlap)
        expectEqual(r.rmpupdate(spa: Self.base, RMPUpdate(assigned: false, size: .size2M)), .success)
        expectEqual(r.chunksInUse, 0)
    }

    @Test func rmpupdate2MWritesAll512EntriesWithContiguousGPAs() throws {
        let r = assigned2M()
        let last = r[(Self.base >> 12) + 511]
        expectTrue(last.assigned)
        expectTrue(last.isLarge)
        expectEqual(last.gpa, Self.M + 511 * 0x1000)
        expectEqual(last.asid, 5)
        expectEqual(r.assigned4KCount(Self.base >> 12), 0)
        try r.checkInvariants()
    }

    // §5 case 5
    @Test func psmashSplitsA2MPageKeepingValidatedAndPermissions() throws {
        var r = assigned2M(validated: true)
        expectEqual(r.psmash(spa: Self.base), .success)
        for i: UInt64 in [0, 1, 511] {
            let e = r[(Self.base >> 12) + i]
            expectTrue(e.assigned)
            expectTrue(!e.isLarge)
            expectTrue(e.validated)
            expectEqual(e.gpa, Self.M + i * 0x1000)
            expectEqual(e.permissions(vmpl: 0), .all)
        }
        expectEqual(r.assigned4KCount(Self.base >> 12), 512)
        try r.checkInvariants()
    }

    /// A 2M page held as 512 entries (the storage `expand` makes for single-entry changes)
    /// still reads as 2M through `isLarge(regionOf:)`; PSMASH over it, entry by entry, makes
    /// it 4K.
    @Test func aChunkedTwoMegPageReadsAsTwoMegUntilPsmash() throws {
        var r = assigned2M(validated: true)
        let pfn = Self.base >> 12
        r.expand(Int(pfn >> 9))
        expectTrue(r.code(Int(pfn >> 9)) >= 0)
        expectTrue(r.isLarge(regionOf: pfn + 7))
        try r.checkInvariants()
        expectEqual(r.psmash(spa: Self.base), .success)
        expectTrue(!r.isLarge(regionOf: pfn + 7))
        expectTrue(!r[pfn].isLarge)
        try r.checkInvariants()
    }

    // §5 case 6
    @Test func psmashOfMisalignedSPAIsFailInput() {
        var r = assigned2M()
        expectEqual(r.psmash(spa: Self.base + 0x1000), .failInput)
    }

    @Test func psmashOfA4KEntryIsSeven() {
        var r = assigned4K()
        expectEqual(r.psmash(spa: Self.base), .failNotExpandable)
        expectEqual(SNPStatus.failNotExpandable.rawValue, 7)
        var empty = rmp()
        expectEqual(empty.psmash(spa: Self.base), .failNotExpandable)
    }

    @Test func psmashOfARunningPageIsFailInUse() {
        var r = assigned2M()
        r.setInUse((Self.base + 0x7000) >> pageShift, true)
        expectEqual(r.psmash(spa: Self.base), .failInUse)
    }

    // §5 case 7
    @Test func pvalidate4KSetsValidated() {
        var r = assigned4K()
        expectEqual(r.pvalidate(guest(0x1000, spa: Self.base), size: .size4K, validate: true), .status(.success))
        expectTrue(r[Self.base >> 12].validated)
        expectEqual(r[Self.base >> 12].state, .guestValid)
    }

    @Test func pvalidateWithNothingToChangeSetsCF() {
        var r = assigned4K(validated: true)
        let out = r.pvalidate(guest(0x1000, spa: Self.base), size: .size4K, validate: true)
        expectEqual(out, .status(.success, unchanged: true))
        expectEqual(out.description, "ok (CF=1)")
    }

    // §5 case 8
    @Test func pvalidate2MOver4KEntriesIsFailSizeMismatch() {
        var r = rmp()
        expectEqual(r.rmpupdate(spa: Self.base, RMPUpdate(gpa: Self.M, assigned: true, asid: 5)), .success)
        expectEqual(r.pvalidate(guest(Self.M, spa: Self.base), size: .size2M, validate: true), .status(.failSizeMismatch))
        expectTrue(!r[Self.base >> 12].validated)
    }

    @Test func pvalidate4KInside2MEntryIsNPFWithSizem() {
        var r = assigned2M()
        let out = r.pvalidate(guest(Self.M + 0x3000, spa: Self.base + 0x3000), size: .size4K, validate: true)
        expectEqual(out, .npf([.rmp, .enc, .sizem]))
        expectEqual(out.description, "NPF(RMP|ENC|SIZEM)")
    }

    // §5 case 9
    @Test(arguments: [(UInt32(6), UInt64(0x1000)), (5, 0x2000)])
    func pvalidateWithASIDOrGPAMismatchIsNPF(_ asid: UInt32, _ gpa: UInt64) {
        var r = assigned4K()
        expectEqual(r.pvalidate(guest(gpa, spa: Self.base, asid: asid), size: .size4K, validate: true), .npf([.rmp, .enc]))
    }

    @Test func pvalidateOfAnUnassignedPageIsNPF() {
        var r = rmp()
        expectEqual(r.pvalidate(guest(0x1000, spa: Self.base), size: .size4K, validate: true), .npf([.rmp, .enc]))
    }

    @Test func pvalidateBelowVMPL0IsGP() {
        var r = assigned4K()
        for vmpl in 1...3 {
            expectEqual(r.pvalidate(guest(0x1000, spa: Self.base, vmpl: vmpl), size: .size4K, validate: true), .gp(0))
            expectEqual(r.pvalidate(guest(0x1000, spa: Self.base, vmpl: vmpl), size: .size2M, validate: true), .gp(0))  // before FAIL_INPUT
        }
        expectEqual(SNPOutcome.gp(0).description, "#GP(0)")
        expectEqual(SNPOutcome.gp(0).kind, .fault)
    }

    /// verismo op_rmpadjust: the 2M alignment check (FAIL_INPUT) comes before the VMPL
    /// comparison (FAIL_PERMISSION); then the VMPL comparison before any RMP check.
    @Test func rmpadjustChecksAlignmentBeforeTheVMPL() {
        var r = assigned4K()
        expectEqual(r.rmpadjust(guest(0x1000, spa: Self.base + 0x1000, vmpl: 1), size: .size2M, targetVMPL: 1, permissions: .read, vmsa: false), .status(.failInput))
        expectEqual(r.rmpadjust(guest(0x1000, spa: Self.base + 0x1000, vmpl: 2), size: .size2M, targetVMPL: 0, permissions: .read, vmsa: false), .status(.failInput))
        // Aligned, the VMPL comparison answers before the ownership check (the page at 0 is not this guest's).
        expectEqual(r.rmpadjust(guest(0, spa: Self.base, vmpl: 1), size: .size2M, targetVMPL: 1, permissions: .read, vmsa: false), .status(.failPermission))
    }

    // §5 case 10
    @Test func privateReadOfUnvalidatedPageIsVC404() {
        let r = assigned4K()
        let out = r.guestAccess(guest(0x1000, spa: Self.base), write: false, encrypted: true)
        expectEqual(out, .vc(0x404))
        expectEqual(out.description, "#VC(0x404)")
    }

    @Test func privateAccessChecksInPriorityOrder() {
        var r = assigned2M()  // not validated, 2M RMP
        // Page size differs from the 4K nested mapping: NPF, before the #VC for Validated.
        expectEqual(r.guestAccess(guest(Self.M, spa: Self.base, npt: .size4K), write: false, encrypted: true), .npf([.rmp, .enc]))
        expectEqual(r.guestAccess(guest(Self.M, spa: Self.base, npt: .size2M), write: false, encrypted: true), .vc(0x404))
        expectEqual(r.pvalidate(guest(Self.M, spa: Self.base), size: .size2M, validate: true), .status(.success))
        expectEqual(r.guestAccess(guest(Self.M, spa: Self.base, npt: .size2M), write: true, encrypted: true), .ok)
        // VMPL1 has no permissions yet: NPF with the VMPL bit, lowest priority.
        expectEqual(r.guestAccess(guest(Self.M, spa: Self.base, vmpl: 1, npt: .size2M), write: false, encrypted: true), .npf([.rmp, .enc, .vmpl]))
        // Another ASID: ownership fails first.
        expectEqual(r.guestAccess(guest(Self.M, spa: Self.base, asid: 9, vmpl: 1, npt: .size2M), write: false, encrypted: true), .npf([.rmp, .enc]))
    }

    // §5 case 11
    @Test func sharedWriteToAssignedPageIsNPF() {
        let r = assigned4K()
        expectEqual(r.guestAccess(guest(0x1000, spa: Self.base), write: true, encrypted: false), .npf(.rmp))
        expectEqual(r.guestAccess(guest(0x1000, spa: Self.base), write: false, encrypted: false), .ok)
        expectEqual(r.guestAccess(guest(0x1000, spa: Self.base + 0x1000), write: true, encrypted: false), .ok)
    }

    // §5 case 12
    @Test func hostWriteThrough2MMappingOverOneAssigned4KPageFaults() {
        var r = rmp()
        expectEqual(r.rmpupdate(spa: Self.base + 0x1000, RMPUpdate(gpa: 0, assigned: true, asid: 5)), .success)
        let other = Self.base + 0x1f_f000
        expectEqual(r.hostAccess(spa: other, write: true, mappingSize: .size2M), .hostRMPFault)
        expectEqual(r.hostAccess(spa: other, write: true, mappingSize: .size1G), .hostRMPFault)
        expectEqual(r.hostAccess(spa: other, write: false, mappingSize: .size2M), .ok)
        expectEqual(r.hostAccess(spa: other, write: true, mappingSize: .size4K), .ok)
        expectEqual(r.hostAccess(spa: Self.base + 0x1000, write: true, mappingSize: .size4K).description, "#PF(RMP)")
        expectEqual(r.hostAccess(spa: other, write: false, walk: true, mappingSize: .size2M), .hostRMPFault)
        expectEqual(r.hostAccess(spa: Self.base + M(2), write: true, mappingSize: .size2M), .ok)  // the next 2M region
    }
    func M(_ n: UInt64) -> UInt64 { n * Self.M }

    @Test func dmaWriteToAssignedPageIsAnIOMMURMPFault() {
        let r = assigned4K()
        expectEqual(r.dmaWrite(spa: Self.base).description, "RMP_PAGE_FAULT")
        expectEqual(r.dmaWrite(spa: Self.base + 0x1000), .ok)
    }

    // §5 case 13
    @Test func rmpadjustOfSameOrHigherVMPLIsFailPermission() {
        var r = assigned4K(validated: true)
        expectEqual(r.rmpadjust(guest(0x1000, spa: Self.base, vmpl: 1), size: .size4K, targetVMPL: 1, permissions: .read, vmsa: false), .status(.failPermission))
        expectEqual(r.rmpadjust(guest(0x1000, spa: Self.base, vmpl: 1), size: .size4K, targetVMPL: 0, permissions: .read, vmsa: false), .status(.failPermission))
    }

    // §5 case 14
    @Test func rmpadjustSizeRules() {
        var r = assigned4K(validated: true)
        expectEqual(r.rmpadjust(guest(0, spa: Self.base), size: .size2M, targetVMPL: 1, permissions: .read, vmsa: false), .npf([.rmp, .enc]))
        var r4 = rmp()
        expectEqual(r4.rmpupdate(spa: Self.base, RMPUpdate(gpa: Self.M, assigned: true, asid: 5)), .success)
        expectEqual(r4.pvalidate(guest(Self.M, spa: Self.base), size: .size4K, validate: true), .status(.success))
        expectEqual(r4.rmpadjust(guest(Self.M, spa: Self.base), size: .size2M, targetVMPL: 1, permissions: .read, vmsa: false), .status(.failSizeMismatch))
        var r2 = assigned2M(validated: true)
        expectEqual(r2.rmpadjust(guest(Self.M + 0x1000, spa: Self.base + 0x1000), size: .size4K, targetVMPL: 1, permissions: .read, vmsa: false), .npf([.rmp, .enc, .sizem]))
    }

    @Test func rmpadjustGrantsOnlyWhatTheCallerHas() throws {
        var r = assigned4K(validated: true)
        let g0 = guest(0x1000, spa: Self.base), g1 = guest(0x1000, spa: Self.base, vmpl: 1)
        expectEqual(r.rmpadjust(g0, size: .size4K, targetVMPL: 1, permissions: [.read, .write], vmsa: false), .status(.success))
        expectEqual(r.rmpadjust(g1, size: .size4K, targetVMPL: 2, permissions: [.read, .executeUser], vmsa: false), .status(.failPermission))
        expectEqual(r.rmpadjust(g1, size: .size4K, targetVMPL: 2, permissions: .read, vmsa: false), .status(.success))
        expectEqual(r[Self.base >> 12].permissions(vmpl: 2), .read)
        expectEqual(r.guestAccess(guest(0x1000, spa: Self.base, vmpl: 2), write: true, encrypted: true), .npf([.rmp, .enc, .vmpl]))
        expectEqual(r.guestAccess(guest(0x1000, spa: Self.base, vmpl: 2), write: false, encrypted: true), .ok)
        try r.checkInvariants()
    }

    @Test func rmpadjustOfUnvalidatedPageIsVC() {
        var r = assigned4K()
        expectEqual(r.rmpadjust(guest(0x1000, spa: Self.base), size: .size4K, targetVMPL: 1, permissions: .read, vmsa: false), .vc(0x404))
    }

    @Test func rmpadjustSetsVMSAOnlyFromVMPL0() {
        var r = assigned4K(validated: true)
        expectEqual(r.rmpadjust(guest(0x1000, spa: Self.base), size: .size4K, targetVMPL: 1, permissions: .all, vmsa: true), .status(.success))
        expectTrue(r[Self.base >> 12].vmsa)
        expectEqual(r.rmpadjust(guest(0x1000, spa: Self.base, vmpl: 1), size: .size4K, targetVMPL: 2, permissions: .read, vmsa: false), .status(.success))
        expectTrue(r[Self.base >> 12].vmsa)  // VMPL1 cannot clear it
    }

    @Test func rmpqueryReportsPermissionsVMSAAndSize() {
        var r = assigned4K(validated: true)
        expectEqual(r.rmpadjust(guest(0x1000, spa: Self.base), size: .size4K, targetVMPL: 1, permissions: [.read, .write], vmsa: false), .status(.success))
        expectEqual(r.rmpquery(guest(0x1000, spa: Self.base), targetVMPL: 1).description, "ok perms=0x3 vmsa=0 pagesize=4K")
        expectEqual(r.rmpquery(guest(0x1000, spa: Self.base, vmpl: 2), targetVMPL: 1), .status(.failPermission))
        expectEqual(assigned4K().rmpquery(guest(0x1000, spa: Self.base), targetVMPL: 0), .vc(0x404))
    }

    @Test func rmpreadShowsHpageRegionStatus() {
        var r = rmp()
        expectEqual(r.rmpupdate(spa: Self.base + 0x2000, RMPUpdate(gpa: 0x2000, assigned: true, asid: 5)), .success)
        expectEqual(r.rmpread(spa: Self.base).description, "ok gpa=0x0 assigned=0 pagesize=4K hpage_region_status=1 immutable=0 asid=0")
        expectEqual(r.rmpread(spa: Self.base + 0x2000).description, "ok gpa=0x2000 assigned=1 pagesize=4K hpage_region_status=0 immutable=0 asid=5")
        expectEqual(r.rmpread(spa: Self.base + 0x1001), .status(.failInput))
        let big = assigned2M()
        expectEqual(big.rmpread(spa: Self.base + 0x5000).description, "ok gpa=0x205000 assigned=1 pagesize=2M hpage_region_status=0 immutable=0 asid=5")
    }

    @Test func pageStatesAreNamedAsTheFirmwareNamesThem() {
        var e = RMPEntry()
        expectEqual(e.state, .hypervisor)
        e.assigned = true
        expectEqual(e.state, .reclaim)
        e.immutable = true
        expectEqual(e.state, .firmware)
        e.vmsa = true
        expectEqual(e.state, .context)
        e = RMPEntry(); e.assigned = true; e.asid = 3; e.immutable = true
        expectEqual(e.state.description, "Pre-Guest")
        e.immutable = false
        expectEqual(e.state, .guestInvalid)
        e.validated = true
        expectEqual(e.state, .guestValid)
    }

    @Test func memoryGrowsWithTouchedRegionsOnly() {
        var r = RMP(end: 1 << 40)
        expectEqual(r.chunksInUse, 0)
        for i: UInt64 in 0..<10 { _ = r.rmpupdate(spa: i << 30, RMPUpdate(assigned: true, asid: 1)) }
        expectEqual(r.chunksInUse, 10)
        for i: UInt64 in 0..<10 { _ = r.rmpupdate(spa: i << 30, RMPUpdate(assigned: false)) }
        expectEqual(r.chunksInUse, 0)
    }
}

/// GHCB page-state-change formats (hardware-specs §1.4, §5 cases 15-17).
struct PageStateChangeTests {
    // §5 case 15
    @Test func endEntry253IsInvalidHeader() {
        let r = PSCRequest(endEntry: 253, entries: [])
        expectEqual(r.validate().exitInfo2, 0x1_0000_0001)
    }

    // §5 case 16
    @Test func misaligned2MGfnOrCurPage513IsInvalidEntry() {
        let misaligned = PSCRequest(endEntry: 0, entries: [PSCEntry(gfn: 0x201, operation: 2, size2M: true)])
        #expect(misaligned.validate() == (0x1_0000_0002, 0))
        let overrun = PSCRequest(endEntry: 1, entries: [PSCEntry(gfn: 0, operation: 1, size2M: false),
                                                         PSCEntry(gfn: 0x200, operation: 1, size2M: true, curPage: 513)])
        #expect(overrun.validate() == (0x1_0000_0002, 1))
        let fine = PSCRequest(endEntry: 0, entries: [PSCEntry(gfn: 0x200, operation: 1, size2M: true, curPage: 512)])
        expectEqual(fine.validate().exitInfo2, 0)
        let done = PSCRequest(curEntry: 2, endEntry: 1, entries: [])
        expectEqual(done.validate().exitInfo2, 0)
    }

    @Test func entryLayoutRoundTrips() {
        let e = PSCEntry(gfn: 0xabcde, operation: 2, size2M: true, curPage: 7)
        expectEqual(e.raw, 7 | 0xabcde << 12 | 2 << 52 | 1 << 56)
        expectEqual(PSCEntry(raw: e.raw), e)
        expectEqual(e.gfn, 0xabcde)
        expectEqual(e.operation, 2)
        expectTrue(e.size2M)
        expectEqual(e.curPage, 7)
        expectEqual(e.pages, 512)
    }

    // §5 case 17
    @Test func msrRequestForSharedParsesAndSucceeds() throws {
        let gfn: UInt64 = 0x12345
        let msr = 0x014 | gfn << 12 | 2 << 52
        let request = try #require(PSCMSRRequest.parse(msr)).get()
        expectEqual(request, PSCMSRRequest(gfn: gfn, operation: .makeShared))
        expectEqual(request.msr, msr)
        let response = PSCMSRRequest.response(error: 0)
        expectEqual(response, 0x015)
        expectEqual(response >> 32, 0)
    }

    @Test func msrRequestWithBadOpGetsTheErrorResponse() {
        guard case .failure(let e)? = PSCMSRRequest.parse(0x014 | 1 << 12 | 3 << 52) else {
            Issue.record("PSMASH over the MSR protocol was accepted")
            return
        }
        expectEqual(e.response, UInt64(1) << 63 | 0x015)
        expectEqual(PSCMSRRequest.parse(0x012), nil)  // GHCB_MSR_REG_GPA_REQ, not a PSC request
    }
}

/// The software TLB: one comparison decides a hit; flushes empty it.
struct SoftTLBTests {
    @Test func fillLookupAndFlush() {
        var tlb = SoftTLB()
        expectEqual(tlb.lookup(0x1234_5000), nil)
        tlb.fill(0x1234_5678, pa: 0x9000_0000, size: .size2M)
        expectEqual(tlb.lookup(0x1234_5abc), 0x9000_0abc)
        expectEqual(tlb.leafSize(0x1234_5000), .size2M)
        tlb.fill(0x1234_5000 + (256 << 12), pa: 0x1000, size: .size4K)  // same slot: evicts
        expectEqual(tlb.lookup(0x1234_5000), nil)
        tlb.invalidate(.all)
        expectEqual(tlb.lookup(0x1234_5000 + (256 << 12)), nil)
        tlb.fill(0x7000, pa: 0x8000, size: .size4K)
        tlb.invalidate(.page(0x7fff))
        expectEqual(tlb.lookup(0x7000), nil)
    }

    @Test func entriesKeepTheLeafsAttributesAndASIDFlushesKeepGlobalOnes() {
        var tlb = SoftTLB()
        tlb.fill(0x1000, pa: 0x5000, size: .size4K, attributes: [.present, .writable, .global, .encrypted])
        tlb.fill(0x2000, pa: 0x6000, size: .size4K, attributes: [.present, .user])
        expectEqual(tlb.entry(0x1234)?.attributes, [.present, .writable, .global, .encrypted])
        expectEqual(tlb.entry(0x1234)?.pa, 0x5000)
        tlb.invalidate(.nonGlobal)
        expectEqual(tlb.validEntries.map(\.va), [0x1000])
    }
}
