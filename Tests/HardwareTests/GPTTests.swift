import Testing
@testable import Hardware
import Expectations

/// The granule protection table: TF-A lib/gpt_rme (v2.12.0) for its shapes, transitions,
/// shatters and fuses; QEMU granule_protection_check for the check.
struct GPTTests {
    static let g2: UInt64 = 0x8000_0000
    static let mib: UInt64 = 1 << 20

    /// The GPT of a machine with RAM [2G, 4G) and a 32-bit PPS: two L1 tables of two 512M
    /// contiguous blocks each; the low 2 GiB (no RAM) L0 blocks of ANY.
    static func gpt(_ ram: [Range<UInt64>] = [g2..<(g2 * 2)]) -> GPT { GPT(ram: ram, ppsBits: 32) }

    @Test func bootShapes() {
        let t = Self.gpt()
        expectEqual(t.ppsBits, 32)
        expectEqual(t.l0, [0xF1, 0xF1, 0x3, 0x1003])
        expectEqual(t.l1.count, 2)
        // By default the PPS is the smallest size strictly above the end of RAM.
        expectEqual(GPT(ram: [Self.g2..<(Self.g2 * 2)]).ppsBits, 36)
        expectEqual(GPT(ram: [0..<(1 << 36) - 0x1000]).ppsBits, 36)
        expectTrue(t.l1.allSatisfy { $0.allSatisfy { $0 == GPT.contiguous(.ns, 3) } })
        expectEqual(GPT.contiguous(.ns, 3), 0x391)
        // RAM from 0x80001000 to 0x80400000: the first 2M in Granules descriptors (granule 0
        // ANY), then one 2M contiguous block; the rest of the 1 GB region ANY.
        let p = Self.gpt([(Self.g2 + 0x1000)..<(Self.g2 + 4 * Self.mib)])
        expectEqual(p.l1[0][0], 0x9999_9999_9999_999F)
        expectEqual(p.l1[0][1], GPT.granules(.ns))
        expectEqual(p.l1[0][32], GPT.contiguous(.ns, 1))
        expectEqual(p.l1[0][63], GPT.contiguous(.ns, 1))
        expectEqual(p.l1[0][64], GPT.granules(.any))
        // 32M-aligned, 32M long: one 32M block.
        let q = Self.gpt([Self.g2..<(Self.g2 + 32 * Self.mib)])
        expectTrue((0..<512).allSatisfy { q.l1[0][$0] == GPT.contiguous(.ns, 2) })
        expectEqual(q.l1[0][512], GPT.granules(.any))
    }

    /// Every GPI encoding against every PA space (QEMU granule_protection_check, GPCCR's
    /// NSO, SA and NSP off): NO_ACCESS fails, ANY passes, SECURE/NS/ROOT/REALM pass their own
    /// space, everything else is a walk fault.
    @Test func everyGPIAgainstEveryAddressSpace() {
        var t = Self.gpt()
        let pa = Self.g2 + 0x5000
        t.shatter(0, pa, .ns)
        for raw in UInt64(0)...15 {
            let k = GPT.entryIndex(pa), shift = ((pa >> 12) & 15) << 2
            t.l1[0][k] = t.l1[0][k] & ~(0xF << shift) | raw << shift
            // Columns: secure, ns, root, realm (PhysicalAddressSpace order). "o" ok, "F" GPF,
            // "W" walk fault: the matrix of QEMU's granule_protection_check.
            let row = ["F F F F", "W W W W", "W W W W", "W W W W", "W W W W", "W W W W", "W W W W", "W W W W",
                       "o F F F", "F o F F", "F F o F", "F F F o", "W W W W", "W W W W", "W W W W", "o o o o"][Int(raw)]
            for (pas, c) in zip(PhysicalAddressSpace.allCases, row.split(separator: " ")) {
                let expected: GPCResult = c == "o" ? .ok : c == "F" ? .gpf(level: 1) : .walkFault(level: 1)
                expectEqual(t.check(pa, pas), expected, "GPI \(raw), \(pas)")
            }
        }
        // Outside the table: an L0 block of ANY passes everything; at or above the PPS a
        // Non-secure access passes and the others are address-size faults.
        expectTrue(PhysicalAddressSpace.allCases.allSatisfy { t.check(0x1000, $0) == .ok })
        expectEqual(t.check(1 << 32, .nonSecure), .ok)
        expectTrue([PhysicalAddressSpace.secure, .root, .realm].allSatisfy { t.check(1 << 32, $0) == .addressSize })
        // A contiguous descriptor with Contig 0 is a walk fault; so are a reserved L0 GPI and
        // an L0 type that is neither block nor table.
        t.l1[1][0] = 0x91
        expectEqual(t.check(Self.g2 + (1 << 30), .nonSecure), .walkFault(level: 1))
        t.l0[0] = 0x21
        expectEqual(t.check(0x1000, .nonSecure), .walkFault(level: 0))
        t.l0[0] = 0xF5
        expectEqual(t.check(0x1000, .root), .walkFault(level: 0))
    }

    /// Delegating one granule of a 512M block shatters it as shatter_512mb does: its 32M
    /// sub-block split into a 2M of Granules descriptors and fifteen 2M blocks, the other
    /// fifteen 32M blocks left contiguous; one TLBI RPALOS of 512M, then the granule's own.
    /// Undelegating it fuses the whole table back, 2M, 32M, 512M, with no TLBI.
    @Test func shatterAndFuseAt512M() {
        var t = Self.gpt()
        let before = t.l1
        let pa = Self.g2 + 0x123_4000  // 32M sub-block 0, 2M sub-block 9
        expectEqual(t.delegate(pa), nil)
        let e = t.l1[0], k = GPT.entryIndex(pa)
        expectEqual(e[k], 0x9999_9999_999B_9999)
        expectTrue((288..<320).allSatisfy { $0 == k || e[$0] == GPT.granules(.ns) })
        expectTrue((0..<512).allSatisfy { ($0 >= 288 && $0 < 320) || e[$0] == GPT.contiguous(.ns, 1) })
        expectTrue((512..<8192).allSatisfy { e[$0] == GPT.contiguous(.ns, 2) })
        expectEqual(e[8192], GPT.contiguous(.ns, 3))
        expectEqual(t.stats.shatters, [0, 0, 1])
        expectEqual(t.stats.tlbi512M, 1)
        expectEqual(t.stats.tlbiGranule, 1)
        expectEqual(t.stats.popaFlushes, 2)
        expectEqual(t.check(pa, .realm), .ok)
        expectEqual(t.check(pa, .nonSecure), .gpf(level: 1))
        expectEqual(t.check(pa, .root), .gpf(level: 1))
        expectEqual(t.undelegate(pa), nil)
        expectEqual(t.l1, before)
        expectEqual(t.stats.fuses, [0, 0, 1])
        expectEqual(t.stats.tlbiGranule, 3)
        expectEqual(t.stats.popaFlushes, 4)
    }

    /// The same at 32M and 2M: the 32M block keeps fifteen 2M blocks; a 2M block becomes 32
    /// Granules descriptors. A second delegation in the same 2M neither shatters nor fuses.
    @Test func shatterAt32MAnd2M() {
        var t = Self.gpt([Self.g2..<(Self.g2 + 32 * Self.mib)])
        expectEqual(t.delegate(Self.g2 + 0x20_0000), nil)
        expectTrue((0..<32).allSatisfy { t.l1[0][$0] == GPT.contiguous(.ns, 1) })
        expectEqual(t.l1[0][32], 0x9999_9999_9999_999B)
        expectEqual(t.stats.shatters, [0, 1, 0])
        expectEqual(t.stats.tlbi32M, 1)
        var u = Self.gpt([Self.g2..<(Self.g2 + 2 * Self.mib)])
        expectEqual(u.delegate(Self.g2 + 0x1_0000), nil)
        expectEqual(u.delegate(Self.g2 + 0x1_1000), nil)
        expectEqual(u.l1[0][1], 0x9999_9999_9999_99BB)
        expectEqual(u.l1[0][0], GPT.granules(.ns))
        expectEqual(u.stats.shatters, [1, 0, 0])
        expectEqual(u.stats.tlbi2M, 1)
        // Every granule of the 2M delegated: it fuses into one REALM 2M block (no 32M: its
        // neighbours in the 32M are ANY).
        for g in UInt64(0)..<512 where g != 16 && g != 17 { _ = u.delegate(Self.g2 + g << 12) }
        expectTrue((0..<32).allSatisfy { u.l1[0][$0] == GPT.contiguous(.realm, 1) })
        expectEqual(u.stats.fuses, [1, 0, 0])
    }

    /// The refusals of gpt_delegate_pas/gpt_undelegate_pas, in their order.
    @Test func transitionsRefuse() {
        var t = Self.gpt()
        expectEqual(t.delegate(Self.g2 + 0x800), .invalid)  // unaligned
        expectEqual(t.delegate(0xffff_f000), .invalid)  // base + 4K = 2^PPS: refused (>=)
        expectEqual(t.delegate(1 << 32), .invalid)  // past the PPS
        expectEqual(t.delegate(Self.g2, caller: .nonSecure), .invalid)  // not Realm or Secure
        expectEqual(t.delegate(0x1000), .invalid)  // an L0 block
        #expect(t.delegate(Self.g2) == nil && t.delegate(Self.g2) == .notPermitted)  // not NS any more
        expectEqual(t.undelegate(Self.g2 + 0x1000), .notPermitted)  // NS
        expectEqual(t.undelegate(Self.g2, caller: .secure), .notPermitted)
        expectEqual(t.undelegate(Self.g2, caller: .nonSecure), .notPermitted)
        expectEqual(t.delegate(Self.g2 + 0x1000, caller: .secure), nil)
        expectEqual(t.gpi(Self.g2 + 0x1000).gpi, .secure)
        expectEqual(t.undelegate(Self.g2 + 0x1000, caller: .realm), .notPermitted)
        expectEqual(t.undelegate(Self.g2 + 0x1000, caller: .secure), nil)
        expectEqual(t.gpi(Self.g2 + 0x1000).gpi, .ns)
        expectEqual(t.undelegate(0x1000), .invalid)
        expectEqual(t.stats.transitions, 3)
    }

    /// Fusing climbs only through contiguous neighbours: a 32M block whose 512M parent is
    /// not uniform fuses back to 32M (check_fuse_512mb fails, fuse_32mb); a 2M block among
    /// neighbours that are uniform NS Granules descriptors, not 2M contiguous ones, fuses to
    /// 2M only.
    @Test func fuseStopsWhereNeighboursAreNotContiguous() {
        var t = Self.gpt([Self.g2..<(Self.g2 + 32 * Self.mib)])
        let before = t.l1
        expectEqual(t.delegate(Self.g2 + 0x40_0000), nil)
        expectEqual(t.undelegate(Self.g2 + 0x40_0000), nil)
        expectEqual(t.l1, before)
        expectEqual(t.stats.fuses, [0, 1, 0])
        var u = Self.gpt([Self.g2..<(Self.g2 + 32 * Self.mib)])
        for k in 0..<512 { u.l1[0][k] = GPT.granules(.ns) }
        expectEqual(u.delegate(Self.g2 + 0x40_0000), nil)
        expectEqual(u.undelegate(Self.g2 + 0x40_0000), nil)
        expectEqual(u.stats.fuses, [1, 0, 0])
        expectEqual(u.stats.shatters, [0, 0, 0])
        expectTrue((64..<96).allSatisfy { u.l1[0][$0] == GPT.contiguous(.ns, 1) })
        expectEqual(u.l1[0][0], GPT.granules(.ns))
        expectEqual(u.l1[0][96], GPT.granules(.ns))
        expectEqual(u.refusedGranules(in2M: Self.g2 + 0x40_0000), 0)
        expectEqual(t.refusedGranules(in2M: Self.g2 + (1 << 30)), 0)
        expectEqual(t.delegate(Self.g2 + 0x5000), nil)
        expectEqual(t.refusedGranules(in2M: Self.g2), 1)
    }
}

/// TF-RMM's RMI_GRANULE_DELEGATE/UNDELEGATE (tf-rmm-v0.6.0 runtime/rmi/granule.c), over
/// the GPT.
struct RMMGranuleTests {
    @Test func delegateAndUndelegate() {
        var gpt = GPT(ram: [0x8000_0000..<0x1_0000_0000], ppsBits: 32)  // a platform with its PPS at the end of DRAM
        var rmm = RMM(dram: [0x8000_0000..<0x1_0000_0000])
        expectEqual(rmm.delegate(0x8000_0800, gpt: &gpt), .errorInput)  // unaligned
        expectEqual(rmm.delegate(0x4000_0000, gpt: &gpt), .errorInput)  // not DRAM
        expectEqual(rmm.delegate(0xffff_f000, gpt: &gpt), .errorInput)  // EL3 refuses (base + 4K = 2^PPS): RMI_ERROR_INPUT
        expectEqual(rmm.delegate(0x8000_0000, gpt: &gpt), .success)
        expectEqual(rmm.state(0x8000_0000), .delegated)
        expectEqual(rmm.delegate(0x8000_0000, gpt: &gpt), .errorInput)  // not NS
        expectEqual(rmm.undelegate(0x8000_1000, gpt: &gpt) as? RMIStatus, .errorInput)  // not DELEGATED
        // EL3 refusing an undelegate the RMM believes in is the RMM's panic.
        _ = gpt.undelegate(0x8000_0000)
        expectEqual(rmm.undelegate(0x8000_0000, gpt: &gpt) as? RMMPanic, RMMPanic(reason: "Granule 0x80000000 undelegate call failed (-EPERM (E_RMM_BAD_PAS))"))
        expectEqual(RMIStatus.errorRTT(level: 2).description, "RMI_ERROR_RTT(2)")
        expectEqual(RMIStatus.errorRTT(level: 2).rawValue, 0x204)
        expectEqual(RMIStatus.success.description, "RMI_SUCCESS")
        expectEqual(RMIStatus.errorInput.description, "RMI_ERROR_INPUT")
    }
}
