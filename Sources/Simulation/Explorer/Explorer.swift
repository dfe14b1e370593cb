import Hardware
import HostKernel
import Hypervisor
import PageTables

/// Every interleaving of a scenario's threads from the state its setup steps leave, breadth
/// first (the first violation has the shortest schedule), each state checked against the
/// invariants and the scenario's `assert:` conditions. States already seen are not expanded
/// again: a state is the MTE state, the VMs' stage 2, the run's metrics and where each CPU
/// is (what the modelled routines change). docs/explorer.md.
public enum Explorer {
    public struct Options: Sendable {
        public var prune = true
        public var maxStates = 1_000_000
        public var maxDepth = 10_000
        public var progress: (@Sendable (Int, Int) -> Void)?
        public init() {}
    }

    public struct Result: Sendable {
        /// States expanded, and complete schedules (every thread at its end) reached.
        public var states = 0, schedules = 0
        /// The shortest schedule to a violation (the CPU of each action), and the violation.
        public var counterexample: [Int]?
        public var violation: String?
        /// Why the search stopped early (a limit), if it did.
        public var limited: String?
    }

    /// The first assert or invariant the machine breaks, if any.
    static func violation(_ s: Scenario, _ m: Machine, _ records: [StepRecord]) -> String? {
        for a in s.asserts {
            let (ok, detail) = a.evaluate(m, records)
            if !ok { return "assert \(a.description) failed" + (detail.isEmpty ? "" : " (\(detail))") }
        }
        do { try m.checkInvariants(except: s.brokenInvariants) } catch { return "invariant \(error.name): \(error.detail)" }
        return nil
    }

    /// What a state is, for pruning.
    struct Key: Hashable {
        let mte: MTEHost
        let stage2: [[UInt64]]
        let metrics: [UInt64]
        let threads: [ThreadState]
        init(_ m: Machine, _ threads: [ThreadState]) {
            mte = m.kernel.mte
            stage2 = m.kvmMTE.vms.map { vm in vm.stage2.sorted { $0.key < $1.key }.flatMap { [$0.key, $0.value] } }
            metrics = m.metrics.map(\.1)
            self.threads = threads
        }
    }

    public static func explore(_ s: Scenario, options: Options = Options()) throws(ScenarioError) -> Result {
        var m = try s.boot()
        var records: [StepRecord] = []
        for step in s.steps {
            let r: any Outcome
            do { r = try step.action(&m) } catch {
                throw ScenarioError(file: s.file, line: step.line, column: nil, field: "steps[\(step.index)].\(step.name)", error.message)
            }
            records.append(StepRecord(index: step.index, line: step.line, name: step.name, arguments: step.arguments, outcome: r, expect: step.expect, metrics: []))
        }
        var result = Result()
        if let v = violation(s, m, records) {
            result.violation = v
            result.counterexample = []
            return result
        }
        // Nodes: parent and the CPU that led there, to rebuild a schedule.
        var parent: [Int32] = [-1], cpu: [Int8] = [-1], depth: [Int32] = [0]
        var queue: [(node: Int, m: Machine, threads: [ThreadState])] = [(0, m, [ThreadState](repeating: ThreadState(), count: s.threads.count))]
        var head = 0
        var seen: Set<Key> = options.prune ? [Key(queue[0].m, queue[0].threads)] : []
        func schedule(_ n: Int) -> [Int] {
            var out: [Int] = [], n = n
            while parent[n] >= 0 { out.append(Int(cpu[n])); n = Int(parent[n]) }
            return out.reversed()
        }
        while head < queue.count {
            let (node, machine, threads) = queue[head]
            queue[head] = (node, m, [])  // drop the machine once taken
            head += 1
            result.states += 1
            if result.states % 4096 == 0 { options.progress?(result.states, queue.count - head) }
            let runnable = threads.indices.filter { machine.canStep(threads[$0], s.threads[$0]) }
            if runnable.isEmpty {
                if threads.indices.contains(where: { threads[$0].routine < s.threads[$0].count }) {
                    result.violation = "deadlock: every CPU left waits"
                    result.counterexample = schedule(node)
                    return result
                }
                result.schedules += 1
                continue
            }
            if Int(depth[node]) >= options.maxDepth {
                result.limited = "--max-depth \(options.maxDepth) reached after \(result.states) states"
                return result
            }
            for t in runnable {
                var next = machine, ts = threads
                do { _ = try next.stepThread(&ts[t], s.threads[t]) } catch {
                    throw ScenarioError(file: s.file, line: s.threads[t][threads[t].routine].line, column: nil, field: "threads[\(t)]", error.message)
                }
                if options.prune {
                    guard seen.insert(Key(next, ts)).inserted else { continue }
                }
                parent.append(Int32(node))
                cpu.append(Int8(t))
                depth.append(depth[node] + 1)
                let id = parent.count - 1
                if let v = violation(s, next, records) {
                    result.states += 1
                    result.violation = v
                    result.counterexample = schedule(id)
                    return result
                }
                if parent.count > options.maxStates {
                    result.limited = "--max-states \(options.maxStates) reached (\(result.states) states expanded, \(queue.count - head) waiting)"
                    return result
                }
                queue.append((id, next, ts))
            }
        }
        return result
    }

    /// Replays `schedule` and describes each action, for listings and traces.
    public static func describe(_ s: Scenario, schedule: [Int]) throws(ScenarioError) -> [(cpu: Int, action: String)] {
        var m = try s.boot()
        for step in s.steps { _ = try? step.action(&m) }
        var states = [ThreadState](repeating: ThreadState(), count: s.threads.count)
        var out: [(Int, String)] = []
        for t in schedule {
            do { out.append((t, try m.stepThread(&states[t], s.threads[t]))) } catch { out.append((t, "error: \(error)")) }
        }
        return out
    }
}
