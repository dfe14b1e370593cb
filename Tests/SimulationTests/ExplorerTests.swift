import Foundation
import Testing
@testable import Simulation
import Expectations

/// The interleaving explorer: exact schedule and state counts for independent threads, the
/// seed's race found or ruled out by form, counterexamples replayed, bad input refused.
struct ExplorerTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static func example(_ name: String, form: String? = nil) throws -> String {
        let text = try String(contentsOf: root.appendingPathComponent("examples/\(name)"), encoding: .utf8)
        return form.map { text.replacingOccurrences(of: "mte-sync: v6.1-lock", with: "mte-sync: \($0)") } ?? text
    }

    /// Two threads of m and n actions that change nothing but where they are: every schedule
    /// is C(m+n, n), and pruning leaves the (m+1)(n+1) states of the grid.
    @Test(arguments: [(1, 1), (2, 3), (4, 4), (5, 2)])
    func independentThreadsExploreTheWholeGrid(m: Int, n: Int) throws {
        func thread(_ k: Int) -> String { "  - [" + Array(repeating: "{mte-tags: {vma: a}}", count: k).joined(separator: ", ") + "]\n" }
        let yaml = """
            name: grid
            machine: {arch: arm64, cpus: 2, mte: true, e820: "BIOS-e820: [mem 0x0000000040000000-0x000000007fffffff] usable"}
            steps:
              - mmap: {vma: a}
            threads:

            """ + thread(m) + thread(n)
        let s = try Scenario.load(yaml: yaml, file: "grid.yaml")
        var all = Explorer.Options()
        all.prune = false
        func choose(_ a: Int, _ b: Int) -> Int { b == 0 ? 1 : choose(a - 1, b - 1) * a / b }
        try expectEqual(Explorer.explore(s, options: all).schedules, choose(m + n, n))
        try expectEqual(Explorer.explore(s).states, (m + 1) * (n + 1))
    }

    /// Seed 003's race: the second CPU maps the page before its tags are back under every
    /// form before the lock; under the lock form no schedule does.
    @Test(arguments: [("v5.10", 7), ("v5.14", 7), ("v5.14-stable", 10)])
    func theSwapRaceIsFoundBeforeTheLock(form: String, length: Int) throws {
        let s = try Scenario.load(yaml: try Self.example("explore-mte-swap-race.yaml", form: form), file: "race.yaml")
        let r = try Explorer.explore(s)
        expectEqual(r.counterexample?.count, length)
        expectEqual(r.violation, "assert metric mte_stale_maps == 0 failed (mte_stale_maps is 1)")
        // Replayed by run, the schedule reaches the same violation.
        let replay = try Scenario.load(yaml: try Self.example("explore-mte-swap-race.yaml", form: form)
            + "schedule: [" + r.counterexample!.map(String.init).joined(separator: ", ") + "]\n", file: "replay.yaml")
        let run = try Runner.run(replay)
        expectEqual(run.failure?.invariant, "assert")
        expectTrue(run.failure!.detail.hasSuffix("assert metric mte_stale_maps == 0 failed (mte_stale_maps is 1)"))
    }

    @Test func theLockFormHasNoCounterexample() throws {
        for name in ["explore-mte-swap-race.yaml", "explore-mte-kvm-race.yaml"] {
            let r = try Explorer.explore(try Scenario.load(yaml: try Self.example(name), file: name))
            #expect(r.counterexample == nil && r.limited == nil && r.states > 100 && r.schedules == 1, "\(name)")
        }
        let kvm = try Explorer.explore(try Scenario.load(yaml: try Self.example("explore-mte-kvm-race.yaml", form: "v5.14"), file: "k.yaml"))
        expectEqual(kvm.counterexample?.count, 7)
    }

    /// Seed 004 on SEV-SNP. As merged, vCPU 1's load_unaligned_zeropad between vCPU 0's
    /// PVALIDATE rescind and its PTE change reads the page private and unvalidated: a
    /// #VC(0x404), found in 3 actions and replayed by run. With the PTE not present through
    /// the change, no order gives a #VC (the read is a #PF ex_handler_zeropad fixes up), and
    /// the rescind's PVALIDATE faults on the not-present address.
    @Test func theZeropadReadDuringAConversion() throws {
        let merged = try Self.example("explore-snp-zeropad.yaml")
        let r = try Explorer.explore(try Scenario.load(yaml: merged, file: "z.yaml"))
        expectEqual(r.counterexample, [0, 0, 1])
        expectEqual(r.violation, "assert metric guest_vc == 0 failed (guest_vc is 1)")
        let listing = try Explorer.describe(try Scenario.load(yaml: merged, file: "z.yaml"), schedule: r.counterexample!)
        #expect(listing.map(\.action) == [
            "set_memory_decrypted: cpa_flush before the change → ok",
            "set_memory_decrypted: enc_status_change_prepare: PVALIDATE rescind → ok",
            "load_unaligned_zeropad → #VC(0x404)",
        ])
        let replay = try Runner.run(try Scenario.load(yaml: merged + "schedule: [0, 0, 1]\n", file: "replay.yaml"))
        expectEqual(replay.failure?.invariant, "assert")
        expectTrue(replay.failure!.detail.hasSuffix("guest_vc is 1)"))

        let notPresent = try Self.example("explore-snp-zeropad-not-present.yaml")
        let np = try Explorer.explore(try Scenario.load(yaml: notPresent, file: "np.yaml"))
        expectEqual(np.counterexample, nil)
        expectEqual(np.limited, nil)
        expectEqual(np.states, 11)
        let oops = try Explorer.describe(try Scenario.load(yaml: notPresent, file: "np.yaml"), schedule: [0, 0, 0, 1])
        #expect(oops.map(\.action) == [
            "set_memory_decrypted: set_memory_np: the PTE not present → ok",
            "set_memory_decrypted: set_memory_np's flush → ok",
            "set_memory_decrypted: enc_status_change_prepare: PVALIDATE rescind → guest oops (#PF in PVALIDATE: the page's address is not present) (the routine stops)",
            "load_unaligned_zeropad → #PF fixed up by ex_handler_zeropad (the next page's bytes read as zero)",
        ])
    }

    /// Seed 004 on Arm CCA. As merged (the PTE invalid before the RIPAS changes) no order of
    /// the two vCPUs gives a synchronous external abort; with the RIPAS changed while the PTE
    /// is valid, the read after the RSI call is an SEA the kernel dies of, found in 2 actions
    /// and replayed by run.
    @Test func theRealmZeropadReadDuringAConversion() throws {
        let merged = try Explorer.explore(try Scenario.load(yaml: try Self.example("explore-cca-zeropad.yaml"), file: "c.yaml"))
        expectEqual(merged.counterexample, nil)
        expectEqual(merged.limited, nil)
        expectEqual(merged.schedules, 4)
        let text = try Self.example("explore-cca-zeropad-in-place.yaml")
        let r = try Explorer.explore(try Scenario.load(yaml: text, file: "i.yaml"))
        expectEqual(r.counterexample, [0, 1])
        expectEqual(r.violation, "assert metric guest_kernel_seas == 0 failed (guest_kernel_seas is 1)")
        let listing = try Explorer.describe(try Scenario.load(yaml: text, file: "i.yaml"), schedule: r.counterexample!)
        #expect(listing.map(\.action) == [
            "set_memory_decrypted: rsi_set_memory_range_shared: RSI_IPA_STATE_SET EMPTY (the exit, KVM, REC_ENTER) → ok",
            "load_unaligned_zeropad → guest oops: synchronous external abort at 0xffff000000201000 (do_sea: no fixup for a kernel SEA)",
        ])
        // Every schedule of the merged order: what the read met.
        let fixed = try Explorer.describe(try Scenario.load(yaml: try Self.example("explore-cca-zeropad.yaml"), file: "c.yaml"), schedule: [0, 0, 1])
        expectEqual(fixed.last?.action, "load_unaligned_zeropad → translation fault fixed up by ex_handler_load_unaligned_zeropad (the next page's bytes read as zero)")
        let replay = try Runner.run(try Scenario.load(yaml: text + "schedule: [0, 1]\n", file: "replay.yaml"))
        expectEqual(replay.failure?.invariant, "assert")
        expectTrue(replay.failure!.detail.hasSuffix("guest_kernel_seas is 1)"))
    }

    /// Seed 001's NMI question: the NMI (thread 1, on CPU 0) reads the page between any two
    /// actions of CPU 0's split. __split_large_page's order (fill, install with one store,
    /// flush) never leaves it unmapped; the entry cleared and flushed before the table goes
    /// in is found in 4 actions, and replayed by run.
    @Test func theNMIDuringASplit() throws {
        let linux = try Explorer.explore(try Scenario.load(yaml: try Self.example("explore-nmi-split.yaml"), file: "n.yaml"))
        expectEqual(linux.counterexample, nil)
        expectEqual(linux.limited, nil)
        expectEqual(linux.states, 9)
        expectEqual(linux.schedules, 2)
        let text = try Self.example("explore-nmi-split-clear-first.yaml")
        let wrong = try Explorer.explore(try Scenario.load(yaml: text, file: "w.yaml"))
        expectEqual(wrong.counterexample, [0, 0, 0, 1])
        expectEqual(wrong.violation, "assert no-host-crash failed (1 host access crashed the host)")
        try expectEqual(Scenario.load(yaml: text, file: "w.yaml").threadNames, ["CPU 0", "CPU 0 NMI"])
        let unnamed = text.replacingOccurrences(of: "  - name: CPU 0 NMI\n    steps:\n", with: "  - nmi: CPU 0\n    steps:\n")
        #expect(performing: { _ = try Scenario.load(yaml: unnamed, file: "w.yaml") }, throws: { "\($0)".contains("nmi") })
        let listing = try Explorer.describe(try Scenario.load(yaml: text, file: "w.yaml"), schedule: wrong.counterexample!)
        #expect(listing.map(\.action) == [
            "split_large_page: alloc_pages and split_set_pte ×512 (the new table, not yet visible) → ok",
            "split_large_page: the large entry cleared (not present) → ok",
            "split_large_page: flush_tlb_all → ok",
            "host-read → #PF(not-present): oops",
        ])
        let replay = try Runner.run(try Scenario.load(yaml: text + "schedule: [0, 0, 0, 1]\n", file: "replay.yaml"))
        expectEqual(replay.failure?.invariant, "assert")
        expectTrue(replay.failure!.detail.hasSuffix("(1 host access crashed the host)"))
        // A page mapped 4K at boot has no large leaf; a physical address past RAM is refused.
        for (pa, message) in [("0x1000", "0x1000 is mapped by a 4K page at boot: there is no large leaf to split"),
                              ("0x4000000000", "0x4000000000 is past the end of RAM (0x100000000)")] {
            let yaml = text.replacingOccurrences(of: "split_large_page: {pa: 0x40201000", with: "split_large_page: {pa: \(pa)")
            #expect(performing: { _ = try Scenario.load(yaml: yaml, file: "w.yaml") }, throws: { "\($0)".contains(message) })
        }
    }

    /// The SNP routine's arguments are checked where they are read.
    @Test func badZeropadThreadsAreScenarioErrors() throws {
        let good = try Self.example("explore-snp-zeropad.yaml")
        let cases: [(String, String, String)] = [
            ("gpa: 0x201000, cpu: 0, transition: merged", "gpa: 0x201010, cpu: 0, transition: merged", "gpa 0x201010 is not page-aligned"),
            ("gpa: 0x201000, cpu: 0, transition: merged", "gpa: 0x201000, cpu: 2, transition: merged", "vCPU 2 is past vm0's 2 vCPUs (valid: 0 to 1)"),
            ("gpa: 0x201000, cpu: 0, transition: merged", "gpa: 0x201000, cpu: 0, transition: eager", "eager"),
            ("gpa: 0x201000, cpu: 0, transition: merged", "gpa: 0x4000000, cpu: 0, transition: merged", "gpa 0x4000000 is past vm0's 16M of memory"),
        ]
        for (from, to, message) in cases {
            let yaml = good.replacingOccurrences(of: from, with: to)
            #expect(performing: { _ = try Scenario.load(yaml: yaml, file: "z.yaml") }, throws: { "\($0)".contains(message) })
        }
    }

    /// Bad input: a thread naming an unknown step, more threads than CPUs, an assert on an
    /// unknown quantity, an expect in a thread, a schedule past the threads; a search past
    /// its limit stops and says so.
    @Test func badThreadsAreScenarioErrors() throws {
        let machine = "name: t\nmachine: {arch: arm64, cpus: 2, mte: true, e820: \"BIOS-e820: [mem 0x0000000040000000-0x000000007fffffff] usable\"}\nsteps:\n  - mmap: {vma: a}\n"
        let cases: [(String, String)] = [
            ("threads:\n  - [{nosuch: {}}]\n", "unknown step 'nosuch'"),
            ("threads:\n  - [{mte-tags: {vma: a}}]\n  - [{mte-tags: {vma: a}}]\n  - [{mte-tags: {vma: a}}]\n", "3 threads, but the machine has 2 CPUs: give machine.cpus"),
            ("threads:\n  - [{mte-tags: {vma: a}}]\nassert:\n  - metric: {mte_staleness: \"== 0\"}\n", "unknown metric 'mte_staleness'"),
            ("threads:\n  - [{mte-tags: {vma: a}, expect: ok}]\n", "a thread's step takes no 'expect:'"),
            ("threads:\n  - [{mte-tags: {vma: a}}]\nschedule: [0, 1]\n", "CPU 1 in the schedule, but there are 1 threads (0 to 0)"),
            ("assert:\n  - invariants\n", "'assert:' holds at every state of the threads' interleavings; this scenario has no 'threads:'"),
        ]
        for (tail, message) in cases {
            #expect(performing: { _ = try Scenario.load(yaml: machine + tail, file: "t.yaml") }, throws: { "\($0)".contains(message) })
        }
        let restore: [(String, String)] = [
            ("mte: true, mte-restore-steps: 3", "mte-restore-steps 3 must be a power of two from 1 to 256"),
            ("mte: true, mte-restore-steps: 512", "mte-restore-steps"),
            ("mte-restore-steps: 16", "mte-restore-steps needs 'mte: true'"),
        ]
        for (setting, message) in restore {
            let yaml = machine.replacingOccurrences(of: "mte: true", with: setting)
            #expect(performing: { _ = try Scenario.load(yaml: yaml, file: "t.yaml") }, throws: { "\($0)".contains(message) })
        }
        var limited = Explorer.Options()
        limited.maxStates = 10
        let r = try Explorer.explore(try Scenario.load(yaml: try Self.example("explore-mte-swap-race.yaml"), file: "race.yaml"), options: limited)
        expectEqual(r.counterexample, nil)
        expectEqual(r.limited?.hasPrefix("--max-states 10 reached ("), true)
    }
}
