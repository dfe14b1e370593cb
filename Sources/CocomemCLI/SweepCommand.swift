import ArgumentParser
import Dispatch
import Foundation
import Reports
import Simulation

/// `cocomem sweep MATRIX.yaml`: every run of a matrix, locally on all cores or as one shard
/// of a Slurm array or Kubernetes Indexed Job, one JSON line per run. docs/sweeps.md.
struct SweepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweep",
        abstract: "Run every combination of a matrix's scenarios and axes; one JSON line per run.",
        discussion: """
            The matrix names scenario files and the axes to vary (seed, memory, arch,
            guests, machine.KEY, workload.PARAMETER, policy slots); runs are numbered in
            a fixed order (scenario, then the axes as listed, the last fastest). Each
            line carries the matrix's hash, the run's number and parameters, whether it
            passed, every check and every metric, and nothing else (no times, hosts or
            paths): the same run gives the same line anywhere.

            --out FILE appends to FILE and, run again, skips the runs already in it.
            --shard I/N runs every N-th run from the I-th (0 ≤ I < N); without it, a
            Slurm array task takes its shard from SLURM_ARRAY_TASK_ID,
            SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT, and a Kubernetes Indexed
            Job from JOB_COMPLETION_INDEX with --shards N. 'cocomem merge' joins the
            shards into the table a local run gives.
            """)

    @Argument(help: "The matrix (YAML).") var matrix: String
    @Option(help: ArgumentHelp("Runs at once (default: the number of cores).", valueName: "N")) var jobs: Int?
    @Option(help: ArgumentHelp("Append the lines to this file; runs already in it are skipped.", valueName: "file")) var out: String?
    @Option(help: ArgumentHelp("Run the I-th of N interleaved slices (0 ≤ I < N).", valueName: "I/N")) var shard: String?
    @Option(help: ArgumentHelp("With JOB_COMPLETION_INDEX (a Kubernetes Indexed Job): the number of shards.", valueName: "N")) var shards: Int?
    @Flag(help: "No progress line on stderr.") var quiet = false

    func validate() throws {
        if let jobs, jobs < 1 { throw ValidationError("--jobs \(jobs): give 1 or more") }
        if let shards, shards < 1 { throw ValidationError("--shards \(shards): give 1 or more") }
    }

    func run() throws {
        let m = try Self.load(matrix)
        let (index, count) = try Self.shard(shard, shards: shards, environment: ProcessInfo.processInfo.environment)
        var runs = m.shard(index, of: count)
        var handle: FileHandle?
        if let out {
            let (done, h) = try SweepSink.openForResume(out, hash: m.hash)
            runs.removeAll { done.contains($0.index) }
            handle = h
        }
        let sink: SweepSink = handle.map { .file($0) } ?? .stdout
        let progress = ProgressLine(quiet: quiet)
        let total = runs.count, start = ContinuousClock.now
        try Self.runAll(runs, matrix: m, jobs: jobs ?? ProcessInfo.processInfo.activeProcessorCount) { line, done in
            sink.write(line)
            let elapsed = ContinuousClock.now - start
            let eta = done < total ? elapsed * Double(total - done) / Double(done) : .zero
            progress.update(done, total, "runs, ETA \(eta.components.seconds)s")
        }
        progress.finish()
        sink.close()
    }

    /// The matrix, its scenario files read relative to its own folder.
    static func load(_ path: String) throws -> SweepMatrix {
        let text = try ScenarioFiles.read(path, what: "matrix")
        let dir = URL(fileURLWithPath: path).deletingLastPathComponent()
        return try SweepMatrix(yaml: text, file: path) { name in
            try ScenarioFiles.read(name.hasPrefix("/") ? name : dir.appendingPathComponent(name).path)
        }
    }

    /// The shard to run: `--shard I/N`, else Slurm's array variables, else
    /// JOB_COMPLETION_INDEX with `--shards`, else the whole matrix.
    static func shard(_ flag: String?, shards: Int?, environment env: [String: String]) throws -> (Int, Int) {
        func check(_ i: Int, _ n: Int, _ source: String) throws -> (Int, Int) {
            guard n >= 1, (0..<n).contains(i) else { throw CLIError("\(source): shard \(i) of \(n); valid: 0 to \(max(0, n - 1)) of N ≥ 1") }
            return (i, n)
        }
        if let flag {
            let parts = flag.split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 2, let i = Int(parts[0]), let n = Int(parts[1]) else { throw CLIError("--shard '\(flag)': write I/N, e.g. 0/4") }
            return try check(i, n, "--shard \(flag)")
        }
        if let id = env["SLURM_ARRAY_TASK_ID"] {
            guard let task = Int(id), let n = env["SLURM_ARRAY_TASK_COUNT"].flatMap({ Int($0) }) else {
                throw CLIError("SLURM_ARRAY_TASK_ID=\(id) without a whole SLURM_ARRAY_TASK_COUNT; give --shard I/N")
            }
            let min = env["SLURM_ARRAY_TASK_MIN"].flatMap { Int($0) } ?? 0
            return try check(task - min, n, "SLURM_ARRAY_TASK_ID=\(id) (SLURM_ARRAY_TASK_MIN=\(min), SLURM_ARRAY_TASK_COUNT=\(n))")
        }
        if let id = env["JOB_COMPLETION_INDEX"] {
            guard let i = Int(id) else { throw CLIError("JOB_COMPLETION_INDEX=\(id) is not a number") }
            guard let n = shards else { throw CLIError("JOB_COMPLETION_INDEX=\(id) is set: give the number of shards with --shards N (the Job's completions)") }
            return try check(i, n, "JOB_COMPLETION_INDEX=\(id) with --shards \(n)")
        }
        if let shards { throw CLIError("--shards \(shards) needs JOB_COMPLETION_INDEX (a Kubernetes Indexed Job); locally give --shard I/N") }
        return (0, 1)
    }

    /// Runs `runs` on `jobs` threads; `emit` gets each line in run order, with the count done.
    static func runAll(_ runs: [SweepRun], matrix: SweepMatrix, jobs: Int, emit: @escaping @Sendable (String, Int) -> Void) throws {
        let state = SweepState(count: runs.count)
        DispatchQueue.concurrentPerform(iterations: max(1, min(jobs, runs.count))) { _ in
            while let i = state.take() {
                let line = Self.line(runs[i], matrix: matrix)
                state.finish(i, line, emit)
            }
        }
    }

    /// One run as its JSON line.
    static func line(_ run: SweepRun, matrix: SweepMatrix) -> String {
        var fields: [(String, JSON)] = [
            ("matrix", .string(matrix.hash)), ("run", .int(run.index)), ("of", .int(matrix.runs.count)),
            ("scenario", .string(run.scenario.name)), ("params", .object(run.params.map { ($0.0, .string($0.1)) })),
        ]
        do {
            let r = try Runner.run(run.scenario, options: RunOptions(checkInvariants: true))
            fields += [
                ("passed", .bool(r.passed)), ("failed", .array(Compare.failures(r).map { .string($0) })),
                ("checks", .array(r.checks.map { .object([("check", .string($0.description)), ("passed", .bool($0.passed)), ("detail", .string($0.detail))]) })),
                ("metrics", .object(r.metrics.map { ($0.0, .number($0.1)) })),
            ]
        } catch {
            fields += [("passed", .bool(false)), ("failed", .array([.string("error: \(error)")])), ("checks", .array([])), ("metrics", .object([]))]
        }
        return JSON.object(fields).render(indent: nil)
    }
}

/// The shared queue of a sweep's runs and the lines waiting for those before them.
final class SweepState: @unchecked Sendable {
    private let lock = NSLockLike()
    private var next = 0, written = 0, done = 0
    private var lines: [String?]
    init(count: Int) { lines = Array(repeating: nil, count: count) }

    func take() -> Int? {
        lock.withLock {
            guard next < lines.count else { return nil }
            next += 1
            return next - 1
        }
    }

    func finish(_ i: Int, _ line: String, _ emit: @Sendable (String, Int) -> Void) {
        lock.withLock {
            lines[i] = line
            done += 1
            while written < lines.count, let l = lines[written] {
                lines[written] = nil
                written += 1
                emit(l, done)
            }
        }
    }
}

/// Where a sweep's lines go: stdout, or a file appended to line by line.
enum SweepSink: @unchecked Sendable {
    case stdout
    case file(FileHandle)

    func write(_ line: String) {
        switch self {
        case .stdout: print(line)
        case .file(let h): h.write(Data((line + "\n").utf8))
        }
    }

    func close() { if case .file(let h) = self { try? h.close() } }

    /// Opens `path` for appending; the runs already in it (of this matrix) are returned.
    /// A last line cut short by an interruption is dropped; lines of another matrix refuse.
    static func openForResume(_ path: String, hash: String) throws -> (Set<Int>, FileHandle) {
        var done = Set<Int>()
        if FileManager.default.fileExists(atPath: path) {
            let text = try ScenarioFiles.read(path, limit: 1 << 30, what: "--out")
            var keep = text.utf8.count
            if !text.isEmpty && !text.hasSuffix("\n") {
                keep = text.utf8.count - (text.split(separator: "\n", omittingEmptySubsequences: false).last?.utf8.count ?? 0)
                FileHandle.standardError.write(Data("--out \(path): its last line was cut short; it is dropped and that run done again\n".utf8))
            }
            for (n, line) in String(decoding: Array(text.utf8.prefix(keep)), as: UTF8.self).split(separator: "\n").enumerated() {
                guard let v = try? JSONReader.parse(String(line)), let h = v["matrix"]?.stringValue, let run = v["run"]?.intValue else {
                    throw CLIError("--out \(path):\(n + 1): not a sweep line; give another --out")
                }
                guard h == hash else { throw CLIError("--out \(path):\(n + 1): a run of matrix \(h), not of this one (\(hash)); give another --out") }
                done.insert(run)
            }
            guard let h = FileHandle(forUpdatingAtPath: path) else { throw CLIError("--out \(path): cannot write to it") }
            do {
                try h.truncate(atOffset: UInt64(keep))
                try h.seekToEnd()
            } catch { throw CLIError("--out \(path): cannot write to it (\(error.localizedDescription))") }
            return (done, h)
        }
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw CLIError("--out \(path): cannot create the file")
        }
        return (done, h)
    }
}

/// `cocomem merge SHARD.jsonl…`: the shards of one sweep as one table.
struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Join a sweep's JSON lines (its shards) into one table, in run order.",
        discussion: """
            Checks that every line is of one matrix (its hash), that no run is missing
            or given twice, and prints one row per run: its parameters, whether it
            passed, and the metrics that are not zero in every run (--metrics chooses).
            Merging the shards gives byte for byte what merging a local run's output gives.
            """)

    @Argument(help: "The JSON-lines files of a sweep.") var files: [String]
    @Flag(help: "Print a Markdown table.") var markdown = false
    @Flag(help: "Print CSV (every metric).") var csv = false
    @Flag(help: "Print the runs as one JSON array.") var json = false
    @Option(help: ArgumentHelp("Only these metrics, in this order (comma-separated).", valueName: "a,b,c")) var metrics: String?

    func validate() throws {
        if files.isEmpty { throw ValidationError("give the sweep's output files") }
        if [markdown, csv, json].filter({ $0 }).count > 1 { throw ValidationError("give one of --markdown, --csv and --json") }
    }

    func run() throws {
        let runs = try Self.collect(files)
        print(try Self.render(runs, format: json ? .json : csv ? .csv : markdown ? .markdown : .table, metrics: metrics), terminator: "")
    }

    /// Every line of the files, checked: one matrix, each run once, none missing.
    static func collect(_ files: [String]) throws -> [JSON] {
        var byRun: [Int: (JSON, String)] = [:]
        var matrix: (hash: String, of: Int, from: String)?
        for f in files {
            let text = try ScenarioFiles.read(f, limit: 1 << 30, what: "sweep output")
            for (n, line) in text.split(separator: "\n").enumerated() {
                let place = "\(f):\(n + 1)"
                guard let v = try? JSONReader.parse(String(line)), let h = v["matrix"]?.stringValue, let run = v["run"]?.intValue,
                      let of = v["of"]?.intValue, (0..<of).contains(run), v["params"]?.pairs != nil, v["metrics"]?.pairs != nil else {
                    throw CLIError("\(place): not a line of 'cocomem sweep'")
                }
                if let m = matrix, m.hash != h || m.of != of {
                    throw CLIError("\(place) is a run of matrix \(h) (\(of) runs), \(m.from) of matrix \(m.hash) (\(m.of) runs): shards of different matrices")
                }
                matrix = matrix ?? (h, of, place)
                if let (_, first) = byRun[run] { throw CLIError("run \(run) is given twice: \(first) and \(place)") }
                byRun[run] = (v, place)
            }
        }
        guard let m = matrix else { throw CLIError("\(files.joined(separator: ", ")): no runs") }
        let missing = (0..<m.of).filter { byRun[$0] == nil }
        guard missing.isEmpty else {
            let shown = missing.prefix(10).map(String.init).joined(separator: ", ") + (missing.count > 10 ? ", …" : "")
            throw CLIError("\(missing.count) of \(m.of) runs missing (\(shown)): run the shards that hold them, or the sweep again with the same --out")
        }
        return (0..<m.of).map { byRun[$0]!.0 }
    }

    enum Format { case table, markdown, csv, json }

    static func render(_ runs: [JSON], format: Format, metrics list: String?) throws -> String {
        if format == .json { return JSON.array(runs).render() + "\n" }
        let params = runs[0]["params"]?.pairs?.map(\.0) ?? []
        let all = runs.first { ($0["metrics"]?.pairs ?? []).count > 0 }?["metrics"]?.pairs?.map(\.0) ?? []
        func value(_ r: JSON, _ name: String) -> String {
            switch r["metrics"]?[name] {
            case .int(let n): String(n)
            case .number(let n): String(n)
            default: ""
            }
        }
        var names = all
        if let list {
            names = list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            if let bad = names.first(where: { !all.contains($0) }) { throw CLIError("--metrics: no metric '\(bad)' in these runs" + Suggest.hint(bad, in: all, listedBy: "the lines' metrics")) }
        } else if format != .csv {
            names = all.filter { n in runs.contains { value($0, n) != "0" && value($0, n) != "" } }
        }
        let header = ["run", "scenario"] + params + ["passed"] + names
        let rows = runs.map { r in
            [String(r["run"]?.intValue ?? 0), r["scenario"]?.stringValue ?? ""] + params.map { r["params"]?[$0]?.stringValue ?? "" }
                + [r["passed"].map { if case .bool(true) = $0 { "pass" } else { "FAIL" } } ?? ""] + names.map { value(r, $0) }
        }
        switch format {
        case .csv: return ([header] + rows).map { $0.map(Compare.csvField).joined(separator: ",") + "\n" }.joined()
        case .markdown:
            return "| " + header.joined(separator: " | ") + " |\n|" + header.map { _ in "---|" }.joined() + "\n"
                + rows.map { "| " + $0.joined(separator: " | ") + " |\n" }.joined()
        default: return RunReport.table(header, rows, rightAlign: Set((params.count + 3)..<header.count).union([0]))
        }
    }
}
