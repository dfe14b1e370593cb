import Testing
import Hardware
import Hypervisor
@testable import Simulation
import Expectations

/// The SEV-SNP corrections: who executes an instruction, and page-state-change requests as
/// the GHCB carries them.
struct SNPCorrectionsTests {
    let snp = PlatformTests.snp

    func load(_ steps: String) throws -> Scenario { try Scenario.load(yaml: snp + "steps:\n" + steps, file: "s.yaml") }
    func error(_ steps: String) -> ScenarioError? {
        do { _ = try load(steps); return nil } catch { return error as? ScenarioError }
    }
    func results(_ steps: String) throws -> [String] {
        try Runner.run(try load(steps), options: RunOptions(checkInvariants: true)).records.map(\.result)
    }

    @Test func aGuestsRMPUPDATEOrPSMASHIsRefusedBecauseTheSourcesDisagree() {
        let e = error("  - rmpupdate: {spa: 0x40000000, assigned: true, issuer: guest}\n")
        #expect(e?.message == "RMPUPDATE executed by a guest is not modelled: the sources disagree (FAIL_PERMISSION in Microsoft's "
            + "intrinsic docs, #GP in verismo; docs/SNP-HARDWARE.md); valid: hypervisor")
        expectEqual(e?.line, 6)
        expectEqual(error("  - psmash: {spa: 0x40200000, issuer: guest}\n")?.message.hasPrefix("PSMASH executed by a guest is not modelled"), true)
    }

    @Test func guestInstructionsExecutedByTheHypervisorGP() throws {
        let r = try results("""
              - rmpupdate: {spa: 0x40000000, assigned: true, asid: 1, gpa: 0x0}
              - pvalidate: {guest: vm0, gpa: 0x0, validate: true, issuer: hypervisor}
              - rmpadjust: {guest: vm0, gpa: 0x0, vmpl: 1, perms: 1, issuer: hypervisor}
              - pvalidate: {guest: vm0, gpa: 0x0, validate: true, vmpl: 2}
              - pvalidate: {guest: vm0, gpa: 0x0, validate: true}

            """)
        expectEqual(r, ["ok", "#GP(0)", "#GP(0)", "#GP(0)", "ok"])
    }

    @Test func aRequestAsTheGHCBCarriesItIsWhatTheGuestReadsBack() throws {
        let r = try results("""
              - workload: {kind: guest-boot, guest: vm0}
              - psc: {guest: vm0, entries: [{gpa: 0x200000, size: 2M, op: private}, {gpa: 0x401000, op: shared}]}
              - psc: {guest: vm0, entries: [{gpa: 0x402000, op: shared}], header: {end_entry: 253}}
              - psc: {guest: vm0, entries: [{gpa: 0x402000, op: shared}, {gpa: 0x403000, op: shared, cur_page: 2}]}

            """)
        #expect(Array(r.dropFirst()) == ["ok cur_entry=2 end_entry=1 cur_page=[512,1]",
                                         "VMGEXIT_PSC_ERROR_INVALID_HDR cur_entry=0 end_entry=253 cur_page=[0]",
                                         "VMGEXIT_PSC_ERROR_INVALID_ENTRY cur_entry=1 end_entry=1 cur_page=[1,2]"])
        let refused = PSCResult(exitInfo2: PSCRequest.errorInvalidEntry, request: PSCRequest(endEntry: 0, entries: []))
        expectEqual(refused.kind, .status)
        expectTrue(!refused.isError)
    }

    @Test func malformedRequestsAreScenarioErrors() {
        #expect(error("  - psc: {guest: vm0, gpa: 0x1000, to: shared, entries: [{gpa: 0x1000, op: shared}]}\n")?.message
            == "'gpa' belongs to the one-range form; with 'entries' each entry gives its gpa, size and op")
        #expect(error("  - psc: {guest: vm0, entries: [{gpa: 0x1000, op: merge}]}\n")?.message
            == "unknown operation 'merge'; valid: private, shared, psmash, unsmash, or a number 0-15")
        #expect(error("  - psc: {guest: vm0, entries: [{gpa: 0x1001, op: shared}]}\n")?.message
            == "0x1001 is not a page address a PSC entry can hold (4K-aligned, below 2^52); use 'raw' for any bits")
        #expect(error("  - psc: {guest: vm0, size: 0x1000}\n")?.message
            == "psc needs 'gpa' and 'to' (one range), or 'entries' (a request as the GHCB carries it)")
        let many = (0..<254).map { "{gpa: \($0 << 12), op: shared}" }.joined(separator: ", ")
        expectEqual(error("  - psc: {guest: vm0, entries: [\(many)]}\n")?.message, "254 entries: a GHCB request holds at most 253 (VMGEXIT_PSC_MAX_COUNT)")
    }
}
