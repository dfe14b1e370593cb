import Testing
import Hardware
@testable import HostKernel
import PageTables
@testable import Simulation
import Expectations

struct RunnerTests {
    static let scenario = """
        name: run
        seed: 9
        machine: {memory: 8G}
        steps:
          - set_memory_decrypted: {pa: 0x40001000}
            expect: ok
          - set_memory_ro: {pa: 0x80000000}
            expect: -ENOMEM
          - workload: {kind: cpa-churn, operations: 300}
            expect: ok
        check:
          - no-errors
          - invariants
          - directmap: {1g: "<= 7G"}
        """

    @Test func runReportsStepsMetricsAndChecks() throws {
        let s = try Scenario.load(yaml: Self.scenario, file: "run.yaml")
        let r = try Runner.run(s, options: RunOptions(checkInvariants: true, sampleEvery: 1))
        expectEqual(r.records.map(\.result), ["ok", "ok", "ok"])
        expectEqual(r.failedExpectations.map(\.index), [2])
        expectEqual(r.checks.map(\.passed), [true, true, true])
        expectTrue(!r.passed)
        // After boot and each step, and inside the workload after each of its 300 operations.
        expectEqual(r.samples.filter { $0.operation == nil }.map(\.step), [0, 1, 2, 3])
        expectEqual(r.samples.compactMap(\.operation), Array(1...300))
        expectTrue(r.samples.allSatisfy { $0.operation == nil || $0.step == 3 })
        let m = Dictionary(uniqueKeysWithValues: r.metrics)
        expectEqual(m["operations"], 2 + 600)
        expectTrue(m["direct_map_level3_splits"]! >= 1)
    }

    @Test func sameSeedGivesTheSameRunAndAnotherSeedDoesNot() throws {
        let a = try Runner.run(try Scenario.load(yaml: Self.scenario, file: "run.yaml"), options: RunOptions(checkInvariants: true))
        let b = try Runner.run(try Scenario.load(yaml: Self.scenario, file: "run.yaml"))
        let c = try Runner.run(try Scenario.load(yaml: Self.scenario.replacingOccurrences("seed: 9", "seed: 10"), file: "run.yaml"))
        func layout(_ r: RunResult) throws -> [Leaf] {
            let k = r.machine.kernel
            return try k.pageTable.leaves(virt: VirtAddr(k.layout.pageOffset), size: k.directMapEnd - k.layout.pageOffset)
        }
        expectEqual(a.metrics.map(\.1), b.metrics.map(\.1))
        try expectEqual(layout(a), layout(b))
        try expectNotEqual(layout(a), layout(c))
    }

    @Test func snapshotAtStepKeepsThatState() throws {
        let s = try Scenario.load(yaml: Self.scenario, file: "run.yaml")
        let r = try Runner.run(s, options: RunOptions(snapshotAt: 1))
        expectEqual(r.snapshot?.kernel.stats.splits, LeafCounts(size2M: 1, size1G: 1))
        let boot = try Runner.run(s, options: RunOptions(snapshotAt: 0))
        expectEqual(boot.snapshot?.kernel.stats, CPAStats())
    }

    @Test func invariantViolationStopsTheRunNamingStepAndInvariant() throws {
        let s = try Scenario.load(yaml: Self.scenario, file: "run.yaml")
        let corrupt = PreparedStep(index: 2, line: 7, name: "corrupt", arguments: [], expect: nil) { m throws(HostKernelError) in
            m.kernel.directPagesCount.size1G += 1
            return OK()
        }
        let broken = Scenario(file: s.file, name: s.name, seed: s.seed, architecture: s.architecture, cpus: s.cpus, memory: s.memory,
                              kernelConfig: s.kernelConfig, guests: s.guests, policies: s.policies, steps: [s.steps[0], corrupt, s.steps[2]], checks: s.checks)
        let r = try Runner.run(broken, options: RunOptions(checkInvariants: true))
        expectEqual(r.failure?.step, 2)
        expectEqual(r.failure?.invariant, "direct_pages_count equals the direct-map walk")
        expectEqual(r.failure?.detail, "count 4K:1024 2M:1022 1G:7, walk 4K:1024 2M:1022 1G:6")
        expectEqual(r.records.count, 2)
        expectTrue(!r.passed)
    }

    @Test func expectedErrorsDoNotFailNoErrors() throws {
        let s = try Scenario.load(yaml: """
            name: e
            machine: {memory: 4G}
            steps:
              - fail_page_alloc: {enabled: true}
              - set_memory_ro: {pa: 0x40000000}
                expect: -ENOMEM
              - set_memory_ro: {pa: 0x80000000}
            check:
              - no-errors
            """, file: "e.yaml")
        let r = try Runner.run(s, options: RunOptions(checkInvariants: true))
        expectEqual(r.records.map(\.result), ["ok", "-ENOMEM", "-ENOMEM"])
        expectEqual(r.checks[0].passed, false)
        expectEqual(r.checks[0].detail, "step 3 set_memory_ro = -ENOMEM")
    }

    @Test func collapsePolicyChangesTheOutcome() throws {
        let text = """
            name: p
            machine: {memory: 4G}
            host: {cpa-collapse: POLICY}
            steps:
              - set_memory_decrypted: {pa: 0x40001000}
              - set_memory_encrypted: {pa: 0x40001000}
            """
        func run(_ p: String) throws -> LeafCounts {
            try Runner.run(try Scenario.load(yaml: text.replacingOccurrences("POLICY", p), file: "p.yaml"), options: RunOptions(checkInvariants: true)).machine.kernel.directPagesCount
        }
        try expectEqual(run("never"), LeafCounts(size4K: 1024, size2M: 1022, size1G: 2))
        try expectEqual(run("rox"), LeafCounts(size4K: 1024, size2M: 1022, size1G: 2))
        try expectEqual(run("always"), LeafCounts(size4K: 512, size2M: 511, size1G: 3))
    }
}

extension String {
    func replacingOccurrences(_ a: String, _ b: String) -> String {
        split(separator: a, omittingEmptySubsequences: false).joined(separator: b)
    }
}
