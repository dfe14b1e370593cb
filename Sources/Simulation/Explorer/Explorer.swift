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

    /// The first assert or invariant the machine breaks, if any. In slice mode (every thread
    /// step an MTE one) the invariants, which read nothing those steps change, were checked
    /// at the setup state and are not checked again.
    static func violation(_ s: Scenario, _ m: Machine, _ records: [StepRecord], invariants: Bool = true) -> String? {
        for a in s.asserts {
            let (ok, detail) = a.evaluate(m, records)
            if !ok { return "assert \(a.description) failed" + (detail.isEmpty ? "" : " (\(detail))") }
        }
        guard invariants else { return nil }
        do { try m.checkInvariants(except: s.brokenInvariants) } catch { return "invariant \(error.name): \(error.detail)" }
        return nil
    }

    /// What a state is, for pruning: a 64-bit fingerprint of what the threads can change,
    /// from the digests the MTE host and KVM keep as they change (O(VMAs and VMs), not the
    /// whole machine), the run's counters, each CPU's place in its thread, and the state at
    /// the addresses the threads' other steps name (`Machine.footprintDigest`). Two states
    /// collide with probability about n²/2⁶⁵ (1.5 million states: 6·10⁻⁸).
    /// `footprint` is nil in slice mode (every thread step an MTE one: nothing else changes).
    static func key(_ m: Machine, _ threads: [ThreadState], _ footprint: [Footprint]?) -> UInt64 {
        var d = Digest.combine(m.kernel.mte.digest, m.kvmMTE.digest)
        d = Digest.combine(d, UInt64(m.counters.operations) << 32 ^ UInt64(m.counters.errors))
        for t in threads { d = Digest.combine(d, t.digest) }
        if let footprint { d = Digest.combine(d, m.footprintDigest(footprint)) }
        return d
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
        // From here on the MTE host and KVM keep the digests the state key reads.
        m.kernel.mte.trackDigests()
        m.kvmMTE.trackDigests()
        var result = Result()
        if let v = violation(s, m, records) {
            result.violation = v
            result.counterexample = []
            return result
        }
        // Nodes: parent and the CPU that led there, to rebuild a schedule.
        var parent: [Int32] = [-1], cpu: [Int8] = [-1], depth: [Int32] = [0]
        let slices = s.threads.allSatisfy { $0.allSatisfy(\.mteOnly) }
        var queue: [(node: Int, state: Saved, threads: [ThreadState])] = [(0, Saved(m, slice: slices), [ThreadState](repeating: ThreadState(), count: s.threads.count))]
        var head = 0
        let footprint = slices ? nil : s.threads.flatMap { $0.flatMap(\.footprint) }
        var seen: Set<UInt64> = options.prune ? [key(m, queue[0].threads, footprint)] : []
        func schedule(_ n: Int) -> [Int] {
            var out: [Int] = [], n = n
            while parent[n] >= 0 { out.append(Int(cpu[n])); n = Int(parent[n]) }
            return out.reversed()
        }
        // One machine the states are loaded into: in slice mode only the slice is written.
        var work = m
        while head < queue.count {
            let (node, saved, threads) = queue[head]
            queue[head] = (node, .slice(Slice()), [])  // drop the state once taken
            head += 1
            saved.load(into: &work)
            result.states += 1
            if result.states % 4096 == 0 { options.progress?(result.states, queue.count - head) }
            let runnable = threads.indices.filter { work.canStep(threads[$0], s.threads[$0]) }
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
            for (n, t) in runnable.enumerated() {
                if n > 0 { saved.load(into: &work) }
                var ts = threads
                do { try work.stepThread(&ts[t], s.threads[t], describe: false) } catch {
                    throw ScenarioError(file: s.file, line: s.threads[t][threads[t].routine].line, column: nil, field: "threads[\(t)]", error.message)
                }
                if options.prune {
                    guard seen.insert(key(work, ts, footprint)).inserted else { continue }
                }
                parent.append(Int32(node))
                cpu.append(Int8(t))
                depth.append(depth[node] + 1)
                let id = parent.count - 1
                if let v = violation(s, work, records, invariants: !slices) {
                    result.states += 1
                    result.violation = v
                    result.counterexample = schedule(id)
                    return result
                }
                if parent.count > options.maxStates {
                    result.limited = "--max-states \(options.maxStates) reached (\(result.states) states expanded, \(queue.count - head) waiting)"
                    return result
                }
                queue.append((id, Saved(work, slice: slices), ts))
            }
        }
        return result
    }

    /// What the threads of an MTE race can change: the MTE host, KVM's VMs, the counters.
    struct Slice {
        var mte = MTEHost(), kvm = KVMMTE(), counters = RunCounters()
    }

    /// A state waiting in the queue: only its slice when every thread step is an MTE one
    /// (a few hundred bytes instead of the whole machine), else the whole machine, boxed.
    enum Saved {
        case slice(Slice)
        case machine(Box)
        final class Box { let m: Machine; init(_ m: Machine) { self.m = m } }

        init(_ m: Machine, slice: Bool) {
            self = slice ? .slice(Slice(mte: m.kernel.mte, kvm: m.kvmMTE, counters: m.counters)) : .machine(Box(m))
        }

        /// Makes `work` this state: the slice written into it, or the whole machine.
        func load(into work: inout Machine) {
            switch self {
            case .machine(let b): work = b.m
            case .slice(let s):
                work.kernel.mte = s.mte
                work.kvmMTE = s.kvm
                work.counters = s.counters
            }
        }
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
