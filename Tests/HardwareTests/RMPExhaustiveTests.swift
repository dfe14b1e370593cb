import Testing
import PageTables
@testable import Hardware
@testable import HardwareCore
import Expectations

/// Every instruction over every reachable state of one 2M region in which up to three 4K
/// entries differ from the default (a 2M page counts as one), checking the RMP invariants
/// after each: the per-2M count equals the assigned 4K entries, a 2M entry's 512 pages
/// agree, and no VMPL above 0 has a permission VMPL0 lacks.
struct RMPExhaustiveTests {
    static let base: UInt64 = 2 << 20        // the region's SPA
    static let guestBase: UInt64 = 4 << 20   // GPA of its first page for ASID 5
    static let offsets: [UInt64] = [0, 1, 511]

    /// One instruction applied to a state; returns what it answered.
    typealias Op = (name: String, run: (inout RMP) -> String)

    static func ctx(_ k: UInt64, asid: UInt32 = 5, vmpl: Int = 0, npt: PageSize = .size4K) -> GuestContext {
        GuestContext(asid: asid, vmpl: vmpl, gpa: guestBase + k * pageBytes, spa: base + k * pageBytes, nptSize: npt)
    }

    static var operations: [Op] {
        var ops: [Op] = []
        for k in offsets {
            let spa = base + k * pageBytes, gpa = guestBase + k * pageBytes
            for (label, u) in [
                ("assign", RMPUpdate(gpa: gpa, assigned: true, asid: 5)),
                ("assign-immutable", RMPUpdate(gpa: gpa, assigned: true, immutable: true, asid: 5)),
                ("firmware", RMPUpdate(assigned: true, immutable: true, asid: 0)),
                ("assign-other", RMPUpdate(gpa: gpa, assigned: true, asid: 6)),
                ("unassign", RMPUpdate(assigned: false)),
            ] {
                ops.append(("rmpupdate 4K +\(k) \(label)", { $0.rmpupdate(spa: spa, u).description }))
            }
            for v in [true, false] {
                ops.append(("pvalidate 4K +\(k) \(v)", { $0.pvalidate(ctx(k), size: .size4K, validate: v).description }))
            }
            ops.append(("rmpadjust 4K +\(k) vmpl1 rw", { $0.rmpadjust(ctx(k), size: .size4K, targetVMPL: 1, permissions: [.read, .write], vmsa: false).description }))
            ops.append(("rmpadjust 4K +\(k) from vmpl1 to 2 r", { $0.rmpadjust(ctx(k, vmpl: 1), size: .size4K, targetVMPL: 2, permissions: .read, vmsa: false).description }))
            ops.append(("rmpadjust 4K +\(k) from vmpl1 to 2 x", { $0.rmpadjust(ctx(k, vmpl: 1), size: .size4K, targetVMPL: 2, permissions: .executeUser, vmsa: false).description }))
            ops.append(("rmpquery +\(k)", { $0.rmpquery(ctx(k), targetVMPL: 1).description }))
            ops.append(("rmpread +\(k)", { $0.rmpread(spa: spa).description }))
        }
        for (label, u) in [
            ("assign", RMPUpdate(gpa: guestBase, assigned: true, size: .size2M, asid: 5)),
            ("assign-immutable", RMPUpdate(gpa: guestBase, assigned: true, size: .size2M, immutable: true, asid: 5)),
            ("unassign", RMPUpdate(assigned: false, size: .size2M)),
        ] {
            ops.append(("rmpupdate 2M \(label)", { $0.rmpupdate(spa: base, u).description }))
        }
        ops.append(("rmpupdate 2M misaligned", { $0.rmpupdate(spa: base + pageBytes, RMPUpdate(gpa: guestBase, assigned: true, size: .size2M, asid: 5)).description }))
        ops.append(("psmash", { $0.psmash(spa: base).description }))
        for v in [true, false] {
            ops.append(("pvalidate 2M \(v)", { $0.pvalidate(ctx(0), size: .size2M, validate: v).description }))
        }
        ops.append(("rmpadjust 2M vmpl1 r", { $0.rmpadjust(ctx(0), size: .size2M, targetVMPL: 1, permissions: .read, vmsa: false).description }))
        return ops
    }

    /// The non-default entries of the region (offset, lo, hi): the state's identity.
    static func key(_ r: RMP) -> [UInt64] {
        let c = r.code(Int(base >> 21))
        if c == -1 { return [] }
        if c <= -2 { let e = r.largeEntries[Int(-2 - c)]; return [0, e.lo, e.hi] }  // one 2M page
        // An entry whose flag byte is 0 is the default one (the invariant checked after every
        // instruction says so), so only the others are read. A while loop: this test is built
        // unoptimized, and a range's iterator costs more than the rest of the loop.
        var k: [UInt64] = []
        let flags = r.flags, first = Int(c) << 9
        var i = 0
        while i < 512 {
            if flags[first + i].rawValue != 0 {
                let e = r[(base >> 12) + UInt64(i)]
                if e != .hypervisor { k += [UInt64(i), e.lo, e.hi] }
            }
            i += 1
        }
        return k
    }

    /// How many entries differ from the default, a 2M page counting as one.
    static func differing(_ key: [UInt64]) -> Int {
        if key.count >= 3 && key[0] == 0 && RMPEntry(lo: key[1], hi: key[2]).isLarge { return 1 }
        return key.count / 3
    }

    @Test func everyInstructionFromEveryReachableStateKeepsTheInvariants() throws {
        let ops = Self.operations
        var seen: Set<[UInt64]> = [Self.key(RMP(end: 4 << 20))]
        var frontier = [RMP(end: 4 << 20)]
        var transitions = 0
        var results: Set<String> = []
        while let state = frontier.popLast() {
            for op in ops {
                var next = state
                let answer = op.run(&next)
                transitions += 1
                results.insert(answer.split(separator: " ").first.map(String.init) ?? answer)
                do {
                    try next.checkInvariants()
                } catch {
                    Issue.record("\(op.name) from \(Self.key(state)) broke '\(error.name)': \(error.detail)")
                    return
                }
                let k = Self.key(next)
                if Self.differing(k) <= 3, seen.insert(k).inserted { frontier.append(next) }
            }
        }
        // The space is explored, not sampled: these bounds fail if the search is cut short.
        expectEqual(seen.count, 1005, "\(seen.count) states")  // the whole reachable space under these operations
        expectEqual(transitions, seen.count * ops.count)
        // Every kind of answer the instructions can give appears somewhere.
        for expected in ["ok", "FAIL_INPUT", "FAIL_PERMISSION", "FAIL_OVERLAP", "FAIL_SIZEMISMATCH", "FAIL(7)", "NPF(RMP|ENC)", "NPF(RMP|ENC|SIZEM)", "#VC(0x404)"] {
            expectTrue(results.contains(expected), "no transition answered \(expected)")
        }
    }
}
