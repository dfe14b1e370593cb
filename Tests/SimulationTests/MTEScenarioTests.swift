import Testing
@testable import Simulation
import Expectations

/// MTE steps in scenarios: only on a machine with MTE, with names that exist, and the seed
/// scenario's outcome under every form.
struct MTEScenarioTests {
    static let machine = """
        machine:
          arch: arm64
          mte: MTE
          e820: |
            BIOS-e820: [mem 0x0000000040000000-0x000000007fffffff] usable

        """

    static func run(_ steps: String, mte: Bool = true, form: String = "v6.1-lock") throws -> RunResult {
        let yaml = "name: t\n" + machine.replacingOccurrences(of: "MTE", with: "\(mte)") + "host:\n  mte-sync: \(form)\nsteps:\n" + steps
        return try Runner.run(try Scenario.load(yaml: yaml, file: "t.yaml"))
    }

    @Test func anMTEStepNeedsMTE() throws {
        #expect(performing: { _ = try Self.run("  - mmap: {vma: a}\n", mte: false) },
                throws: { "\($0)".contains("t.yaml:10:11: steps[1].mmap: mmap needs MTE in the CPUs: give 'machine: {mte: true}'") })
        #expect(performing: { _ = try Self.run("  - user-load: {vma: a, tag: 16}\n") }, throws: { "\($0)".contains("tag") && "\($0)".contains("16") })
        #expect(performing: { _ = try Self.run("  - mmap: {vma: 'a b'}\n") }, throws: { "\($0)".contains("vma 'a b': a name is 1 to 64 letters") })
        #expect(performing: { _ = try Self.run("  - user-load: {vma: nowhere, tag: 1}\n") }, throws: { "\($0)".contains("no mapping 'nowhere': mmap it first") })
        #expect(performing: { _ = try Self.run("  - guest-load: {vm: vm9, gfn: 0, tag: 1}\n") }, throws: { "\($0)".contains("no VM 'vm9': kvm_create_vm it first") })
        #expect(performing: { _ = try Self.run("  - mmap: {vma: a, pages: 2}\n  - user-load: {vma: a, page: 2, tag: 1}\n") },
                throws: { "\($0)".contains("page 2 is past the 2 pages of 'a'") })
    }

    /// The seed's sequence under each form: only v5.10 loses the guest's tags.
    @Test(arguments: [("v5.10", 1, "tag check fault (allocation tag 0x0): SIGSEGV SEGV_MTESERR"), ("v5.14", 0, "ok"), ("v5.14-stable", 0, "ok"), ("v6.1-lock", 0, "ok")])
    func theSeedsSwapUnderEachForm(form: String, lost: UInt64, load: String) throws {
        let r = try Self.run("""
              - mmap: {vma: guestram, pages: 16}
              - kvm_create_vm: {vm: vm0}
              - kvm_set_user_memory_region: {vm: vm0, vma: guestram}
              - guest-store-tags: {vm: vm0, gfn: 3, tag: 5}
              - swap_writepage: {vma: guestram, page: 3}
              - guest-load: {vm: vm0, gfn: 3, tag: 5}

            """, form: form)
        expectEqual(r.records.last?.result, load)
        let m = Dictionary(uniqueKeysWithValues: r.metrics)
        expectEqual(m["mte_tags_lost"], lost)
        expectEqual(m["mte_tags_saved"], 1)
        expectEqual(m["mte_tags_restored"], 1 - lost)
    }
}
