import Testing
import Hardware
import HostKernel
import PageTables
@testable import GuestKernel
import Expectations

/// The guest's own kernel and the SNP conversion protocol, with the machine's side stubbed.
struct GuestKernelTests {
    /// set_memory_decrypted: PVALIDATE rescind, then the PSC to shared, both inside the
    /// prepare hook, before the PTE loses its C-bit; set_memory_encrypted: PSC to private,
    /// then PVALIDATE, in the finish hook (arch/x86/mm/mem_encrypt_amd.c).
    @Test func snpConversionsRunInTheDocumentedOrder() throws {
        var g = try GuestKernel(name: "vm0", memory: 8 << 20)
        var calls: [String] = []
        let pvalidate: SNPPvalidate = { gfn, size, v in
            calls.append("pvalidate \(hex(gfn)) \(size) \(v)")
            return .success
        }
        let vmgexit: SNPVMGEXIT = { write in
            var r = PSCRequest(endEntry: -1, entries: [])
            write(&r)
            calls.append("psc \(r.entries.map { "\(hex($0.gfn)):\($0.operation)" }.joined(separator: ","))")
            return 0
        }
        expectTrue(g.isEncrypted(gfn: 3))
        expectEqual(g.snpSetMemory(3..<5, encrypt: false, pvalidate: pvalidate, vmgexit: vmgexit).kind, .success)
        expectEqual(calls, ["pvalidate 0x3 4K false", "pvalidate 0x4 4K false", "psc 0x3:2,0x4:2"])
        expectTrue(!g.isEncrypted(gfn: 3))
        expectTrue(!g.isEncrypted(gfn: 4))
        expectTrue(g.isEncrypted(gfn: 5))
        calls = []
        // Already shared pages are skipped: only gfn 5 converts.
        expectEqual(g.snpSetMemory(3..<6, encrypt: false, pvalidate: pvalidate, vmgexit: vmgexit).kind, .success)
        expectEqual(calls, ["pvalidate 0x5 4K false", "psc 0x5:2"])
        calls = []
        expectEqual(g.snpSetMemory(3..<4, encrypt: true, pvalidate: pvalidate, vmgexit: vmgexit).kind, .success)
        expectEqual(calls, ["psc 0x3:1", "pvalidate 0x3 4K true"])
        expectTrue(g.isEncrypted(gfn: 3))
        expectEqual(g.kernel.directPagesCount, LeafCounts(size4K: 512, size2M: 3))
    }

    /// A refused page-state change stops the conversion before the PTE changes and is the
    /// result (Linux terminates the guest here).
    @Test func aRefusedPSCIsTheResultAndThePTEKeepsItsCBit() throws {
        var g = try GuestKernel(name: "vm0", memory: 4 << 20)
        let r = g.snpSetMemory(7..<8, encrypt: false,
                               pvalidate: { _, _, _ in .success },
                               vmgexit: { _ in 0x1_0000_0000 })
        expectEqual(r.description, "PSC error 0x100000000")
        expectTrue(r.isError)
        expectTrue(g.isEncrypted(gfn: 7))
    }

    /// Where the calls sit against the PTE change: a refused change to private comes from the
    /// finish hook, after the PTE already has its C-bit back (set_memory_encrypted changes the
    /// page table first); a failed rescind comes from the prepare hook, before it changes.
    @Test func theHooksSitBeforeAndAfterThePTEChangeAsInMemEncryptAMD() throws {
        var g = try GuestKernel(name: "vm0", memory: 4 << 20)
        let ok: SNPPvalidate = { _, _, _ in .success }
        expectEqual(g.snpSetMemory(9..<10, encrypt: false, pvalidate: ok, vmgexit: { _ in 0 }).kind, .success)
        let refused = g.snpSetMemory(9..<10, encrypt: true, pvalidate: ok, vmgexit: { _ in 0x1_0000_0000 })
        expectEqual(refused.description, "PSC error 0x100000000")
        expectTrue(g.isEncrypted(gfn: 9))
        let failing: SNPPvalidate = { _, _, _ in PvalidateResult(failure: SNPStatusStub()) }
        let r = g.snpSetMemory(10..<11, encrypt: false, pvalidate: failing, vmgexit: { _ in 0 })
        expectEqual(r.description, "FAIL_SIZEMISMATCH")
        expectTrue(g.isEncrypted(gfn: 10))
    }

    /// accept_memory validates 2M where it can and falls back to 4K on FAIL_SIZEMISMATCH.
    @Test func pvalidateFallsBackTo4KOnSizeMismatch() {
        var sizes: [PageSize] = []
        let r = GuestKernel.snpPvalidate(0..<1024, validate: true) { gfn, size, _ in
            sizes.append(size)
            let mismatch = size == .size2M && gfn == 512
            return mismatch ? PvalidateResult(failure: SNPStatusStub(), sizeMismatch: true) : .success
        }
        expectTrue(r.isOK)
        expectEqual(sizes.count, 2 + 512)
        expectEqual(sizes.prefix(2), [.size2M, .size2M])
        expectTrue(sizes.dropFirst(2).allSatisfy { $0 == .size4K })
    }
}

/// A failing status for the stubbed PVALIDATE.
struct SNPStatusStub: Outcome {
    var kind: OutcomeKind { .status }
    var description: String { "FAIL_SIZEMISMATCH" }
}

/// The TDX guest's conversion order (arch/x86/coco/tdx/tdx.c, fixed in 2023): to private,
/// MapGPA and ACCEPT before the direct-map flip; to shared, the flip before MapGPA.
struct TDXGuestOrderTests {
    @Test func mapGPAAndAcceptComeWhereTheKernelPutsThem() throws {
        var config = KernelConfig(memEncrypt: true, smeCoherent: true)
        config.ccSharedBit = true
        var g = try GuestKernel(name: "td", memory: 16 << 20, config: config)
        expectTrue(g.isEncrypted(gfn: 0x200))  // private by default: no shared bit
        var log: [String] = []
        // To shared: MapGPA (in enc_status_change_finish, after the flip) with the shared bit in R12.
        let r1 = g.tdxSetMemory(0x200..<0x201, encrypt: false, mapGPA: { r12, r13 in
            log.append("mapgpa \(hex(r12)) \(hex(r13))")
            return (0, 0)
        }, accept: { _, _ in log.append("accept"); return true })
        expectEqual(r1.description, "ok")
        expectEqual(log, ["mapgpa 0x800000200000 0x1000"])
        expectTrue(!g.isEncrypted(gfn: 0x200))
        // To private: MapGPA (no shared bit), then ACCEPT, in enc_status_change_prepare.
        log = []
        let r2 = g.tdxSetMemory(0x200..<0x201, encrypt: true, mapGPA: { r12, r13 in
            log.append("mapgpa \(hex(r12)) \(hex(r13))")
            return (0, 0)
        }, accept: { gpa, level in log.append("accept \(hex(gpa)) \(level)"); return true })
        expectEqual(r2.description, "ok")
        expectEqual(log, ["mapgpa 0x200000 0x1000", "accept 0x200000 0"])
        expectTrue(g.isEncrypted(gfn: 0x200))
        // A failed ACCEPT fails the call before the flip: -EIO, the PTE still shared.
        _ = g.tdxSetMemory(0x201..<0x202, encrypt: false, mapGPA: { _, _ in (0, 0) }, accept: { _, _ in true })
        let r3 = g.tdxSetMemory(0x201..<0x202, encrypt: true, mapGPA: { _, _ in (0, 0) }, accept: { _, _ in false })
        expectEqual(r3.description, "-EIO")
        expectTrue(!g.isEncrypted(gfn: 0x201))
        // RETRY resumes from R11; three without progress give up.
        var calls = 0
        expectTrue(GuestKernel.tdxMapGPA(0, 0x3000, enc: true) { r12, _ in calls += 1; return r12 == 0 ? (1, 0x1000) : (0, 0) })
        expectEqual(calls, 2)
        calls = 0
        expectTrue(!GuestKernel.tdxMapGPA(0, 0x3000, enc: true) { _, _ in calls += 1; return (1, 0) })
        expectEqual(calls, 3)
    }

    /// tdx_accept_memory tries 1G, then 2M, then 4K at each step, the largest aligned size
    /// that fits first; a refusal at one size falls back to the next; a 4K refusal fails.
    @Test func acceptMemoryTriesLargestSizesFirst() {
        var log: [String] = []
        // [1G - 4K, 3G + 2M + 4K) with 1G refused (OPERAND_INVALID in TDX 1.5): 4K, then 2M
        // steps to 3G, then 2M, then 4K.
        let ok = GuestKernel.tdxAcceptMemory((1 << 30) - 0x1000, (3 << 30) + (2 << 20) + 0x1000) { gpa, level in
            log.append("\(hex(gpa)):\(level)")
            return level < 2
        }
        // 4K, 1024 2M steps with a 1G attempt at 1G and 2G, then 2M and 4K at the end.
        expectTrue(ok)
        expectEqual(log.count, 1 + 1024 + 2 + 1 + 1)
        expectEqual(log[0], "0x3ffff000:0")
        expectEqual(log[1], "0x40000000:2")
        expectEqual(log[2], "0x40000000:1")
        expectEqual(log.filter { $0.hasSuffix(":2") }, ["0x40000000:2", "0x80000000:2"])
        expectEqual(log.suffix(2), ["0xc0000000:1", "0xc0200000:0"])
        log = []
        expectTrue(!GuestKernel.tdxAcceptMemory(0, 0x200000) { gpa, level in log.append("\(hex(gpa)):\(level)"); return false })
        expectEqual(log, ["0x0:1", "0x0:0"])
    }
}
