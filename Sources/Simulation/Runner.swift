import Hardware
import HostKernel
import PageTables

/// What one step did.
public struct StepRecord: Sendable {
    public let index: Int
    public let line: Int?
    public let name: String
    public let arguments: [(String, String)]
    /// What the step answered, as a value.
    public let outcome: any Outcome
    public let expect: String?
    /// Metrics right after the step (for traces).
    public let metrics: [(String, UInt64)]
    /// The result as the specification prints it.
    public var result: String { outcome.description }
    /// nil when the step has no expectation.
    public var passed: Bool? { expect.map { outcome.matches($0) } }
}

/// The outcome of one end check.
public struct CheckRecord: Sendable {
    public let name: String
    public let description: String
    public let line: Int?
    public let passed: Bool
    public let detail: String
}

/// Every metric at one moment: after a step, or inside a workload's step after `operation`
/// of its `total` operations.
public struct Sample: Sendable {
    public let step: Int
    public let operation: UInt64?
    public let total: UInt64?
    public let metrics: [(String, UInt64)]
    public init(step: Int, operation: UInt64? = nil, of total: UInt64? = nil, metrics: [(String, UInt64)]) {
        self.step = step
        self.operation = operation
        self.total = total
        self.metrics = metrics
    }
}

/// How to run a scenario.
public struct RunOptions: Sendable {
    /// Check every invariant after boot and after each step: in full every `fullCheckEvery`
    /// steps and after the last, over the regions each step changed in between.
    public var checkInvariants = false
    /// Steps between full invariant walks; nil: `Machine.automaticFullCheckInterval`.
    public var fullCheckEvery: Int?
    /// Record all metrics after boot, every N steps, every N operations inside a workload,
    /// and after the last step.
    public var sampleEvery: Int?
    /// Without `sampleEvery`: sample each workload at the ends of this many batches, for a
    /// trace's progress slices (`RunResult.batches`, not `samples`).
    public var traceBatches: Int?
    /// Keep a copy of the machine right after step N (0 = after boot).
    public var snapshotAt: Int?
    /// Called before each step with (step, total, name) and during long workloads.
    public var progress: (@Sendable (Int, Int, String) -> Void)?

    public init(checkInvariants: Bool = false, fullCheckEvery: Int? = nil, sampleEvery: Int? = nil, snapshotAt: Int? = nil) {
        self.checkInvariants = checkInvariants
        self.fullCheckEvery = fullCheckEvery
        self.sampleEvery = sampleEvery
        self.snapshotAt = snapshotAt
    }
}

/// Everything a run produced, in order.
public struct RunResult: Sendable {
    public let scenario: Scenario
    public let records: [StepRecord]
    public let samples: [Sample]
    /// Samples at the ends of workload batches taken for a trace (`RunOptions.traceBatches`).
    public let batches: [Sample]
    public let checks: [CheckRecord]
    public let machine: Machine
    public let snapshot: Machine?
    public let failure: InvariantFailure?

    public var metrics: [(String, UInt64)] { machine.metrics }
    public var failedExpectations: [StepRecord] { records.filter { $0.passed == false } }
    /// Every expectation and check passed and no invariant broke.
    public var passed: Bool { failure == nil && failedExpectations.isEmpty && checks.allSatisfy(\.passed) }
}

/// Runs scenarios step by step.
public enum Runner {
    /// The threads after the setup steps: in the scenario's `schedule`, else each CPU to its
    /// end in turn (the lowest that can run). The asserts and invariants are checked after
    /// every action; the first that fails stops the run.
    static func runThreads(_ s: Scenario, _ m: inout Machine, _ records: [StepRecord]) throws {
        var states = [ThreadState](repeating: ThreadState(), count: s.threads.count)
        var k = 0
        func next() -> Int? {
            if let schedule = s.schedule { return k < schedule.count ? schedule[k] : nil }
            return states.indices.first { m.canStep(states[$0], s.threads[$0]) }
        }
        while let t = next() {
            k += 1
            guard m.canStep(states[t], s.threads[t]) else {
                throw InvariantFailure(step: s.steps.count, invariant: "schedule",
                                       detail: "action \(k) of the schedule: CPU \(t) cannot run (its thread has ended, or it waits)")
            }
            let did = try m.stepThread(&states[t], s.threads[t])
            if let failure = Explorer.violation(s, m, records) {
                throw InvariantFailure(step: s.steps.count, invariant: "assert",
                                       detail: "after action \(k) (CPU \(t): \(did)): \(failure)")
            }
        }
        if s.schedule == nil, states.indices.contains(where: { states[$0].routine < s.threads[$0].count }) {
            throw InvariantFailure(step: s.steps.count, invariant: "deadlock", detail: "every CPU left waits")
        }
    }

    public static func run(_ scenario: Scenario, options: RunOptions = RunOptions()) throws(ScenarioError) -> RunResult {
        var m = try scenario.boot()
        var records: [StepRecord] = []
        var samples: [Sample] = [], batches: [Sample] = []
        var snapshot: Machine? = options.snapshotAt == 0 ? m : nil
        func finish(_ failure: InvariantFailure?, checks: [CheckRecord]) -> RunResult {
            RunResult(scenario: scenario, records: records, samples: samples, batches: batches, checks: checks, machine: m, snapshot: snapshot, failure: failure)
        }
        if options.checkInvariants {
            m.trackChanges()
            do { try m.checkInvariants(except: scenario.brokenInvariants) } catch {
                return finish(InvariantFailure(step: 0, invariant: error.name, detail: error.detail), checks: [])
            }
        }
        if let n = options.sampleEvery {
            samples.append(Sample(step: 0, metrics: m.metrics))
            m.sampleEvery = UInt64(n)
        } else if let n = options.traceBatches {
            m.workloadBatches = UInt64(max(1, n))
        }
        let total = scenario.steps.count
        for step in scenario.steps {
            options.progress?(step.index, total, step.name)
            if let progress = options.progress {
                m.onProgress = { done, all in progress(step.index, total, "\(step.name) \(done)/\(all)") }
            }
            let result: any Outcome
            let faultsBefore = m.kernel.faultLog.records.count
            do { result = try step.action(&m) } catch {
                // Only a state the loader could not foresee gets here (e.g. the vmalloc area filling up).
                throw ScenarioError(file: scenario.file, line: step.line, column: nil, field: "steps[\(step.index)].\(step.name)", error.message)
            }
            m.onProgress = nil
            m.kernel.faultLog.tag(from: faultsBefore, step: step.index)
            records.append(StepRecord(index: step.index, line: step.line, name: step.name, arguments: step.arguments,
                                      outcome: result, expect: step.expect, metrics: m.metrics))
            if options.snapshotAt == step.index { snapshot = m }
            if options.sampleEvery == nil && options.traceBatches != nil { batches += m.takeWorkloadSamples(step: step.index) }
            if let n = options.sampleEvery {
                samples += m.takeWorkloadSamples(step: step.index)
                if step.index % n == 0 || step.index == total { samples.append(Sample(step: step.index, metrics: m.metrics)) }
            }
            if options.checkInvariants {
                let full = step.index % max(1, options.fullCheckEvery ?? m.automaticFullCheckInterval) == 0 || step.index == total
                do { try m.checkInvariants(except: scenario.brokenInvariants, full: full) } catch {
                    return finish(InvariantFailure(step: step.index, invariant: error.name, detail: error.detail), checks: [])
                }
                m.resetChanges()
            }
        }
        if !scenario.threads.isEmpty {
            do { try runThreads(scenario, &m, records) } catch let f as InvariantFailure { return finish(f, checks: []) } catch {
                throw ScenarioError(file: scenario.file, line: nil, column: nil, field: "threads", "\(error)")
            }
        }
        // With `checkInvariants`, the last step (or boot) ended in a full walk of every
        // invariant that passed, on this same machine unless threads ran since.
        let walked = options.checkInvariants && scenario.brokenInvariants.isEmpty && scenario.threads.isEmpty
        let checks = scenario.checks.map { c in
            let (passed, detail) = walked && c.walksEveryInvariant ? (true, "") : c.evaluate(m, records)
            return CheckRecord(name: c.name, description: c.description, line: c.line, passed: passed, detail: detail)
        }
        return finish(nil, checks: checks)
    }
}
