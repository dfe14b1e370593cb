import Testing
@testable import GuestKernel
@testable import Hardware
@testable import Simulation
import Expectations

/// The realm guest's kernel (Linux 6.18 arch/arm64) on KVM's realm backend: seed 004's cases.
struct CCAGuestTests {
    static func run(_ steps: String, guest: String = "", file: String = "t.yaml") throws -> [String] {
        let yaml = """
            name: t
            machine: {arch: arm64-cca, memory: 4G}
            \(guest.isEmpty ? "" : "guest: {\(guest)}\n")guests:
              - {name: r0, asid: 1, memory: 64M, placement: {pa: 0x90000000}, backing: guest-memfd-4K, vcpus: 2}
            steps:
              - realm-launch: {realm: r0}

            """ + steps
        return try Runner.run(try Scenario.load(yaml: yaml, file: file)).records.dropFirst().map(\.result)
    }

    /// vmalloc: refused as merged; flipped page by page (its linear-map alias with it) under
    /// the thread's proposal; a word from the vmalloc page runs into the guard page either way.
    @Test func vmallocAddresses() throws {
        let steps = """
              - guest-vmap: {guest: r0, gpa: 0x500000}
              - set_memory_decrypted: {guest: r0, addr: 0xffff800080000000}
              - rsi_ipa_state_get: {realm: r0, ipa: 0x500000}
              - load_unaligned_zeropad: {guest: r0, addr: 0xffff800080000ffd}

            """
        #expect(try Self.run(steps) == ["0xffff800080000000", "-EINVAL (WARN: Failed to decrypt memory, 1 pages will be leaked)",
                                         "RSI_SUCCESS (top 0x501000, RIPAS RAM)",
                                         "translation fault fixed up by ex_handler_load_unaligned_zeropad (the next page's bytes read as zero)"])
        #expect(try Self.run(steps, guest: "cca-vmalloc: per-page") == ["0xffff800080000000", "ok", "RSI_SUCCESS (top 0x501000, RIPAS EMPTY)",
                                                                         "translation fault fixed up by ex_handler_load_unaligned_zeropad (the next page's bytes read as zero)"])
    }

    /// The word-at-a-time read across into a shared page reads its alias; without
    /// CONFIG_DCACHE_WORD_ACCESS nothing is read past the page.
    @Test func zeropadAndWordAccess() throws {
        let steps = """
              - set_memory_decrypted: {guest: r0, gpa: 0x400000}
              - load_unaligned_zeropad: {guest: r0, gpa: 0x3ffffd, cpu: 1}
              - realm-access: {realm: r0, ipa: 0x8000400000}

            """
        try expectEqual(Self.run(steps), ["ok", "ok", "ok"])
        #expect(try Self.run(steps, guest: "dcache-word-access: false")
            == ["ok", "ok (no CONFIG_DCACHE_WORD_ACCESS: read byte by byte, never past the page)", "ok"])
    }

    /// Run one step after the other, both orders end alike: the read comes after the whole
    /// conversion and its flush (the window of the in-place order is the explorer's to find:
    /// ExplorerTests.theRealmZeropadReadDuringAConversion).
    @Test func theOrdersOneAfterTheOther() throws {
        let steps = """
              - load_unaligned_zeropad: {guest: r0, gpa: 0x401000, cpu: 1}
              - set_memory_decrypted: {guest: r0, gpa: 0x401000}
              - load_unaligned_zeropad: {guest: r0, gpa: 0x400ffd, cpu: 1}

            """
        try expectEqual(Self.run(steps), ["ok", "ok", "ok"])
        try expectEqual(Self.run(steps, guest: "cca-enc-order: in-place"), ["ok", "ok", "ok"])
    }

    /// A linear map of blocks (rodata=off without BBML2): a flip inside a block is refused.
    @Test func blocksInTheLinearMap() throws {
        #expect(try Self.run("  - set_memory_decrypted: {guest: r0, gpa: 0x400000}\n", guest: "realm-linear-map: blocks")
            == ["-EINVAL (WARN: Failed to decrypt memory, 1 pages will be leaked)"])
        try expectEqual(Self.run("  - set_memory_decrypted: {guest: r0, gpa: 0x400000}\n", guest: "realm-linear-map: bbml2-split"), ["ok"])
    }

    /// rsi_set_memory_range: a REJECT, an error or a top out of range is -EINVAL; an accepted
    /// call without progress would be issued forever.
    @Test func rsiSetMemoryRangeLoop() {
        func answer(_ r: RSIResult?) -> RealmRIPASFailure? { GuestKernel.rsiSetMemoryRange(0, 0x2000, .ram, flags: 1) { _, _, _, _ in r } }
        expectEqual(answer(RSIResult(.success, [.init("base", 0x2000)], response: .accept)), nil)
        expectEqual(answer(RSIResult(.success, [.init("base", 0x1000)], response: .reject)), .invalid)
        expectEqual(answer(RSIResult(.errorInput)), .invalid)
        expectEqual(answer(RSIResult(.success, [.init("base", 0x3000)], response: .accept)), .invalid)
        expectEqual(answer(RSIResult(.success, [.init("base", 0)], response: .accept)), .livelock(base: 0))
        expectEqual(answer(nil), .invalid)
        var calls: [UInt64] = []
        #expect(GuestKernel.rsiSetMemoryRange(0, 0x3000, .empty, flags: 1) { b, _, _, _ in
            calls.append(b)
            return RSIResult(.success, [.init("base", b + 0x1000)], response: .accept)
        } == nil && calls == [0, 0x1000, 0x2000])
    }

    @Test func badInput() {
        func refused(_ text: String, _ message: String, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(sourceLocation: sourceLocation, performing: { _ = try Self.run(text) }, throws: { "\($0)".contains(message) })
        }
        refused("  - set_memory_decrypted: {gpa: 0x400000}\n", "'guest' is required")
        refused("  - set_memory_decrypted: {guest: r0, gpa: 0x400000, addr: 0xffff000000400000}\n", "give 'gpa' or 'addr' (one of them)")
        refused("  - load_unaligned_zeropad: {guest: r0, gpa: 0x8000000}\n", "gpa 0x8000000 is past r0's 64M")
        refused("  - load_unaligned_zeropad: {guest: r0, gpa: 0x1000, cpu: 2}\n", "vCPU 2 is past r0's 2 vCPUs")
        refused("  - remap_pfn_range: {guest: r0, addr: 0x1000, gpa: 0x1000, prot: nc}\n", "unknown prot 'nc'")
        refused("  - realm-set-ripas: {realm: r0, ipa: 0, ripas: destroyed}\n", "unknown ripas 'destroyed'")
    }
}
