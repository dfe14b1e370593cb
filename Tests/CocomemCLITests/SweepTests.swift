import Foundation
import Testing
@testable import CocomemCLI
@testable import Simulation
import Expectations

/// Issue 23: `sweep` expands a matrix in a fixed order and runs it locally, in shards or
/// resumed; `merge` joins the shards into exactly the table of a local run, and refuses
/// what is not one whole matrix.
struct SweepTests {
    typealias CLI = CommandLineTests

    /// A 12-run matrix over cpa-churn with few operations (the file's 20,000 made 100).
    static func matrix(_ axes: String = """
        axes:
          host.cpa-collapse: [never, rox, always]
          workload.operations: [50, 100]
          seed: [1, 2]
        """) throws -> String {
        let churn = ScenarioCommandTests.example("cpa-churn.yaml")
        return try CLI.writeTemp("name: test\nscenarios: [\(churn)]\n" + axes + "\n")
    }

    static func temp(_ name: String) -> String { NSTemporaryDirectory() + "cocomem-sweep-\(UUID().uuidString)-\(name)" }

    @Test func runsAreNumberedScenarioFirstThenTheAxesLastFastest() throws {
        let m = try SweepCommand.load(try Self.matrix())
        expectEqual(m.runs.count, 12)
        expectEqual(m.hash.count, 16)
        let firstFive: [String] = m.runs.prefix(5).map { $0.params.map(\.1).joined(separator: " ") }
        expectEqual(firstFive, ["never 50 1", "never 50 2", "never 100 1", "never 100 2", "rox 50 1"])
        // The values reach the scenario: the policy, the seed, the workload's operations.
        let r = m.runs[5]
        expectEqual(r.scenario.policies.first { $0.slot == "host.cpa-collapse" }?.policy, "rox")
        expectEqual(r.scenario.seed, 2)
        expectEqual(r.scenario.steps[0].arguments.first { $0.0 == "operations" }?.1, "50")
        // Shards interleave.
        expectEqual(m.shard(1, of: 4).map(\.index), [1, 5, 9])
    }

    @Test func shardsMergeToExactlyTheLocalTable() throws {
        let matrix = try Self.matrix(), all = Self.temp("all.jsonl")
        let local = try CLI.run(["sweep", matrix, "--out", all, "--jobs", "2"])
        expectEqual(local.status, 0, "\(local.err)")
        let lines = try String(contentsOfFile: all, encoding: .utf8).split(separator: "\n")
        expectEqual(lines.count, 12)
        expectTrue(lines[0].hasPrefix("{\"matrix\":\""))
        expectTrue(lines[0].contains("\"run\":0,\"of\":12,\"scenario\":\"cpa-churn\",\"params\":{\"host.cpa-collapse\":\"never\",\"workload.operations\":\"50\",\"seed\":\"1\"},\"passed\":true,"))
        // No times, hosts or paths.
        expectTrue(!lines.contains { $0.contains("/") || $0.contains("cocomem-sweep") })
        var shards: [String] = []
        for i in 0..<3 {
            let s = Self.temp("s\(i).jsonl")
            try expectEqual(CLI.run(["sweep", matrix, "--shard", "\(i)/3", "--out", s]).status, 0)
            shards.append(s)
        }
        for format in [[], ["--csv"], ["--markdown"], ["--json"]] {
            let a = try CLI.run(["merge", all] + format), b = try CLI.run(["merge"] + shards.reversed() + format)
            #expect(a.status == 0 && a.out == b.out && !a.out.isEmpty, "\(format): \(a.err) \(b.err)")
        }
        let table = try CLI.run(["merge", all, "--metrics", "direct_map_level2_collapses"]).out
        expectTrue(table.hasPrefix("run  scenario   host.cpa-collapse  workload.operations  seed  passed  direct_map_level2_collapses\n"))
    }

    /// An interrupted sweep, run again with the same --out, does only what is missing and
    /// ends with the same lines as one that was never interrupted.
    @Test func aSweepResumes() throws {
        let matrix = try Self.matrix(), all = Self.temp("all.jsonl"), part = Self.temp("part.jsonl")
        _ = try CLI.run(["sweep", matrix, "--out", all])
        let full = try String(contentsOfFile: all, encoding: .utf8)
        let lines = full.split(separator: "\n")
        try (lines.prefix(5).joined(separator: "\n") + "\n" + lines[5].prefix(40)).write(toFile: part, atomically: true, encoding: .utf8)
        let r = try CLI.run(["sweep", matrix, "--out", part])
        expectEqual(r.status, 0)
        expectTrue(r.err.contains("its last line was cut short; it is dropped and that run done again"))
        try expectEqual(String(contentsOfFile: part, encoding: .utf8), full)
        // Once complete, nothing is run again.
        let again = try CLI.run(["sweep", matrix, "--out", part])
        let after = try String(contentsOfFile: part, encoding: .utf8)
        expectEqual(again.status, 0)
        expectEqual(after, full)
    }

    /// Where a task finds its shard: the flag, Slurm's array variables, a Kubernetes
    /// Indexed Job's index with --shards.
    @Test func theShardComesFromTheFlagSlurmOrKubernetes() throws {
        do { let s = try SweepCommand.shard("2/4", shards: nil, environment: [:]); #expect(s.0 == 2 && s.1 == 4) }
        do { let s = try SweepCommand.shard(nil, shards: nil, environment: [:]); #expect(s.0 == 0 && s.1 == 1) }
        do { let s = try SweepCommand.shard(nil, shards: nil, environment: ["SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"]); #expect(s.0 == 2 && s.1 == 4) }
        do { let s = try SweepCommand.shard(nil, shards: nil, environment: ["SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"]); #expect(s.0 == 0 && s.1 == 4) }
        do { let s = try SweepCommand.shard(nil, shards: 8, environment: ["JOB_COMPLETION_INDEX": "7"]); #expect(s.0 == 7 && s.1 == 8) }
        let bad: [(String?, Int?, [String: String], String)] = [
            ("4/4", nil, [:], "--shard 4/4: shard 4 of 4; valid: 0 to 3 of N ≥ 1"),
            ("1-4", nil, [:], "--shard '1-4': write I/N, e.g. 0/4"),
            (nil, nil, ["JOB_COMPLETION_INDEX": "1"], "JOB_COMPLETION_INDEX=1 is set: give the number of shards with --shards N"),
            (nil, 2, ["JOB_COMPLETION_INDEX": "2"], "JOB_COMPLETION_INDEX=2 with --shards 2: shard 2 of 2; valid: 0 to 1"),
            (nil, nil, ["SLURM_ARRAY_TASK_ID": "5"], "SLURM_ARRAY_TASK_ID=5 without a whole SLURM_ARRAY_TASK_COUNT; give --shard I/N"),
            (nil, 3, [:], "--shards 3 needs JOB_COMPLETION_INDEX (a Kubernetes Indexed Job); locally give --shard I/N"),
        ]
        for (flag, shards, env, message) in bad {
            #expect(performing: { _ = try SweepCommand.shard(flag, shards: shards, environment: env) }, throws: { "\($0)".contains(message) })
        }
    }

    /// Bad matrices and bad merges: a clear error, and an --out of another matrix untouched.
    @Test func badMatricesAndMergesAreClearErrors() throws {
        let cases: [(String, String)] = [
            ("axes:\n  colour: [red]", "axes.colour: unknown axis 'colour'; valid: seed, memory, arch, guests, machine.KEY, workload.PARAMETER, a policy slot"),
            ("axes:\n  seed: []", "axes.seed: the axis has no values; give at least one"),
            ("axes:\n  host.nothing: [a]", "'host.nothing' is not a policy slot of "),
            ("axes:\n  host.cpa-collapse: [sometimes]", "'sometimes' is not a policy of host.cpa-collapse; valid: never, rox, always"),
            ("axes:\n  guests: [1]", "guests: 1, but "),
            ("axes:\n  memory: [lots]", "run 0 ("),
        ]
        for (axes, message) in cases {
            let r = try CLI.run(["sweep", try Self.matrix(axes)])
            #expect(r.status != 0 && r.err.contains(message), "\(axes): \(r.err)")
        }
        let missing = try CLI.run(["sweep", try CLI.writeTemp("scenarios: [nowhere.yaml]\n")])
        expectNotEqual(missing.status, 0)
        expectTrue(missing.err.contains("nowhere.yaml: cannot read the file"))
        let unwritable = try CLI.run(["sweep", try Self.matrix(), "--out", "/nonexistent/dir/out.jsonl"])
        expectNotEqual(unwritable.status, 0)
        expectTrue(unwritable.err.contains("--out /nonexistent/dir/out.jsonl: cannot create the file"))
        // Another matrix's output is refused and left as it was.
        let other = try CLI.writeTemp("{\"matrix\":\"0123456789abcdef\",\"run\":0,\"of\":1}\n")
        let refused = try CLI.run(["sweep", try Self.matrix(), "--out", other])
        expectNotEqual(refused.status, 0)
        expectTrue(refused.err.contains("a run of matrix 0123456789abcdef, not of this one"))
        try expectEqual(String(contentsOfFile: other, encoding: .utf8), "{\"matrix\":\"0123456789abcdef\",\"run\":0,\"of\":1}\n")
        // Merges: another matrix, a missing shard, a doubled one, not a sweep line.
        let a = Self.temp("a.jsonl"), b = Self.temp("b.jsonl")
        _ = try CLI.run(["sweep", try Self.matrix(), "--out", a, "--shard", "0/2"])
        _ = try CLI.run(["sweep", try Self.matrix("axes:\n  seed: [1, 2]"), "--out", b])
        try expectTrue(CLI.run(["merge", a, b]).err.contains("shards of different matrices"))
        try expectTrue(CLI.run(["merge", a]).err.contains("6 of 12 runs missing (1, 3, 5, 7, 9, 11): run the shards that hold them"))
        try expectTrue(CLI.run(["merge", a, a]).err.contains("run 0 is given twice: \(a):1 and \(a):1"))
        try expectTrue(CLI.run(["merge", other]).err.contains("\(other):1: not a line of 'cocomem sweep'"))
    }
}

/// The bench's figures: a median with its range (the timing itself is a benchmark figure,
/// never a test).
struct BenchSpreadTests {
    @Test func aFigureIsTheMedianOfItsRunsWithItsRange() {
        let odd = Bench.Spread([3, 1, 2, 7, 5, 4, 6])
        expectEqual(odd.median, 4)
        expectEqual(odd.min, 1)
        expectEqual(odd.max, 7)
        expectEqual(odd.count, 7)
        let even = Bench.Spread([4, 1, 3, 2])
        expectEqual(even.median, 2.5)
        expectEqual(even.min, 1)
        expectEqual(even.max, 4)
        expectTrue(Bench.rounds >= 7)
    }
}
