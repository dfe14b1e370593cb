import Foundation
import Hardware
import PageTables
import Testing
@testable import HostKernel
import Expectations

/// Seeded differential test of mmap (MAP_FIXED), munmap, mprotect and faults on a process's
/// page tables against a naive per-page model of the same rules: each page's VMA flags,
/// and its entry (present, RW, NX, dirty, special, C-bit) compared after every operation,
/// with the page-table and allocation accounting.
struct UserMMDifferentialTests {
    static let base: UInt64 = 0x1000_0000
    static let window = 64
    /// Operations per seed: 3,000 by default, 20,000 with COCOMEM_LONG_TESTS.
    static let operations: Int = ProcessInfo.processInfo.environment["COCOMEM_LONG_TESTS"] == nil ? 3_000 : 20_000

    struct NaivePage: Equatable {
        var mapped = false
        var read = false, write = false, exec = false
        /// The entry, if one was made: (present, writable, nx, dirty, special).
        var pte: (present: Bool, writable: Bool, nx: Bool, dirty: Bool, special: Bool)?

        static func == (a: NaivePage, b: NaivePage) -> Bool {
            a.mapped == b.mapped && a.read == b.read && a.write == b.write && a.exec == b.exec
                && a.pte.map { [$0.present, $0.writable, $0.nx, $0.dirty, $0.special] } == b.pte.map { [$0.present, $0.writable, $0.nx, $0.dirty, $0.special] }
        }
    }

    struct Rng {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            return z ^ (z >> 31)
        }
        mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    }

    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func randomSequencesAgreeWithNaiveModel(seed: UInt64) throws {
        var m = UserMM(ram: [0..<(1 << 30)], memEncrypt: true)
        m.addProcess("p")
        var naive = [NaivePage](repeating: NaivePage(), count: Self.window)
        var rng = Rng(state: seed)
        for step in 0..<Self.operations {
            let i = rng.below(Self.window), n = 1 + rng.below(min(8, Self.window - i))
            let prot = UserProt(read: rng.below(4) != 0, write: rng.below(2) == 0, exec: rng.below(4) == 0)
            let addr = Self.base + UInt64(i) << pageShift, len = UInt64(n) << pageShift
            let what: String
            switch rng.below(6) {
            case 0:
                what = "mmap \(i)+\(n) \(prot)"
                expectEqual(m.mmap(process: 0, MmapRequest(addr: addr, len: len, prot: prot, fixed: .fixed)), .mapped(addr), "\(what)")
                for k in i..<i + n { naive[k] = NaivePage(mapped: true, read: prot.read, write: prot.write, exec: prot.exec) }
            case 1:
                what = "munmap \(i)+\(n)"
                expectEqual(m.munmap(process: 0, addr: addr, len: len), .ok)
                for k in i..<i + n { naive[k] = NaivePage() }
            case 2:
                what = "mprotect \(i)+\(n) \(prot)"
                var expected = KernelStatus.ok
                for k in i..<i + n {
                    guard naive[k].mapped else { expected = .error(.ENOMEM); break }
                    if (naive[k].read, naive[k].write, naive[k].exec) == (prot.read, prot.write, prot.exec) { continue }
                    naive[k].read = prot.read; naive[k].write = prot.write; naive[k].exec = prot.exec
                    if var p = naive[k].pte {
                        p.present = prot.read || prot.write || prot.exec
                        p.nx = p.present && !prot.exec  // PAGE_NONE is A|G: no NX
                        // PAGE_COPY has no RW; can_change_pte_writable gives it back to an exclusive, dirty anonymous page.
                        p.writable = p.present && prot.write && p.dirty && !p.special
                        naive[k].pte = p
                    }
                }
                expectEqual(m.mprotect(process: 0, addr: addr, len: len, prot: prot), expected, "\(what)")
            default:
                let write = rng.below(2) == 0
                what = "\(write ? "write" : "read") \(i)"
                var p = naive[i]
                let allowed = p.mapped && (write ? p.write : (p.read || p.write || p.exec))
                var expected = VMFaultResult.sigsegv
                if allowed {
                    expected = .handled
                    if let e = p.pte {
                        if write && !e.writable { p.pte = (true, true, e.nx, true, false) }  // COW of the zero page, or reuse
                    } else {
                        p.pte = write ? (true, true, !p.exec, true, false) : (true, false, !p.exec, false, true)
                    }
                    naive[i] = p
                }
                expectEqual(m.handleFault(process: 0, addr: addr, write: write), expected, "\(what)")
            }
            // Compare every page.
            var anonPages: UInt64 = 0
            for k in 0..<Self.window {
                let va = Self.base + UInt64(k) << pageShift
                var real = NaivePage()
                if let vi = m.processes[0].vmaIndex(va) {
                    let f = m.processes[0].vmas[vi].flags
                    real.mapped = true
                    real.read = f.contains(.read); real.write = f.contains(.write); real.exec = f.contains(.exec)
                }
                if let leaf = m.processes[0].pageTable.lookup(VirtAddr(va)) {
                    let a = leaf.descriptor.attributes
                    #expect(a.contains(.encrypted) && a.contains(.user) == a.contains(.present), "step \(step) \(what): page \(k) \(a)")
                    real.pte = (a.contains(.present), a.contains(.writable), a.contains(.noExecute), a.contains(.dirty), a.contains(.special))
                    if !a.contains(.special) { anonPages += 1 }
                }
                guard real == naive[k] else {
                    Issue.record("seed \(seed) step \(step) \(what): page \(k) is \(real), the naive model has \(naive[k])")
                    return
                }
            }
            expectEqual(m.allocatedPages, anonPages + (m.zeroPFN == nil ? 0 : 1), "step \(step) \(what)")
            if step % 97 == 0 { try m.processes[0].pageTable.checkInvariants() }
        }
        try m.processes[0].pageTable.checkInvariants()
    }
}
