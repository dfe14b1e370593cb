import Foundation
import Testing
@testable import Simulation
import Expectations

/// Schema-driven fuzzing of the real binary: scenarios built from every step's declared
/// parameters (and every workload's) on every modelled architecture, with extreme values,
/// wrong types and hostile text, each run in a child process that must exit by itself
/// (status 0 or 1, no signal), within 2 seconds and 256 MiB of resident memory, and whose
/// scenario errors name file:line. `COCOMEM_FUZZ_LONG=N` runs N inputs instead of the
/// quick default.
struct SchemaFuzzTests {
    static let numbers = ["0", "1", "0x1000", "0xfff", "0x1001", "0x200000", "0x40000000", "0x7fffffffffffffff", "0x8000000000000000",
                          "0xffffffffffffffff", "0xfffffffffffff000", "18446744073709551616", "-1", "-4G", "4P", "0x10000000000000",
                          "0xfffffffffffff", "1023", "1024", "65535", "4294967295", "4294967296", "2M-1", "1G+1"]
    static let hostile = ["", "\"\\u0001\\u0007\"", "\"a\\nnot ok 9 - forged\"", "\"<svg>&</svg>\"", "[1, 2]", "{a: 1}", "~",
                          "\"" + String(repeating: "x", count: 5000) + "\"", "'#'", "\"\\t\\r\""]

    /// The machines the inputs run on, one per modelled architecture.
    static let machines: [(ArchitectureDefinition, String)] = Architectures.modelled.map { arch in
        switch arch.name {
        case "x86-snp":
            (arch, "machine: {arch: x86-snp, memory: 4G, cpus: 2}\nguests:\n  - {name: vm0, asid: 1, memory: 8M, placement: {pa: 0x40000000}, vcpus: 2}\n")
        case "arm64":
            (arch, "machine:\n  arch: arm64\n  cpus: 2\n  mte: true\n  e820: |\n    BIOS-e820: [mem 0x0000000040000000-0x000000007fffffff] usable\n")
        case "arm64-pkvm":
            (arch, "machine:\n  arch: arm64-pkvm\n  cpus: 2\n  mte: true\n  e820: |\n    BIOS-e820: [mem 0x0000000040000000-0x000000007fffffff] usable\n"
                + "guests:\n  - {name: vm0, protected: true}\n  - {name: vm1}\n")
        default:
            (arch, "machine: {arch: \(arch.name), memory: 4G, cpus: 2}\n")
        }
    }

    /// One value for a parameter: usually one of its kind's extremes, sometimes hostile text.
    static func value(_ p: Parameter, _ rng: inout SeededGenerator) -> String {
        if rng.below(6) == 0 { return hostile[Int(rng.below(UInt64(hostile.count)))] }
        switch p.kind {
        case .bool: return ["true", "false", "yes", "0"][Int(rng.below(4))]
        case .choice(let c): return rng.below(4) == 0 ? "nope" : c[Int(rng.below(UInt64(c.count)))]
        case .letters(let l): return ["", String(l.prefix(2)), String(l), String(l) + String(l.prefix(1)), "Q"][Int(rng.below(5))]
        case .guest, .guestOrAll: return ["vm0", "all", "vm9"][Int(rng.below(3))]
        case .name: return ["vm0", "guestram", "\"a b\"", "\"\"", String(repeating: "n", count: 65)][Int(rng.below(5))]
        default: return numbers[Int(rng.below(UInt64(numbers.count)))]
        }
    }

    /// A scenario of one to three steps (or workloads) of `arch` with random arguments.
    static func scenario(_ i: Int, _ rng: inout SeededGenerator) -> String {
        let (arch, machine) = machines[i % machines.count]
        let steps = Steps.available(arch), workloads = Workloads.available(arch)
        var text = "name: fuzz\(i)\n" + machine + "steps:\n"
        for _ in 0..<(1 + Int(rng.below(3))) {
            let useWorkload = rng.below(4) == 0
            let (name, params) = useWorkload
                ? { let w = workloads[Int(rng.below(UInt64(workloads.count)))]; return ("workload", w.parameters) }()
                : { let s = steps[Int(rng.below(UInt64(steps.count)))]; return (s.name, s.arguments) }()
            var args: [String] = useWorkload ? ["kind: \(workloads.first { $0.parameters.map(\.name) == params.map(\.name) }!.name)"] : []
            for p in params where p.required || rng.below(2) == 0 {
                var v = value(p, &rng)
                // Keep workloads short: the limits are per input, not a test of patience.
                if useWorkload && p.name == "operations" { v = ["1", "50", "0", "-1"][Int(rng.below(4))] }
                args.append("\(p.name): \(v)")
            }
            if rng.below(8) == 0 { args.append("bogus: 1") }
            text += "  - \(name): {\(args.joined(separator: ", "))}\n"
        }
        return text
    }

    /// Runs the binary on `file`, killing it past `seconds`; its status, stderr, wall time and
    /// peak resident memory (wait4's ru_maxrss, KiB).
    static func runLimited(_ file: String, seconds: Double) throws -> (signaled: Bool, status: Int32, err: String, elapsed: Double, maxRSSKiB: Int, killed: Bool) {
        let binary = try CommandLineTests.binary().path
        let errPath = file + ".err"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup(binary), strdup("run"), strdup(file), strdup("--check"), nil]
        defer { for a in argv { free(a) } }
        var pid: pid_t = 0
        let start = Date()
        guard posix_spawn(&pid, binary, &actions, nil, argv, environ) == 0 else { throw CLIFuzzError("posix_spawn failed") }
        var status: Int32 = 0, usage = rusage(), killed = false
        // posix_spawn shares the test process's memory until exec, and exec carries that
        // memory's high-water mark into the child's ru_maxrss; so ru_maxrss is the child's
        // own only when it passes ours. Below that, the child's VmHWM, sampled while it runs.
        let ours = Self.highWaterKiB("self") ?? 0
        var sampled = 0
        while true {
            if let hwm = Self.highWaterKiB("\(pid)") { sampled = max(sampled, hwm) }
            let r = wait4(pid, &status, WNOHANG, &usage)
            if r == pid { break }
            if Date().timeIntervalSince(start) > seconds && !killed {
                kill(pid, SIGKILL)
                killed = true
            }
            usleep(5_000)
        }
        let elapsed = Date().timeIntervalSince(start)
        let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        try? FileManager.default.removeItem(atPath: errPath)
        let signaled = status & 0x7f != 0
        return (signaled, (status >> 8) & 0xff, err, elapsed, usage.ru_maxrss > ours ? usage.ru_maxrss : sampled, killed)
    }

    /// VmHWM of /proc/`pid`/status in KiB (nil once the process is gone).
    static func highWaterKiB(_ pid: String) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }) else { return nil }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }

    struct CLIFuzzError: Error { let message: String; init(_ m: String) { message = m } }

    @Test func everyStepOfEveryArchitectureSurvivesHostileArguments() throws {
        let count = ProcessInfo.processInfo.environment["COCOMEM_FUZZ_LONG"].flatMap(Int.init) ?? 48
        var rng = SeededGenerator(seed: 0xf022)
        let dir = NSTemporaryDirectory() + "cocomem-fuzz-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var failures: [String] = []
        var errors = 0
        for i in 0..<count {
            let text = Self.scenario(i, &rng)
            let file = dir + "/in\(i).yaml"
            try text.write(toFile: file, atomically: true, encoding: .utf8)
            let r = try Self.runLimited(file, seconds: 2)
            var problems: [String] = []
            if r.signaled { problems.append("killed by signal \(r.killed ? "KILL (over 2 s)" : String(0))") }
            if !r.signaled && r.status > 1 { problems.append("exit status \(r.status)") }
            if r.elapsed > 2 { problems.append("took \(r.elapsed) s") }
            if r.maxRSSKiB > 256 << 10 { problems.append("\(r.maxRSSKiB >> 10) MiB resident") }
            if r.err.hasPrefix("Error: ") {
                errors += 1
                // A scenario error names the file and a line.
                if !r.err.contains(file + ":") { problems.append("error without file:line: \(r.err.prefix(200))") }
            }
            if !problems.isEmpty { failures.append("input \(i): \(problems.joined(separator: "; "))\n\(text)") }
        }
        expectTrue(failures.isEmpty, "\(failures.count) of \(count) inputs failed:\n\(failures.prefix(5).joined(separator: "\n"))")
        #expect(errors > 0 && errors < count)  // both refusals and runs are exercised
    }
}
