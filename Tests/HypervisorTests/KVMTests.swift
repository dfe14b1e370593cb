import Testing
import Hardware
import HostKernel
import PageTables
@testable import Hypervisor
import Expectations

typealias SNPKVM = KVM<SNPBackend>

/// KVM's SEV-SNP paths, one documented rule each (linux-x86.md §2-3, invariants 12-17).
struct KVMTests {
    static let base: UInt64 = 0x4000_0000

    func setup(_ backing: GmemBacking = .gmem2M, memory: UInt64 = 8 << 20, vcpus: Int = 1) throws -> (SNPKVM, Kernel, RMP) {
        let k = try Kernel(memory: PhysicalMemory.pc(size: 4 << 30), config: KernelConfig(gbpages: false))
        var kvm = SNPKVM(backend: SNPBackend())
        kvm.create(VMConfig(name: "vm0", id: 1, vcpus: vcpus, memory: memory, placement: Self.base, backing: backing))
        return (kvm, k, RMP(end: k.memory.endOfRAM))
    }

    func touch(_ kvm: inout SNPKVM, _ k: inout Kernel, _ rmp: inout RMP, gfn: UInt64, private p: Bool = true) -> (String, [String]) {
        let r = kvm.guestOperation(0, gfn: gfn, private: p, kernel: &k, hw: &rmp, retryNote: "RMP #NPF: PSMASH") { r, level in
            r.guestAccess(GuestContext(asid: 1, vmpl: 0, gpa: gfn << 12, spa: Self.base + gfn << 12, nptSize: level), write: false, encrypted: p)
        }
        return (r.outcome.description, r.notes)
    }

    @Test func launchMakesAFirmwarePageAndVMSAsThatAreNever2MAligned() throws {
        var (kvm, k, rmp) = try setup(vcpus: 3)
        expectEqual(kvm.launch(0, imagePages: 4, kernel: &k, rmp: &rmp), .ok)
        let vm = kvm.vms[0]
        expectEqual(rmp[vm.arch.contextPage! >> 12].state, .firmware)
        expectEqual(vm.arch.vmsaPages.count, 3)
        for v in vm.arch.vmsaPages {
            expectNotEqual(v & 0x1f_ffff, 0)
            expectTrue(rmp[v >> 12].vmsa)
            expectEqual(rmp[v >> 12].state, .guestValid)
            expectEqual(rmp[v >> 12].asid, 1)
            expectEqual(rmp[v >> 12].gpa, SNPKVM.initialVMSAGPA)  // INITIAL_VMSA_GPA
        }
        expectEqual(rmp[Self.base >> 12].state, .guestValid)  // an image page after LAUNCH_FINISH
        expectEqual(rmp[(Self.base >> 12) + 4].assigned, false)
        try rmp.checkInvariants()
    }

    @Test func gmemPrepareUses2MOnlyForLargeFoliosOverAnUnassignedRange() throws {
        var (kvm, k, rmp) = try setup(.gmem2M)
        expectEqual(kvm.launch(0, imagePages: 0, kernel: &k, rmp: &rmp), .ok)
        expectEqual(touch(&kvm, &k, &rmp, gfn: 0x203).1, ["gmem prepare 2M"])
        expectTrue(rmp.largeEntry((Self.base >> 12) + 0x200).isLarge)
        // A range with one assigned page already: the next prepare is 4K.
        kvm.convert(0, gfns: 0x400..<0x401, toPrivate: true, kernel: &k, hw: &rmp)
        expectEqual(touch(&kvm, &k, &rmp, gfn: 0x400).1, ["gmem prepare 2M"])
        var (kvm4, k4, rmp4) = try setup(.gmem4K)
        expectEqual(kvm4.launch(0, imagePages: 0, kernel: &k4, rmp: &rmp4), .ok)
        expectEqual(touch(&kvm4, &k4, &rmp4, gfn: 0x200).1, ["gmem prepare 4K"])
        expectEqual(kvm.backend.stats.prepared2M, 2)
        expectEqual(kvm4.backend.stats.prepared4K, 1)
    }

    @Test func invalidateOfPartOfA2MPagePSMASHesFirst() throws {
        var (kvm, k, rmp) = try setup()
        expectEqual(kvm.launch(0, imagePages: 0, kernel: &k, rmp: &rmp), .ok)
        _ = touch(&kvm, &k, &rmp, gfn: 0x200)
        kvm.convert(0, gfns: 0x201..<0x202, toPrivate: false, kernel: &k, hw: &rmp)
        expectEqual(kvm.backend.stats.psmash, 1)
        expectEqual(kvm.backend.stats.invalidated4K, 1)
        expectTrue(!rmp[(Self.base >> 12) + 0x201].assigned)
        expectTrue(rmp[(Self.base >> 12) + 0x202].assigned)
        kvm.convert(0, gfns: 0x000..<0x200, toPrivate: false, kernel: &k, hw: &rmp)  // never prepared: nothing to do
        expectEqual(kvm.backend.stats.invalidated2M, 0)
        try rmp.checkInvariants()
    }

    @Test func invalidateOfAWhole2MPageIsOne2MUpdate() throws {
        var (kvm, k, rmp) = try setup()
        expectEqual(kvm.launch(0, imagePages: 0, kernel: &k, rmp: &rmp), .ok)
        _ = touch(&kvm, &k, &rmp, gfn: 0x200)
        kvm.convert(0, gfns: 0x200..<0x400, toPrivate: false, kernel: &k, hw: &rmp)
        expectEqual(kvm.backend.stats.invalidated2M, 1)
        expectEqual(kvm.backend.stats.psmash, 0)
    }

    @Test func mixedAttributesMapAt4KAndTheRMPFaultPSMASHesAndZaps() throws {
        var (kvm, k, rmp) = try setup()
        expectEqual(kvm.launch(0, imagePages: 0, kernel: &k, rmp: &rmp), .ok)
        _ = touch(&kvm, &k, &rmp, gfn: 0x200)
        // Attributes go mixed without the RMP changing (to-private of a shared page elsewhere
        // in the region is lazy): make one gfn shared in attributes only.
        expectEqual(kvm.vms[0].stage2Leaf(0x200)?.size, .size2M)  // the fault mapped the 2M page at 2M
        kvm.vms[0].attributes.setPrivate(0x3ff, false)
        kvm.zapStage2(0, gfns: 0x3ff..<0x400)  // KVM_SET_MEMORY_ATTRIBUTES zaps the range: the whole 2M leaf goes
        expectEqual(kvm.vms[0].stage2Leaf(0x200), nil)
        expectEqual(kvm.mapStage2(0, gfn: 0x200, hw: rmp), .size4K)  // stage-2 level ≤ RMP level, no mixed hugepage
        kvm.zapStage2(0, gfns: 0x200..<0x201)
        let (outcome, path) = touch(&kvm, &k, &rmp, gfn: 0x200)
        expectEqual(path, ["RMP #NPF: PSMASH"])
        expectEqual(outcome, "#VC(0x404)")  // now 4K and matching; never validated
        expectEqual(kvm.vms[0].stage2Leaf(0x200)?.size, .size4K)
        expectEqual(kvm.vms[0].stage2Leaf(0x201), nil)
        expectEqual(kvm.backend.stats.rmpNPF, 1)
        expectEqual(kvm.stats.zappedGFNs, 512)
    }

    /// An RMP #NPF that persists on a 4K entry: sev_handle_rmp_fault calls it spurious and
    /// changes nothing, so the vCPU faults again without end.
    @Test func anRMPFaultThatPersistsAt4KLoops() throws {
        var (kvm, _, rmp) = try setup(.gmem4K)
        var k = try Kernel(memory: PhysicalMemory.pc(size: 4 << 30))
        expectEqual(kvm.launch(0, imagePages: 0, kernel: &k, rmp: &rmp), .ok)
        // The page is assigned to another ASID behind KVM's back.
        expectEqual(rmp.rmpupdate(spa: kvm.vms[0].config.spa(5), RMPUpdate(gpa: 5 << 12, assigned: true, asid: 9)), .success)
        expectEqual(touch(&kvm, &k, &rmp, gfn: 5).0, "NPF loop")
        expectEqual(kvm.backend.stats.spuriousRMPNPF, 1)
        expectEqual(kvm.backend.stats.psmash, 0)
    }

    @Test func anRMPFaultOnA4KEntryIsSpurious() throws {
        var (kvm, _, rmp) = try setup(.gmem4K)
        var k = try Kernel(memory: PhysicalMemory.pc(size: 4 << 30))
        expectEqual(kvm.launch(0, imagePages: 1, kernel: &k, rmp: &rmp), .ok)
        _ = kvm.backend.handleFault(&kvm.vms[0], gfn: 0, private: true, outcome: .npf(.rmp), hw: &rmp)
        expectEqual(kvm.backend.stats.spuriousRMPNPF, 1)
        expectEqual(kvm.backend.stats.psmash, 0)
    }

    @Test func privateAccessToASharedGfnExitsToTheVMM() throws {
        var (kvm, k, rmp) = try setup()
        expectEqual(kvm.launch(0, imagePages: 0, kernel: &k, rmp: &rmp), .ok)
        kvm.convert(0, gfns: 5..<6, toPrivate: false, kernel: &k, hw: &rmp)
        expectEqual(touch(&kvm, &k, &rmp, gfn: 5).0, "KVM_EXIT_MEMORY_FAULT")
        expectEqual(touch(&kvm, &k, &rmp, gfn: 5, private: false).0, "ok")
        expectEqual(kvm.stats.memoryFaultExits, 1)
    }

    @Test func ghcbPSCCoalescesContinuesPartial2MAndSkipsPsmashEntries() throws {
        var (kvm, k, rmp) = try setup()
        expectEqual(kvm.launch(0, imagePages: 0, kernel: &k, rmp: &rmp), .ok)
        let request = PSCRequest(endEntry: 3, entries: [
            PSCEntry(gfn: 0x10, operation: 2, size2M: false), PSCEntry(gfn: 0x11, operation: 2, size2M: false),
            PSCEntry(gfn: 0x200, operation: 2, size2M: true, curPage: 0x100),   // half done: the rest as 4K
            PSCEntry(gfn: 0x400, operation: 3, size2M: true),                    // PSMASH: a no-op
        ])
        let (code, done) = kvm.handlePSC(0, request, kernel: &k, rmp: &rmp)
        expectEqual(code, 0)
        expectEqual(done.curEntry, 4)
        expectEqual(done.entries.map(\.curPage), [1, 1, 512, 512])
        expectTrue(!kvm.vms[0].isPrivate(0x10))
        expectTrue(!kvm.vms[0].isPrivate(0x11))
        expectTrue(kvm.vms[0].isPrivate(0x12))
        #expect(kvm.vms[0].isPrivate(0x2ff) && !kvm.vms[0].isPrivate(0x300) && !kvm.vms[0].isPrivate(0x3ff))  // only [cur_page, 512) is done now
        expectTrue(kvm.vms[0].isPrivate(0x400))
        expectEqual(kvm.backend.stats.pscPages, 2 + 256)
    }

    @Test func ghcbPSCErrorsComeBackAsKVMReturnsThem() throws {
        var (kvm, k, rmp) = try setup()
        expectEqual(kvm.handlePSC(0, PSCRequest(endEntry: 253, entries: []), kernel: &k, rmp: &rmp).exitInfo2, PSCRequest.errorInvalidHeader)
        let bad = PSCRequest(endEntry: 0, entries: [PSCEntry(gfn: 0x201, operation: 2, size2M: true)])
        expectEqual(kvm.handlePSC(0, bad, kernel: &k, rmp: &rmp).exitInfo2, PSCRequest.errorInvalidEntry)
        let outside = PSCRequest(endEntry: 0, entries: [PSCEntry(gfn: 0x10_0000, operation: 2, size2M: false)])
        expectEqual(kvm.handlePSC(0, outside, kernel: &k, rmp: &rmp).exitInfo2, PSCRequest.errorGeneric)
    }

    /// snp_begin_psc checks an entry only when the search for the next range reaches it: the
    /// ranges before a bad entry are converted and completed, and cur_entry stops on it.
    @Test func ghcbPSCConvertsTheRangesBeforeABadEntry() throws {
        var (kvm, k, rmp) = try setup()
        expectEqual(kvm.launch(0, imagePages: 0, kernel: &k, rmp: &rmp), .ok)
        let request = PSCRequest(endEntry: 2, entries: [
            PSCEntry(gfn: 0x10, operation: 2, size2M: false),
            PSCEntry(gfn: 0x201, operation: 2, size2M: true),  // a 2M entry that is not 2M-aligned
            PSCEntry(gfn: 0x30, operation: 2, size2M: false),
        ])
        let (code, done) = kvm.handlePSC(0, request, kernel: &k, rmp: &rmp)
        expectEqual(code, PSCRequest.errorInvalidEntry)
        expectEqual(done.curEntry, 1)
        expectEqual(done.entries.map(\.curPage), [1, 0, 0])
        expectTrue(!kvm.vms[0].isPrivate(0x10))
        expectTrue(kvm.vms[0].isPrivate(0x30))
        expectEqual(kvm.backend.stats.pscPages, 1)
    }

    /// Slots from the written entries to end_entry read as zero (operation 0): they complete
    /// as no-ops and cur_entry ends past end_entry.
    @Test func ghcbPSCRunsToEndEntryOverUnwrittenSlots() throws {
        var (kvm, k, rmp) = try setup()
        expectEqual(kvm.launch(0, imagePages: 0, kernel: &k, rmp: &rmp), .ok)
        let request = PSCRequest(endEntry: 3, entries: [PSCEntry(gfn: 0x10, operation: 2, size2M: false)])
        let (code, done) = kvm.handlePSC(0, request, kernel: &k, rmp: &rmp)
        expectEqual(code, 0)
        expectEqual(done.curEntry, 4)
        expectEqual(done.entries.map(\.curPage), [1])
        expectEqual(kvm.backend.stats.pscPages, 1)
    }

    @Test func msrPSCConvertsOnePage() throws {
        var (kvm, k, rmp) = try setup()
        expectEqual(kvm.launch(0, imagePages: 0, kernel: &k, rmp: &rmp), .ok)
        let response = kvm.handlePSCMSR(0, msr: PSCMSRRequest(gfn: 7, operation: .makeShared).msr, kernel: &k, rmp: &rmp)
        expectEqual(response, 0x015)
        expectTrue(!kvm.vms[0].isPrivate(7))
        expectEqual(kvm.handlePSCMSR(0, msr: 0x014 | 7 << 12 | 4 << 52, kernel: &k, rmp: &rmp), PSCMSRRequest.errorResponse)
    }

    @Test func teardownReturnsEveryPageAndAFailedReclaimLeaks() throws {
        var (kvm, k, rmp) = try setup(vcpus: 2)
        expectEqual(kvm.launch(0, imagePages: 16, kernel: &k, rmp: &rmp), .ok)
        _ = touch(&kvm, &k, &rmp, gfn: 0x200)
        kvm.backend.failReclaim = true
        expectEqual(kvm.destroy(0, kernel: &k, hw: &rmp), .ok)
        expectEqual(k.faults.leakedPages, 1)
        expectEqual(rmp.chunksInUse, 1)  // only the leaked context page stays assigned
        expectEqual(kvm.destroy(0, kernel: &k, hw: &rmp), .error(.EINVAL))
        try rmp.checkInvariants()
    }

    @Test func pooledMetadataComesFromThePreSplitPool() throws {
        var (kvm, k, rmp) = try setup(vcpus: 2)
        kvm.backend.reservePool(&k, start: SNPBackend.poolStart, pages: 512)
        let splits = k.stats.splits
        expectEqual(kvm.launch(0, imagePages: 0, kernel: &k, rmp: &rmp), .ok)
        expectTrue(kvm.vms[0].arch.vmsaPages.allSatisfy { SNPBackend.poolStart..<SNPBackend.poolStart + (2 << 20) ~= $0 })
        expectEqual(k.stats.splits, splits)
        expectEqual(kvm.backend.poolPagesWasted, 512 - 3)
    }
}

/// The memory design behind rss_16t_256g_mib: a booted guest's 2M RMP pages cost one entry
/// each, not 512, so idle guests cost the model almost nothing.
struct KVMMemoryTests {
    @Test func aBootedGuestCostsOneRMPEntryPer2MPage() throws {
        var k = try Kernel(memory: PhysicalMemory.pc(size: 64 << 30))
        var rmp = RMP(end: k.memory.endOfRAM)
        let empty = rmp.storageBytes
        var kvm = SNPKVM(backend: SNPBackend())
        kvm.create(VMConfig(name: "vm0", id: 1, vcpus: 1, memory: 16 << 30, placement: 16 << 30, backing: .gmem2M))
        expectEqual(kvm.launch(0, imagePages: 0, kernel: &k, rmp: &rmp), .ok)
        for gfn in stride(from: UInt64(0), to: (16 << 30) >> 12, by: 512) {
            let r = kvm.guestStep(0, gfn: gfn, private: true, kernel: &k, hw: &rmp) { r, level in
                r.pvalidate(GuestContext(asid: 1, vmpl: 0, gpa: gfn << 12, spa: (16 << 30) + gfn << 12, nptSize: level), size: .size2M, validate: true)
            }
            expectTrue(r.succeeded)
        }
        expectEqual(kvm.backend.stats.prepared2M, 8192)
        // 8192 2M pages at 16 bytes each, plus one chunk (512 flag bytes, a formula, a count)
        // for the context and VMSA pages (held aside: ASID 0 and a guest VMSA do not follow
        // one formula), the index blocks for the 16 1G regions touched, within the arrays'
        // growth slack (at most double).
        expectTrue(rmp.storageBytes - empty <= 2 * (8192 * 16 + 512 + 8 + 2 + 2 * 512 * 4 + 16 * 512 * 4) + 4 * 24 + 64)
        expectEqual(rmp.chunksInUse, 8192 + 1)
    }

    /// A 4K-backed guest accepted page by page: its stage-2 holds 4K leaves, yet each 2M
    /// block's PTE table is the compact formula (all present), not a 4 KiB dense page.
    @Test func aFourKBackedGuestsStage2IsNotADenseTablePer2M() throws {
        var k = try Kernel(memory: PhysicalMemory.pc(size: 8 << 30))
        var rmp = RMP(end: k.memory.endOfRAM)
        var kvm = SNPKVM(backend: SNPBackend())
        kvm.create(VMConfig(name: "vm0", id: 1, vcpus: 1, memory: 64 << 20, placement: 1 << 30, backing: .gmem4K))
        expectEqual(kvm.launch(0, imagePages: 0, kernel: &k, rmp: &rmp), .ok)
        for gfn in UInt64(0)..<((64 << 20) >> 12) {
            expectTrue(kvm.pvalidate(0, gfn: gfn, size: .size4K, validate: true, kernel: &k, rmp: &rmp).succeeded)
        }
        let s2 = kvm.vms[0].stage2
        expectEqual(s2.leafCounts, LeafCounts(size4K: 16384))
        expectEqual(s2.compactTableCount, 32)
        expectEqual(s2.tablePages, 3 + 32)
        expectTrue(s2.usedBytes < 3 * 4096 + 32 * 256)  // 32 dense tables would be 128 KiB
        try s2.checkInvariants()
    }
}
