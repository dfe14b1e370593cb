import Foundation
import Testing
@testable import CocomemCLI
import Expectations

/// `cocomem explore`: exit 0 without a counterexample, 1 with one (a listing, a replayable
/// scenario, a trace), 2 when a limit stopped it.
struct ExploreCommandTests {
    typealias CLI = CommandLineTests

    @Test func exitStatusesListingAndReplay() throws {
        let race = ScenarioCommandTests.example("explore-mte-swap-race.yaml")
        let none = try CLI.run(["explore", race])
        expectEqual(none.status, 0)
        expectEqual(none.out, "no counterexample: 136 states, 1 complete schedules (states already seen not explored again)\n")
        let v514 = try CLI.writeTemp(try String(contentsOfFile: race, encoding: .utf8).replacingOccurrences(of: "mte-sync: v6.1-lock", with: "mte-sync: v5.14"))
        let ce = NSTemporaryDirectory() + "cocomem-ce-\(UUID().uuidString).yaml", trace = ce + ".json"
        let found = try CLI.run(["explore", v514, "--counterexample", ce, "--trace", trace])
        expectEqual(found.status, 1)
        expectTrue(found.out.hasPrefix("counterexample: 7 actions, found after 26 states\n\n   #  CPU 0"))
        expectTrue(found.out.contains("\n   7                                                            set_pte_at: set_pte\n"))
        expectTrue(found.out.hasSuffix("\nthen: assert metric mte_stale_maps == 0 failed (mte_stale_maps is 1)\n"))
        let replayed = try CLI.run(["run", ce])
        expectEqual(replayed.status, 1)
        expectTrue(replayed.out.contains("STOPPED   invariant 'assert' violated after step 7: after action 7 (CPU 1: set_pte_at: set_pte)"))
        try expectTrue(String(contentsOfFile: ce, encoding: .utf8).hasSuffix("schedule: [0, 0, 0, 1, 1, 1, 1]\n"))
        try expectTrue(String(contentsOfFile: trace, encoding: .utf8).contains("\"args\":{\"name\":\"CPU 1\"}"))
        let limited = try CLI.run(["explore", race, "--max-states", "10"])
        expectEqual(limited.status, 2)
        expectTrue(limited.out.hasPrefix("no counterexample in "))
        expectTrue(limited.out.contains("stopped: --max-states 10 reached"))
        let noThreads = try CLI.run(["explore", ScenarioCommandTests.example("cpa-basics.yaml")])
        expectNotEqual(noThreads.status, 0)
        expectTrue(noThreads.err.contains("no 'threads:' to interleave"))
    }

    /// `cocomem list routines` names every broken-down routine, where it exists and its arguments.
    @Test func listRoutinesNamesEveryRoutine() {
        let text = List.text(.routines)
        for (name, archs) in [("set_pte_at", "[arm64 (mte: true)]"), ("user_mem_abort", "[arm64 (mte: true)]"),
                              ("split_large_page", "[x86-64, x86-snp, x86-sev, x86-tdx]"), ("set_memory_decrypted", "[x86-snp]")] {
            expectTrue(text.split(separator: "\n").contains { $0.hasPrefix(name + " ") && $0.hasSuffix(archs) }, "\(name)")
        }
        expectTrue(text.contains("  transition "))
        expectTrue(text.contains("  order "))
    }
}
