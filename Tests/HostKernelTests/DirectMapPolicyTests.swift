import Testing
import Hardware
import PageTables
@testable import HostKernel
import Expectations

/// The SNP host direct-map policies and how host faults end (linux-x86.md §2, seed 001).
struct DirectMapPolicyTests {
    static let page: UInt64 = 0x4000_0000        // becomes guest-private
    static let stack: UInt64 = 0x4000_1000       // a kernel stack page in the same 2M region

    func machine(_ policy: DirectMapPolicyKind, gbpages: Bool = false) throws -> (Kernel, RMP) {
        var config = KernelConfig(gbpages: gbpages)
        config.directMapPolicy = policy
        let k = try Kernel(memory: PhysicalMemory.pc(size: 4 << 30), config: config)
        return (k, RMP(end: k.memory.endOfRAM))
    }

    func makePrivate(_ k: inout Kernel, _ rmp: inout RMP, _ pa: UInt64 = page, size: PageSize = .size4K) -> KernelStatus {
        k.rmpUpdate(&rmp, pfn: pa >> 12, RMPUpdate(gpa: 0, assigned: true, size: size, asid: 1)).0
    }

    /// The example of the SNP host issue: a kernel-stack write next to a private 4K page.
    @Test(arguments: [
        (DirectMapPolicyKind.none, "#PF(RMP): double fault"), (.splitOnAssign, "ok"), (.proactive4K, "ok"),
        (.unmapPrivate, "ok"), (.splitOnFault, "#PF(RMP): double fault"), (.coalesce, "ok"),
    ])
    func kernelStackWriteNextToAPrivatePage(_ policy: DirectMapPolicyKind, _ expected: String) throws {
        var (k, rmp) = try machine(policy)
        expectEqual(makePrivate(&k, &rmp), .ok)
        expectEqual(k.hostAccess(rmp, pa: Self.stack, write: true, context: .kernelStack).description, expected)
        expectEqual(k.faults.hostCrashes, (expected == "ok" ? 0 : 1))
    }

    @Test func splitOnAssignSplitsOnlyFor4KAndNeverUndoes() throws {
        var (k, rmp) = try machine(.splitOnAssign)
        expectEqual(makePrivate(&k, &rmp), .ok)
        expectEqual(k.stats.splits, LeafCounts(size2M: 1))
        expectEqual(k.pageTable.lookup(k.va(PhysAddr(Self.page)))?.attributes.contains(.forced4K), true)  // set_memory_4k
        expectEqual(k.rmpUpdate(&rmp, pfn: Self.page >> 12, RMPUpdate(assigned: false)).0, .ok)
        expectEqual(k.directPagesCount.size4K, 1024)  // still split
        expectEqual(makePrivate(&k, &rmp, 0x8000_0000, size: .size2M), .ok)
        expectEqual(k.stats.splits, LeafCounts(size2M: 1))  // a 2M transition never splits
    }

    /// adjust_direct_map returns early only for pte_none or a 4K level: a large leaf made not
    /// present by set_memory_np is still split.
    @Test func splitOnAssignSplitsANotPresentLargeLeafToo() throws {
        var (k, rmp) = try machine(.splitOnAssign)
        try expectEqual(k.setMemoryNP(k.va(PhysAddr(Self.page)).rawValue, numpages: 512), .ok)
        expectEqual(k.stats.splits, LeafCounts())
        expectEqual(makePrivate(&k, &rmp), .ok)
        expectEqual(k.stats.splits, LeafCounts(size2M: 1))
        expectEqual(k.pageTable.lookup(k.va(PhysAddr(Self.page)))?.size, .size4K)
        expectEqual(makePrivate(&k, &rmp, Self.page + 0x2000), .ok)
        expectEqual(k.stats.splits, LeafCounts(size2M: 1))  // already 4K: lookup_address's level
    }

    /// adjust_direct_map's -EINVAL for a misaligned 2M pfn comes back from rmpupdate as
    /// -EFAULT, and RMPUPDATE is not executed.
    /// The kernel's messages for a failed split (adjust_direct_map) and a failed RMPUPDATE.
    @Test func failuresAreLoggedAsTheKernelPrintsThem() throws {
        var (k, rmp) = try machine(.splitOnAssign)
        k.eventLog = []
        k.failPageTableAllocations = true
        expectEqual(makePrivate(&k, &rmp), .error(.EFAULT))
        k.failPageTableAllocations = false
        expectEqual(makePrivate(&k, &rmp, 0x8000_0000, size: .size2M), .ok)
        expectEqual(makePrivate(&k, &rmp, 0x8000_1000), .error(.EFAULT))  // inside an assigned 2M page
        #expect(k.eventLog?.filter { $0.lowercased().contains("failed") } == [
            "Failed to split direct map for PFN 0x40000, ret: -12",
            "RMPUPDATE failed for PFN 80001, pg_level: 1, ret: 4",
        ])
    }

    @Test func splitOnAssign2MNeedsAnAlignedPfn() throws {
        var (k, rmp) = try machine(.splitOnAssign)
        expectEqual(makePrivate(&k, &rmp, 0x4000_1000, size: .size2M), .error(.EFAULT))
        expectTrue(!rmp[0x4000_1000 >> 12].assigned)
        expectEqual(k.faults.pagesGiven, 0)
    }

    /// adjust_direct_map checks pfn_valid first: a pfn in the PCI hole (no memory section)
    /// is refused before RMPUPDATE; `none` has no such check.
    @Test(arguments: [(DirectMapPolicyKind.splitOnAssign, KernelStatus.error(.EFAULT)), (.none, .ok)])
    func splitOnAssignRefusesAPfnWithoutAStructPage(_ policy: DirectMapPolicyKind, _ expected: KernelStatus) throws {
        var config = KernelConfig()
        config.directMapPolicy = policy
        var k = try Kernel(memory: PhysicalMemory.parse(e820: exampleE820), config: config)
        var rmp = RMP(end: k.memory.endOfRAM)
        expectEqual(makePrivate(&k, &rmp, 0xd000_0000), expected)
        expectEqual(rmp[0xd000_0000 >> 12].assigned, (expected == .ok))
    }

    @Test func proactive4KSplitsEvery2MPageToo() throws {
        var (k, rmp) = try machine(.proactive4K)
        expectEqual(makePrivate(&k, &rmp, 0x8000_0000, size: .size2M), .ok)
        expectEqual(k.stats.splits, LeafCounts(size2M: 1))
        expectEqual(k.pageTable.lookup(k.va(PhysAddr(0x8000_0000 + 0x1ff000)))?.size, .size4K)
    }

    @Test func unmapPrivateRemovesAndRestoresTheDirectMap() throws {
        var (k, rmp) = try machine(.unmapPrivate)
        expectEqual(makePrivate(&k, &rmp), .ok)
        #expect(k.pageTable.translate(k.va(PhysAddr(Self.page))) == nil)
        // A stray read faults (not present) instead of reading ciphertext.
        expectEqual(k.hostAccess(rmp, pa: Self.page, write: false, context: .data).description, "#PF(not-present): oops")
        expectEqual(k.rmpUpdate(&rmp, pfn: Self.page >> 12, RMPUpdate(assigned: false)).0, .ok)
        #expect(k.pageTable.translate(k.va(PhysAddr(Self.page))) != nil)
        expectEqual(k.hostAccess(rmp, pa: Self.page, write: true, context: .data), .ok)
    }

    @Test func strayReadUnderSplitOnAssignReturnsCiphertext() throws {
        var (k, rmp) = try machine(.splitOnAssign)
        expectEqual(makePrivate(&k, &rmp), .ok)
        expectEqual(k.hostAccess(rmp, pa: Self.page, write: false, context: .data), .ciphertext)
        expectEqual(k.faults.ciphertextReads, 1)
        expectEqual(k.faults.hostCrashes, 0)
    }

    @Test func splitOnFaultSplitsInSafeContextsOnly() throws {
        var (k, rmp) = try machine(.splitOnFault)
        expectEqual(makePrivate(&k, &rmp), .ok)
        expectEqual(k.stats.splits, LeafCounts())
        expectEqual(k.hostAccess(rmp, pa: Self.stack, write: true, context: .data), .splitAndRetried)
        expectEqual(k.faults.splitsOnFault, 1)
        expectEqual(k.stats.splits, LeafCounts(size2M: 1))
        expectEqual(k.hostAccess(rmp, pa: Self.stack, write: true, context: .kernelStack), .ok)  // already split
    }

    @Test(arguments: [
        (HostAccessContext.data, "#PF(RMP): oops"), (.kernelStack, "#PF(RMP): double fault"), (.pageTable, "#PF(RMP): triple fault"),
        (.gdtIDT, "#PF(RMP): triple fault"), (.nmi, "#PF(RMP): oops"), (.userCopy, "#PF(RMP): fixed up"), (.user, "#PF(RMP): SIGBUS"),
    ])
    func anRMPFaultEndsAsItsContextDecides(_ context: HostAccessContext, _ expected: String) throws {
        var (k, rmp) = try machine(.none)
        expectEqual(makePrivate(&k, &rmp), .ok)
        expectEqual(k.hostAccess(rmp, pa: Self.page, write: true, context: context).description, expected)
    }

    @Test func coalesceRemergesOnceTheRegionIsHypervisorOwnedAgain() throws {
        var (k, rmp) = try machine(.coalesce, gbpages: true)
        let before = k.directPagesCount
        expectEqual(makePrivate(&k, &rmp), .ok)
        expectEqual(makePrivate(&k, &rmp, Self.page + 0x5000), .ok)
        expectEqual(k.directPagesCount.size1G, before.size1G - 1)
        expectEqual(k.rmpUpdate(&rmp, pfn: Self.page >> 12, RMPUpdate(assigned: false)).0, .ok)
        expectEqual(k.stats.collapses, LeafCounts())  // one page still private
        expectEqual(k.rmpUpdate(&rmp, pfn: (Self.page + 0x5000) >> 12, RMPUpdate(assigned: false)).0, .ok)
        expectEqual(k.stats.collapses, LeafCounts(size2M: 1, size1G: 1))
        expectEqual(k.directPagesCount, before)
        try k.checkInvariants()
    }

    @Test func aFailedRMPUpdateIsEFAULTWithTheStatus() throws {
        var (k, rmp) = try machine(.splitOnAssign)
        expectEqual(makePrivate(&k, &rmp, 0x8000_0000, size: .size2M), .ok)
        let (status, hw) = k.rmpUpdate(&rmp, pfn: 0x8000_3000 >> 12, RMPUpdate(assigned: false))
        expectEqual(status, .error(.EFAULT))
        expectEqual(hw, .failOverlap)
    }
}
