import PageTables
import Testing
@testable import Hardware
@testable import Hypervisor
import Expectations

/// KVM's realm backend (the KVM CCA host series v12, RMM 1.0) over the model's RMM and GPT.
struct KVMRealmTests {
    static let dram: Range<UInt64> = 0x8000_0000..<0x1_0000_0000
    /// A 16 MiB realm with two vCPUs at 0x90000000, KVM's pages from 0x88000000 up.
    static func launched(populate: UInt64 = 0x2000, fold: Bool = true) -> (KVMRealm, RealmFirmware) {
        var fw = RealmFirmware(rmm: RMM(dram: [dram]), gpt: GPT(ram: [dram]), pool: (0..<64).map { 0x8800_0000 + UInt64($0) * pageBytes }.reversed())
        var k = KVMRealm(placement: 0x9000_0000, size: 16 << 20, ipaBits: 40, vmid: 1, vcpus: 2)
        k.foldRTTs = fold
        expectEqual(k.create(&fw, rttBase: 0x8700_0000), .ok)
        expectEqual(k.populate(&fw, bytes: populate, source: 0x8000_0000), .ok)
        expectEqual(k.activate(&fw), .ok)
        return (k, fw)
    }

    @Test func launchBuildsTheRealm() {
        let (k, fw) = Self.launched()
        let r = fw.rmm.realms[k.rd]!
        expectEqual(k.state, .active)
        expectEqual(r.state, .active)
        expectEqual(k.recs.count, 2)
        #expect(fw.rmm.recs[k.recs[0]]!.runnable && !fw.rmm.recs[k.recs[1]]!.runnable)  // only vCPU 0 starts runnable
        // The start tables are KVM's PGD; the image pages are DATA, the rest RIPAS RAM (INIT_RIPAS
        // skipping the populated entries a granule at a time).
        expectEqual(k.roots, [0x8700_0000, 0x8700_1000])
        expectEqual(fw.rmm.state(0x8700_0000), .rtt)
        expectEqual(r.entry(0x1000, level: 3), .assigned(.ram, pa: 0x9000_1000))
        expectEqual(r.entry(0x2000, level: 3), .unassigned(.ram))
        expectEqual(r.entry(0x20_0000, level: 2), .unassigned(.ram))
        expectEqual(r.entry(0xe0_0000, level: 2), .unassigned(.ram))
        expectEqual(r.entry(0x100_0000, level: 2), .unassigned(.empty))
        expectEqual(r.entry(0x4000_0000, level: 1), .unassigned(.empty))  // past the memslot
        expectEqual(fw.rmm.state(0x9000_0000), .data)
        expectEqual(fw.rmm.state(0x9000_2000), .ns)
    }

    @Test func faultsMapProtectedAndUnprotected() {
        var (k, fw) = Self.launched()
        expectEqual(k.fault(&fw, ipa: 0x30_0000), .ok)
        expectEqual(fw.rmm.realms[k.rd]!.entry(0x30_0000, level: 3), .assigned(.ram, pa: 0x9030_0000))
        expectEqual(fw.rmm.state(0x9030_0000), .data)
        expectEqual(fw.gpt.gpi(0x9030_0000).gpi, .realm)
        // The alias of a private page: the attribute disagrees.
        expectEqual(k.fault(&fw, ipa: k.topBit | 0x30_0000), .memoryFault(gpa: 0x30_0000, size: pageBytes, private: false))
        expectEqual(k.fault(&fw, ipa: 16 << 20), .errno(.EFAULT))  // past the memslot
        // A DELEGATE that fails is taken as another vCPU's win.
        expectEqual(k.fault(&fw, ipa: 0x30_0000), .ok)
        expectEqual(k.stats.privateFaults, 2)
    }

    /// Shared and back: the VMM converts the attributes on the RIPAS exit, KVM destroys and
    /// undelegates the private page, applies the RIPAS, and the realm reads ACCEPT and how far
    /// it got; RTTs left uniform are folded (under `kvm.cca-rtt-fold`).
    @Test func ripasChangeRoundTrip() {
        for fold in [true, false] {
            var (k, fw) = Self.launched(fold: fold)
            expectEqual(k.fault(&fw, ipa: 0x30_0000), .ok)
            let rec = k.recs[0]
            let exit = fw.rmm.rsiIPAStateSet(rec: rec, base: 0x30_0000, top: 0x30_1000, ripas: .empty, flags: 1) as! RECExit
            let (o, read) = k.ripasExit(&fw, vcpu: 0, exit)
            expectEqual(o, .ok)
            expectEqual(read, RSIResult(.success, [.init("base", 0x30_1000)], response: .accept))
            expectEqual(k.sharedGFNs, [0x300])
            expectEqual(fw.rmm.state(0x9030_0000), .ns)
            expectEqual(fw.gpt.gpi(0x9030_0000).gpi, .ns)
            let r = fw.rmm.realms[k.rd]!
            expectEqual(r.entry(0x30_0000, level: 3), .unassigned(.empty))
            expectEqual(k.fault(&fw, ipa: k.topBit | 0x30_0000), .ok)
            expectEqual(fw.rmm.realms[k.rd]!.entry(k.topBit | 0x30_0000, level: 3), .assignedNS(pa: 0x9030_0000))
            // Back to RAM: the alias unmapped, the RTT of the unprotected half folded away (or kept).
            let back = fw.rmm.rsiIPAStateSet(rec: rec, base: 0x30_0000, top: 0x30_1000, ripas: .ram, flags: 1) as! RECExit
            expectEqual(k.ripasExit(&fw, vcpu: 0, back).1, RSIResult(.success, [.init("base", 0x30_1000)], response: .accept))
            let after = fw.rmm.realms[k.rd]!
            expectEqual(after.entry(0x30_0000, level: 3), .unassigned(.ram))
            expectTrue(k.sharedGFNs.isEmpty)
            expectEqual(after.walk(k.topBit | 0x30_0000, to: 3).level, (fold ? 1 : 3))
            expectEqual(k.stats.rttFolds, (fold ? 2 : 0))
        }
    }

    /// A RIPAS change outside the protected half: KVM_RUN fails and the realm reads nothing.
    @Test func ripasChangeOutsideTheProtectedHalf() {
        var (k, fw) = Self.launched()
        let (o, read) = k.ripasExit(&fw, vcpu: 0, RECExit(ripasChange: k.topBit - 0x1000, top: k.topBit + 0x1000, ripas: .ram))
        expectEqual(o, .errno(.EINVAL))
        expectEqual(read, nil)
    }

    /// Launch with too few pages for the RECs: -ENOMEM, and what was delegated for the REC
    /// given back; a populate of 8 MiB with pages enough.
    @Test func launchRunsShortOrPopulatesMore() {
        var fw = RealmFirmware(rmm: RMM(dram: [Self.dram]), gpt: GPT(ram: [Self.dram]), pool: (0..<20).map { 0x8800_0000 + UInt64($0) * pageBytes }.reversed())
        var k = KVMRealm(placement: 0x9000_0000, size: 16 << 20, ipaBits: 40, vmid: 1, vcpus: 2)
        expectEqual(k.create(&fw, rttBase: 0x8700_0000), .ok)
        expectEqual(k.activate(&fw), .errno(.ENOMEM))
        expectEqual(k.state, .dead)
        // vCPU 0's REC stands; vCPU 1's REC granule and the one auxiliary granule it got went back.
        expectEqual(fw.rmm.count(.delegated), 0)
        expectEqual(fw.rmm.recs.count, 1)
        expectEqual(k.stats.leaked, 0)
        expectEqual(k.destroy(&fw), .ok)
        expectTrue(fw.rmm.granules.isEmpty)
        var big = RealmFirmware(rmm: RMM(dram: [Self.dram]), gpt: GPT(ram: [Self.dram]), pool: (0..<64).map { 0x8800_0000 + UInt64($0) * pageBytes }.reversed())
        var k2 = KVMRealm(placement: 0x9000_0000, size: 16 << 20, ipaBits: 40, vmid: 1, vcpus: 1)
        expectEqual(k2.create(&big, rttBase: 0x8700_0000), .ok)
        expectEqual(k2.populate(&big, bytes: 8 << 20, source: 0x8000_0000), .ok)
        expectEqual(k2.activate(&big), .ok)
        expectEqual(big.rmm.count(.data), 2048)
    }

    /// A block in the way of an unmap is split to level 3 first (realm_destroy_private_granule):
    /// 512 DATA pages folded into a 2M block by hand, then the range made shared.
    @Test func unmapSplitsBlocks() {
        var (k, fw) = Self.launched(populate: 0)
        for i in 0..<UInt64(512) { #expect(k.fault(&fw, ipa: 0x40_0000 + i * pageBytes) == .ok) }
        expectEqual(fw.rmm.rttFold(rd: k.rd, ipa: 0x40_0000, level: 3).status, .success)
        expectEqual(fw.rmm.realm(k.rd)!.entry(0x40_0000, level: 2), .assigned(.ram, pa: 0x9040_0000))
        k.setAttributes(&fw, gpa: 0x40_1000, bytes: 0x1000, shared: true)
        let r = fw.rmm.realm(k.rd)!
        expectEqual(r.entry(0x40_1000, level: 3), .unassigned(.destroyed))
        expectEqual(r.entry(0x40_2000, level: 3), .assigned(.ram, pa: 0x9040_2000))
        expectEqual(fw.rmm.state(0x9040_1000), .ns)
        expectEqual(fw.rmm.count(.data), 511)
    }

    @Test func destroyGivesEverythingBack() {
        var (k, fw) = Self.launched()
        expectEqual(k.fault(&fw, ipa: 0x30_0000), .ok)
        expectEqual(k.destroy(&fw), .ok)
        expectEqual(k.state, .dead)
        expectTrue(fw.rmm.granules.isEmpty)
        expectTrue(fw.rmm.realms.isEmpty)
        expectEqual(k.stats.leaked, 0)
        expectEqual(k.stats.delegations, k.stats.undelegations)
        expectTrue(Set(fw.freed).isSuperset(of: [0x8700_0000, 0x8700_1000]))
    }

    /// When EL3 refuses an undelegate inside the RMM, it is the RMM's panic, not a host leak;
    /// when the RMM itself refuses (RMI_ERROR_INPUT), the host keeps the page (a leak) and
    /// stops that unmap.
    @Test func leaksAndPanics() {
        var (k, fw) = Self.launched()
        expectEqual(k.fault(&fw, ipa: 0x30_0000), .ok)
        expectEqual(k.fault(&fw, ipa: 0x30_1000), .ok)
        _ = fw.gpt.undelegate(0x9030_0000, caller: .realm)  // the GPT changed behind the RMM's back
        k.setAttributes(&fw, gpa: 0x30_0000, bytes: 0x2000, shared: true)
        expectEqual(fw.panics, 1)
        expectEqual(k.stats.leaked, 0)
        expectEqual(fw.rmm.realms[k.rd]!.entry(0x30_1000, level: 3), .assigned(.ram, pa: 0x9030_1000))  // the loop stopped
        var (k2, fw2) = Self.launched()
        #expect(k2.release(&fw2, 0x9000_0000, pool: false) == false && k2.stats.leaked == 1)  // DATA, not DELEGATED
    }
}
