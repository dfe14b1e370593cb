import Testing
import Hardware
import PageTables
@testable import HostKernel
import Expectations

/// CPUs with TLBs: flushes really invalidate, a missing one leaves a stale translation the
/// `tlb` invariant catches, and *_noflush changes are exempt until a flush covers them.
struct TLBTests {
    /// A direct-map address inside the 2M leaf [2M, 4M) of the example machine.
    let in2M = pageOffset + 0x20_0000

    func kernel(cpus: Int) throws -> Kernel {
        try Kernel(memory: PhysicalMemory.parse(e820: exampleE820), config: KernelConfig(cpus: cpus))
    }

    @Test func twoCPUsCountHitsMissesAndFlushesExactly() throws {
        var k = try kernel(cpus: 2)
        expectEqual(k.translate(cpu: 0, in2M)?.pa, 0x20_0000)  // miss, filled
        expectEqual(k.translate(cpu: 0, in2M + 8)?.size, .size2M)  // hit
        expectNotEqual(k.translate(cpu: 1, in2M), nil)  // miss
        k.flushTLBKernelRange(in2M, pages: 1)  // one page on each CPU
        expectTrue(k.cpus.allSatisfy { $0.tlb.validEntries.isEmpty })
        expectNotEqual(k.translate(cpu: 1, in2M + K), nil)  // miss (another page)
        k.flushTLBKernelRange(in2M, pages: 34)  // past the 33-page ceiling: everything
        expectEqual(k.cpus[0].stats, TLBStats(hits: 1, misses: 1, pageFlushes: 1, fullFlushes: 1, asidFlushes: 0))
        expectEqual(k.cpus[1].stats, TLBStats(hits: 0, misses: 2, pageFlushes: 1, fullFlushes: 1, asidFlushes: 0))
        expectTrue(k.cpus.allSatisfy { $0.tlb.validEntries.isEmpty })
        expectEqual(k.cpuMetrics.map(\.0), ["cpu0_tlb_hits", "cpu0_tlb_misses", "cpu0_tlb_flushes", "cpu1_tlb_hits", "cpu1_tlb_misses", "cpu1_tlb_flushes"])
        expectEqual(k.cpuMetrics.map(\.1), [1, 1, 2, 0, 2, 2])
        expectEqual(k.stats.tlbFullFlushes, 1)
        expectEqual(k.stats.tlbPageFlushRounds, 1)
    }

    @Test func aMissingFlushLeavesAStaleTranslationTheInvariantCatches() throws {
        var k = try kernel(cpus: 2)
        expectEqual(k.hostAccess(NoOwnership(), pa: 0x20_0000, write: true, context: .data, cpu: 1), .ok)
        k.omitTLBFlushes = true
        try expectEqual(k.setMemoryRO(in2M, numpages: 1), .ok)  // splits 2M and changes one PTE: no flush reaches a CPU
        expectEqual(k.stats.tlbFullFlushes, 1)  // the kernel called flush_tlb_all for the split …
        expectEqual(k.cpus[1].stats.fullFlushes, 0)  // … and it never arrived
        var caught: InvariantViolation?
        do { try k.checkTLBInvariants() } catch { caught = error }
        #expect(caught?.detail == "CPU 1 caches 0xffff888000200000 -> 0x200000 2M [present rw nx global enc], "
            + "the page table has 0x200000 4K [present nx global enc]")
        // CPU 1 writes through its stale read-write entry; CPU 0 walks and faults.
        expectEqual(k.hostAccess(NoOwnership(), pa: 0x20_0000, write: true, context: .data, cpu: 1), .ok)
        expectEqual(k.hostAccess(NoOwnership(), pa: 0x20_0000, write: true, context: .data, cpu: 0), .fault(cause: .protection, end: .oops))
        k.omitTLBFlushes = false
        k.flushTLBAll()
        try k.checkTLBInvariants()
        expectEqual(k.hostAccess(NoOwnership(), pa: 0x20_0000, write: true, context: .data, cpu: 1), .fault(cause: .protection, end: .oops))
        expectEqual(k.faults.protectionFaults, 2)
    }

    @Test func noflushChangesAreExemptUntilAFlushCoversThem() throws {
        var k = try kernel(cpus: 1)
        try expectEqual(k.setMemory4K(in2M, numpages: 2), .ok)
        expectNotEqual(k.translate(cpu: 0, in2M), nil)
        expectNotEqual(k.translate(cpu: 0, in2M + K), nil)
        try expectEqual(k.setDirectMapInvalidNoflush(in2M), .ok)
        try expectEqual(k.setDirectMapInvalidNoflush(in2M + K), .ok)
        expectEqual(k.unflushed, [in2M..<in2M + 2 * K])
        try k.checkTLBInvariants()  // stale, but allowed
        expectEqual(k.translate(cpu: 0, in2M)?.pa, 0x20_0000)  // the stale entry still answers
        k.flushTLBKernelRange(in2M + K, pages: 1)
        expectEqual(k.unflushed, [in2M..<in2M + K])
        expectEqual(k.cpus[0].tlb.entry(in2M + K), nil)
        k.flushTLBAll()
        expectTrue(k.unflushed.isEmpty)
        expectEqual(k.translate(cpu: 0, in2M), nil)  // now the walk: not present
        try k.checkTLBInvariants()
    }

    @Test func everyCPAFlushReachesEveryCPU() throws {
        var k = try kernel(cpus: 3)
        for cpu in 0..<3 { _ = k.translate(cpu: cpu, in2M) }
        try expectEqual(k.setMemoryNX(in2M + K, numpages: 1), .ok)  // already NX: nothing changes, no flush
        expectTrue(k.cpus.allSatisfy { $0.tlb.validEntries.count == 1 })
        try expectEqual(k.setMemoryRO(in2M + K, numpages: 1), .ok)  // split (flush_tlb_all) and one page
        expectTrue(k.cpus.allSatisfy { $0.tlb.validEntries.isEmpty && $0.stats.fullFlushes == 1 && $0.stats.pageFlushes == 1 })
        try k.checkTLBInvariants()
    }
}
