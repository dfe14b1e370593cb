import Foundation
import Testing
import HostKernel
import PageTables
@testable import Hypervisor
import Expectations

/// pKVM's ownership machinery against its own oracle: the ownership selftest of
/// mem_protect.c (pkvm_ownership_selftest), every call with the result it asserts and the
/// state tuple after it; the range rules; the host stage-2's lazy map, block breaks and
/// owner annotations; EL2's wiping; and the invariant.
struct PKVMTests {
    static let ram = [0x4000_0000..<0x8000_0000 as Range<UInt64>]
    static let pfn: UInt64 = 0x40200  // the selftest page
    static let gfn: UInt64 = 1 << (PKVM.guestIPABits - 1 - 12)  // selftest_ipa(): BIT(ia_bits - 1)

    enum Call {
        case donateHyp, shareHyp, unshareHyp, hypDonateHost, shareFFA, unshareFFA, pin, unpin
        case shareGuest(UInt64), unshareGuest(UInt64), donateGuest(UInt64), relinquish
    }

    typealias S = PKVMPageState

    /// pkvm_ownership_selftest, call by call: (call, expected result, host, hyp, guest[gfn],
    /// guest[gfn + 1] after it). Android Common Kernel android16-6.12 mem_protect.c; the
    /// v6.16 selftest is the same without the donate_guest and relinquish calls.
    static let selftest: [(Call, Errno?, S, S, S, S)] = {
        let e = Errno.EPERM, g = gfn
        var t: [(Call, Errno?, S, S, S, S)] = []
        var st = (S.noPage, S.owned, S.noPage, S.noPage)
        func c(_ call: Call, _ r: Errno?) { t.append((call, r, st.0, st.1, st.2, st.3)) }
        // The selftest's page comes from the hyp's pool: make it so first.
        c(.donateHyp, nil)
        for call in [Call.donateHyp, .shareHyp, .unshareHyp, .shareFFA, .unshareFFA, .pin, .shareGuest(g)] { c(call, e) }
        c(.unshareGuest(g), .ENOENT); c(.donateGuest(g), e)
        st = (.owned, .noPage, .noPage, .noPage)
        c(.hypDonateHost, nil); c(.hypDonateHost, e); c(.unshareHyp, e); c(.unshareFFA, e); c(.unshareGuest(g), .ENOENT); c(.pin, e)
        st = (.sharedOwned, .sharedBorrowed, .noPage, .noPage)
        c(.shareHyp, nil)
        for call in [Call.shareHyp, .donateHyp, .shareFFA, .hypDonateHost, .shareGuest(g)] { c(call, e) }
        c(.unshareGuest(g), .ENOENT); c(.donateGuest(g), e)
        c(.pin, nil); c(.pin, nil); c(.unpin, nil); c(.unshareHyp, .EBUSY)
        for call in [Call.shareHyp, .donateHyp, .shareFFA, .hypDonateHost, .shareGuest(g)] { c(call, e) }
        c(.unshareGuest(g), .ENOENT); c(.donateGuest(g), e)
        c(.unpin, nil)
        st = (.owned, .noPage, .noPage, .noPage)
        c(.unshareHyp, nil)
        st = (.sharedOwned, .noPage, .noPage, .noPage)
        c(.shareFFA, nil)
        for call in [Call.shareFFA, .donateHyp, .shareHyp, .unshareHyp, .hypDonateHost, .shareGuest(g)] { c(call, e) }
        c(.unshareGuest(g), .ENOENT); c(.donateGuest(g), e); c(.pin, e)
        st = (.owned, .noPage, .noPage, .noPage)
        c(.unshareFFA, nil); c(.unshareFFA, e)
        st = (.sharedOwned, .noPage, .sharedBorrowed, .noPage)
        c(.shareGuest(g), nil)
        for call in [Call.shareGuest(g), .shareFFA, .donateHyp, .shareHyp, .unshareHyp, .hypDonateHost, .donateGuest(g), .pin] { c(call, e) }
        st.3 = .sharedBorrowed
        c(.shareGuest(g + 1), nil)
        st.2 = .noPage
        c(.unshareGuest(g), nil)
        st = (.owned, .noPage, .noPage, .noPage)
        c(.unshareGuest(g + 1), nil)
        st = (.noPage, .noPage, .owned, .noPage)
        c(.donateGuest(g), nil)
        for call in [Call.donateGuest(g), .donateGuest(g + 1), .shareGuest(g), .shareGuest(g + 1), .shareFFA, .donateHyp, .shareHyp, .unshareHyp, .hypDonateHost] { c(call, e) }
        st = (.owned, .noPage, .noPage, .noPage)
        c(.relinquish, nil)
        st = (.noPage, .owned, .noPage, .noPage)
        c(.donateHyp, nil)
        return t
    }()

    static func apply(_ call: Call, _ p: inout PKVM) -> Errno? {
        let status: KernelStatus
        switch call {
        case .donateHyp: status = p.hostDonateHyp(pfn: pfn, nrPages: 1)
        case .shareHyp: status = p.hostShareHyp(pfn: pfn)
        case .unshareHyp: status = p.hostUnshareHyp(pfn: pfn)
        case .hypDonateHost: status = p.hypDonateHost(pfn: pfn, nrPages: 1)
        case .shareFFA: status = p.hostShareFFA(pfn: pfn, nrPages: 1)
        case .unshareFFA: status = p.hostUnshareFFA(pfn: pfn, nrPages: 1)
        case .pin: status = p.hypPinSharedMem(pfn: pfn, nrPages: 1)!
        case .unpin:
            let unpinned = p.hypUnpinSharedMem(pfn: pfn, nrPages: 1)
            expectTrue(unpinned)
            return nil
        case .shareGuest(let g): status = p.hostShareGuest(pfn: pfn, gfn: g, nrPages: 1, guest: 0, prot: .rwx)
        case .unshareGuest(let g): status = p.hostUnshareGuest(gfn: g, nrPages: 1, guest: 0)
        case .donateGuest(let g): status = p.hostDonateGuest(pfn: pfn, gfn: g, nrPages: 1, guest: 0)
        case .relinquish:
            let (s, pa) = p.guestRelinquishToHost(guest: 0, ipa: gfn << pageShift)
            expectEqual(pa, pfn << pageShift)  // WARN_ON(pa != phys)
            status = s
        }
        if case .error(let e) = status { return e }
        return nil
    }

    @Test func theOwnershipSelftestCallByCall() throws {
        var p = PKVM(memory: Self.ram, guests: [("selftest", true)])
        expectEqual(Self.selftest.count, 73)  // the setup donation, 70 assert_transition_res, 2 unpins
        for (i, (call, result, host, hyp, g0, g1)) in Self.selftest.enumerated() {
            let r = Self.apply(call, &p)
            expectEqual(r, result, "call \(i + 1) \(call)")
            expectEqual(p.stateTuple(pa: Self.pfn << pageShift, guest: 0, gfn: Self.gfn), [host, hyp, g0, g1], "after call \(i + 1) \(call)")
            if case .shareGuest(let g) = call, g == Self.gfn + 1, result == nil {
                expectEqual(p.page(Self.pfn).hostShareGuestCount, 2)  // WARN_ON(host_share_guest_count != 2)
            }
            if case .unshareHyp = call, result == .EBUSY { #expect(p.page(Self.pfn).refcount == 1) }  // hyp_page_count(virt) != 1
            try p.checkInvariants()
        }
        expectEqual(p.page(Self.pfn).refcount, 0)
        expectEqual(p.stats.pagesPoisoned, 1)
        expectEqual(p.stats.warnings, 0)
    }

    /// __guest_check_transition_size, the protection check, and the memory checks, each with
    /// its errno; a saturated share count is -EBUSY.
    @Test func rangeRulesReturnTheirErrno() throws {
        var p = PKVM(memory: Self.ram, guests: [("vm", false)])
        let r1 = p.hostShareGuest(pfn: 0x40200, gfn: 0x200, nrPages: 2, guest: 0, prot: .rwx)
        expectEqual(r1, .error(.EINVAL))
        let r2 = p.hostShareGuest(pfn: 0x40201, gfn: 0x200, nrPages: 512, guest: 0, prot: .rwx)
        expectEqual(r2, .error(.EINVAL))
        let r3 = p.hostShareGuest(pfn: 0x40200, gfn: 0x201, nrPages: 512, guest: 0, prot: .rwx)
        expectEqual(r3, .error(.EINVAL))
        let r4 = p.hostShareGuest(pfn: 0x40200, gfn: 0x200, nrPages: 1, guest: 0, prot: [.r, .device])
        expectEqual(r4, .error(.EINVAL))
        let r5 = p.hostShareGuest(pfn: 0x40200, gfn: 0x200, nrPages: 1, guest: 0, prot: [.normalNC])
        expectEqual(r5, .error(.EINVAL))
        let r6 = p.hostShareGuest(pfn: 0x10000, gfn: 0x200, nrPages: 1, guest: 0, prot: .rwx)
        expectEqual(r6, .error(.EPERM))  // MMIO
        let r7 = p.hostShareGuest(pfn: 0x7ffff, gfn: 0x200, nrPages: 512, guest: 0, prot: .rwx)
        expectEqual(r7, .error(.EINVAL))  // misaligned
        let r8 = p.hostDonateHyp(pfn: 0x7ffff, nrPages: 2)
        expectEqual(r8, .error(.EINVAL))  // RAM into MMIO
        let r9 = p.hostDonateHyp(pfn: 0x80000, nrPages: 1)
        expectEqual(r9, .error(.EPERM))  // past RAM
        let r10 = p.hostShareFFA(pfn: 0x40200, nrPages: 0)
        expectEqual(r10, .ok)  // nothing to share: Linux loops over no page
        // A 2M share, then unsharing it at the wrong size, then right.
        let r11 = p.hostShareGuest(pfn: 0x40200, gfn: 0x200, nrPages: 512, guest: 0, prot: .rwx)
        expectEqual(r11, .ok)
        expectEqual(p.guests[0].stage2.leafCounts.size2M, 1)
        let r12 = p.hostUnshareGuest(gfn: 0x200, nrPages: 1, guest: 0)
        expectEqual(r12, .error(.E2BIG))
        let r13 = p.hostUnshareGuest(gfn: 0x200, nrPages: 512, guest: 0)
        expectEqual(r13, .ok)
        let r14 = p.hostUnshareGuest(gfn: 0x200, nrPages: 512, guest: 0)
        expectEqual(r14, .error(.ENOENT))
        // The share count at U32_MAX: the next share is -EBUSY, and nothing changed.
        let r15 = p.hostShareGuest(pfn: 0x40300, gfn: 0x300, nrPages: 1, guest: 0, prot: .rwx)
        expectEqual(r15, .ok)
        p.vmemmap[0x40300]!.hostShareGuestCount = .max
        let r16 = p.hostShareGuest(pfn: 0x40300, gfn: 0x301, nrPages: 1, guest: 0, prot: .rwx)
        expectEqual(r16, .error(.EBUSY))
        expectEqual(p.guestState(0, ipa: 0x301 << pageShift), .noPage)
        expectEqual(p.stats.warnings, 0)
    }

    /// The host stage-2: the lazy map takes the largest block inside the memory region; a
    /// donation breaks it (one invalidation of the host VMID) and leaves a 4K annotation; the
    /// rest refaults in the largest pieces that avoid it; accesses to the annotated page are
    /// refused (-EPERM); giving it back leaves an empty entry that refaults.
    @Test func hostStage2LazyMapBlockBreakAndAnnotation() throws {
        var p = PKVM(memory: Self.ram, guests: [])
        let r17 = p.hostFault(0x4020_0000)
        expectEqual(r17, nil)
        expectEqual(p.hostStage2.leafCounts, LeafCounts(size1G: 1))
        let r18 = p.hostDonateHyp(pfn: 0x40201, nrPages: 1)
        expectEqual(r18, .ok)
        expectEqual(p.hostStage2.leafCounts, LeafCounts())
        let r19 = p.takePendingHostFlushes()
        expectEqual(p.hostStage2.breakBeforeMakes, 1)
        expectEqual(p.stats.hostStage2BlockBreaks, 1)
        expectEqual(p.stats.hostTLBInvalidations, 1)
        expectEqual(r19, 1)
        let e = p.hostStage2.entry(holding: VirtAddr(0x4020_1000))
        expectEqual(e.level, 1)
        expectEqual(e.entry.pkvmOwner, .hyp)
        let r20 = p.hostFault(0x4020_1000)
        expectEqual(r20, .EPERM)
        let r21 = p.hostFault(0x4020_0000)
        expectEqual(r21, nil)  // same 2M: a page
        let r22 = p.hostFault(0x4040_0000)
        expectEqual(r22, nil)  // another 2M: a block
        expectEqual(p.hostStage2.leafCounts, LeafCounts(size4K: 1, size2M: 1))
        expectTrue(p.hypMaps(0x4020_1000))
        let r23 = p.hypDonateHost(pfn: 0x40201, nrPages: 1)
        expectEqual(r23, .ok)
        expectTrue(!p.hypMaps(0x4020_1000))
        expectTrue(p.hostStage2.entry(holding: VirtAddr(0x4020_1000)).entry.isNone)
        expectEqual(p.stats.hostTLBInvalidations, 1)  // an annotation is not live: no invalidation
        let r24 = p.hostFault(0x4020_1000)
        expectEqual(r24, nil)
        expectEqual(p.stats.hostStage2Maps, 4)
        expectEqual(p.stats.hostStage2Aborts, 1)
        // MMIO outside RAM is mapped too, in the largest block inside its gap ([0, 1G): a 1G block).
        let r25 = p.hostFault(0x0900_0000)
        expectEqual(r25, nil)
        expectEqual(p.hostStage2.leafCounts, LeafCounts(size4K: 2, size2M: 1, size1G: 1))
        try p.hostStage2.checkInvariants()
        try p.checkInvariants()
    }

    /// A donated page keeps its contents; relinquish, forced reclaim and teardown wipe what
    /// the guest owned before the host has it again; a page the host still references is
    /// -EBUSY; a VM that is not protected relinquishes nothing.
    @Test func elTwoWipesWhatItHandsBack() throws {
        var p = PKVM(memory: Self.ram, guests: [("pvm", true), ("vm", false)])
        let r26 = p.hostDonateGuest(pfn: 0x40010, gfn: 0x10, nrPages: 3, guest: 0)
        expectEqual(r26, .ok)
        expectEqual(p.pageContents(0x4001_0000), .host)
        let r27 = p.guestAccess(guest: 0, ipa: 0x10 << pageShift, write: true)
        expectEqual(r27?.allowed, true)
        let r28 = p.guestAccess(guest: 0, ipa: 0x11 << pageShift, write: true)
        expectEqual(r28?.allowed, true)
        expectEqual(p.pageContents(0x4001_0000), .guest(0))
        p.vmemmap[0x40010, default: HypPage()].refcount = 1
        let r29 = p.guestRelinquishToHost(guest: 0, ipa: 0x10 << pageShift)
        expectEqual(r29.status, .error(.EBUSY))
        p.vmemmap[0x40010]!.refcount = 0
        let r30 = p.guestRelinquishToHost(guest: 0, ipa: 0x10 << pageShift)
        #expect(r30 == (.ok, 0x4001_0000))
        expectEqual(p.pageContents(0x4001_0000), .zeros)
        expectEqual(p.hostState(0x4001_0000), .owned)
        let r31 = p.hostForceReclaimPageGuest(pfn: 0x40010)
        expectEqual(r31, .error(.EPERM))  // the host's again
        let r32 = p.hostForceReclaimPageGuest(pfn: 0x40011)
        expectEqual(r32, .ok)
        expectEqual(p.pageContents(0x4001_1000), .zeros)
        let r33 = p.teardown(guest: 0)
        #expect(r33 == (reclaimed: 1, poisoned: 1))
        expectEqual(p.stats.pagesPoisoned, 3)
        expectTrue(p.vmemmap.isEmpty)
        expectTrue(p.donated.isEmpty)
        let r34 = p.hostDonateGuest(pfn: 0x40020, gfn: 0x20, nrPages: 1, guest: 1)
        expectEqual(r34, .ok)
        let r35 = p.guestRelinquishToHost(guest: 1, ipa: 0x20 << pageShift)
        #expect(r35 == (.ok, 0))  // not protected: a no-op
        let r36 = p.enableMTE(guest: 0, systemSupportsMTE: true)
        expectEqual(r36, .error(.EINVAL))
        let r37 = p.enableMTE(guest: 1, systemSupportsMTE: false)
        expectEqual(r37, .error(.EINVAL))
        let r38 = p.enableMTE(guest: 1, systemSupportsMTE: true)
        expectEqual(r38, .ok)
        try p.checkInvariants()
    }

    /// The invariant catches what the transitions' callers must not do: the host taking back
    /// as FF-A a page it shares with the hypervisor (the FF-A proxy only unshares what it
    /// shared), and a protected guest's data back with the host unwiped.
    @Test func theInvariantNamesTheBrokenTuple() throws {
        var p = PKVM(memory: Self.ram, guests: [("pvm", true)])
        let r39 = p.hostShareHyp(pfn: 0x40200)
        expectEqual(r39, .ok)
        let r40 = p.hostUnshareFFA(pfn: 0x40200, nrPages: 1)
        expectEqual(r40, .ok)
        #expect(throws: InvariantViolation("pkvm-ownership", "page 0x40200000: the host owns it but another component maps it (host OWNED, hyp SHARED_BORROWED, share count 0, refcount 0, no guest mapping)")) {
            try p.checkInvariants()
        }
        var q = PKVM(memory: Self.ram, guests: [("pvm", true)])
        let r41 = q.hostDonateGuest(pfn: 0x40300, gfn: 0x1, nrPages: 1, guest: 0)
        expectEqual(r41, .ok)
        _ = q.guestAccess(guest: 0, ipa: 0x1000, write: true)
        q.contents[0x40301] = .guest(0)  // as if the guest's data were in a host page
        #expect(throws: InvariantViolation("pkvm-ownership", "page 0x40301000: the host can reach data protected guest pvm wrote: the page was not wiped (host OWNED, hyp NOPAGE, share count 0, refcount 0, no guest mapping)")) {
            try q.checkInvariants()
        }
    }
}

/// Random sequences of every transition over a few pages, two guests and both guest kinds:
/// after each call the ownership invariant and the tables' invariants hold, and a call that
/// returned an errno changed nothing (all-or-nothing). `COCOMEM_PKVM_LONG=N` runs N
/// sequences (default 15).
struct PKVMRandomTests {
    struct Snapshot: Equatable {
        let vmemmap: [UInt64: HypPage], donated: [UInt64: GuestPage], contents: [UInt64: PageContents]
        let guests: [[Leaf]]
        init(_ p: PKVM) {
            vmemmap = p.vmemmap
            donated = p.donated
            contents = p.contents
            guests = p.guests.map { (try? $0.stage2.leaves(virt: VirtAddr(0), size: 1 << PKVM.guestIPABits)) ?? [] }
        }
    }

    @Test func randomTransitionsKeepTheInvariantsAndRefusalsChangeNothing() throws {
        let sequences = Int(ProcessInfo.processInfo.environment["COCOMEM_PKVM_LONG"] ?? "") ?? 15
        var seed: UInt64 = 0x5eed
        func next(_ n: UInt64) -> UInt64 {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return (seed >> 33) % n
        }
        for _ in 0..<sequences {
            var p = PKVM(memory: [0x4000_0000..<0x4080_0000], guests: [("pvm", true), ("vm", false)])
            let pfns: [UInt64] = [0x40000, 0x40001, 0x40200, 0x40201, 0x407ff, 0x40800, 0x10000]  // the last two: MMIO
            var warned = 0
            for _ in 0..<200 {
                let pfn = pfns[Int(next(UInt64(pfns.count)))], g = Int(next(2)), gfn = next(4), n: UInt64 = next(8) == 0 ? 512 : 1
                let before = Snapshot(p)
                let status: KernelStatus?
                let op = next(15)
                switch op {
                case 0: status = p.hostShareHyp(pfn: pfn)
                case 1: status = p.hostUnshareHyp(pfn: pfn)
                case 2: status = p.hostDonateHyp(pfn: pfn, nrPages: next(3))
                case 3: status = p.hypDonateHost(pfn: pfn, nrPages: next(3))
                case 4: status = p.hostShareFFA(pfn: pfn, nrPages: 1)
                case 5: status = p.hostShareGuest(pfn: pfn & ~(n - 1), gfn: gfn * n, nrPages: n, guest: g, prot: next(2) == 0 ? .rwx : [.r])
                case 6: status = p.hostUnshareGuest(gfn: gfn * n, nrPages: n, guest: g)
                case 7: status = p.hostDonateGuest(pfn: pfn, gfn: gfn, nrPages: 1, guest: g)
                case 8: status = p.guestRelinquishToHost(guest: g, ipa: gfn << 12).status
                case 9: status = p.hypPinSharedMem(pfn: pfn, nrPages: 1)
                case 10:
                    if p.page(pfn).refcount > 0 {
                        let unpinned = p.hypUnpinSharedMem(pfn: pfn, nrPages: 1)
                        expectTrue(unpinned)
                    }
                    status = nil
                case 11: status = p.hostForceReclaimPageGuest(pfn: pfn)
                case 12:
                    _ = p.hostFault(pfn << 12)
                    status = nil
                case 13:
                    _ = p.guestAccess(guest: g, ipa: gfn << 12, write: true)
                    status = nil
                default:
                    // unshare_ffa only of what FF-A has (the FF-A proxy's rule; the invariant names the rest)
                    if p.page(pfn).host == .sharedOwned && p.page(pfn).hyp == .noPage && p.page(pfn).hostShareGuestCount == 0 {
                        status = p.hostUnshareFFA(pfn: pfn, nrPages: 1)
                    } else { status = nil }
                }
                if let status, status != .ok { #expect(Snapshot(p) == before, "\(status) changed the state") }
                if p.stats.warnings != warned { Issue.record("a WARN_ON at EL2 after op \(op) on pfn \(hex(pfn)) guest \(g) gfn \(gfn) n \(n)"); warned = p.stats.warnings }
                try p.checkInvariants()
                try p.hostStage2.checkInvariants()
                try p.hypStage1.checkInvariants()
                for vm in p.guests { try vm.stage2.checkInvariants() }
            }
            expectEqual(p.stats.warnings, 0)
        }
    }
}
