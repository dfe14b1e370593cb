import Testing
import Hardware
import HostKernel
import PageTables
@testable import GuestKernel

/// The guest's own kernel and the SNP conversion protocol, with the machine's side stubbed.
@Suite struct GuestKernelTests {
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
        let vmgexit: SNPVMGEXIT = { r in
            calls.append("psc \(r.entries.map { "\(hex($0.gfn)):\($0.operation)" }.joined(separator: ","))")
            return 0
        }
        #expect(g.isEncrypted(gfn: 3))
        #expect(g.snpSetMemory(3..<5, encrypt: false, pvalidate: pvalidate, vmgexit: vmgexit).kind == .success)
        #expect(calls == ["pvalidate 0x3 4K false", "pvalidate 0x4 4K false", "psc 0x3:2,0x4:2"])
        #expect(!g.isEncrypted(gfn: 3) && !g.isEncrypted(gfn: 4) && g.isEncrypted(gfn: 5))
        calls = []
        // Already shared pages are skipped: only gfn 5 converts.
        #expect(g.snpSetMemory(3..<6, encrypt: false, pvalidate: pvalidate, vmgexit: vmgexit).kind == .success)
        #expect(calls == ["pvalidate 0x5 4K false", "psc 0x5:2"])
        calls = []
        #expect(g.snpSetMemory(3..<4, encrypt: true, pvalidate: pvalidate, vmgexit: vmgexit).kind == .success)
        #expect(calls == ["psc 0x3:1", "pvalidate 0x3 4K true"])
        #expect(g.isEncrypted(gfn: 3) && g.kernel.directPagesCount == LeafCounts(size4K: 512, size2M: 3))
    }

    /// A refused page-state change stops the conversion before the PTE changes and is the
    /// result (Linux terminates the guest here).
    @Test func aRefusedPSCIsTheResultAndThePTEKeepsItsCBit() throws {
        var g = try GuestKernel(name: "vm0", memory: 4 << 20)
        let r = g.snpSetMemory(7..<8, encrypt: false,
                               pvalidate: { _, _, _ in .success },
                               vmgexit: { _ in 0x1_0000_0000 })
        #expect(r.description == "PSC error 0x100000000" && r.isError)
        #expect(g.isEncrypted(gfn: 7))
    }

    /// Where the calls sit against the PTE change: a refused change to private comes from the
    /// finish hook, after the PTE already has its C-bit back (set_memory_encrypted changes the
    /// page table first); a failed rescind comes from the prepare hook, before it changes.
    @Test func theHooksSitBeforeAndAfterThePTEChangeAsInMemEncryptAMD() throws {
        var g = try GuestKernel(name: "vm0", memory: 4 << 20)
        let ok: SNPPvalidate = { _, _, _ in .success }
        #expect(g.snpSetMemory(9..<10, encrypt: false, pvalidate: ok, vmgexit: { _ in 0 }).kind == .success)
        let refused = g.snpSetMemory(9..<10, encrypt: true, pvalidate: ok, vmgexit: { _ in 0x1_0000_0000 })
        #expect(refused.description == "PSC error 0x100000000" && g.isEncrypted(gfn: 9))
        let failing: SNPPvalidate = { _, _, _ in PvalidateResult(failure: SNPStatusStub()) }
        let r = g.snpSetMemory(10..<11, encrypt: false, pvalidate: failing, vmgexit: { _ in 0 })
        #expect(r.description == "FAIL_SIZEMISMATCH" && g.isEncrypted(gfn: 10))
    }

    /// accept_memory validates 2M where it can and falls back to 4K on FAIL_SIZEMISMATCH.
    @Test func pvalidateFallsBackTo4KOnSizeMismatch() {
        var sizes: [PageSize] = []
        let r = GuestKernel.snpPvalidate(0..<1024, validate: true) { gfn, size, _ in
            sizes.append(size)
            let mismatch = size == .size2M && gfn == 512
            return mismatch ? PvalidateResult(failure: SNPStatusStub(), sizeMismatch: true) : .success
        }
        #expect(r == nil)
        #expect(sizes.count == 2 + 512 && sizes.prefix(2) == [.size2M, .size2M] && sizes.dropFirst(2).allSatisfy { $0 == .size4K })
    }
}

/// A failing status for the stubbed PVALIDATE.
struct SNPStatusStub: Outcome {
    var kind: OutcomeKind { .status }
    var description: String { "FAIL_SIZEMISMATCH" }
}
