import ArgumentParser
import Foundation
import HostKernel
import PageTables
import Reports
import Simulation

/// `cocomem run FILE`: run a scenario and report.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a scenario file and report what happened.",
        discussion: """
            Prints a summary: failed expectations, every metric, the end checks. Exit
            status 1 when an expectation or check fails or an invariant breaks. See
            docs/SCENARIOS.md for the file format; 'cocomem list steps' for what a
            step can be.
            """)

    @Argument(help: "The scenario (YAML).") var file: String
    @Flag(help: "Print the run as one JSON object instead of the summary.") var json = false
    @Flag(help: "Print the metrics as CSV (metric,value); with --sample the samples instead (step,operation,then every metric; one row per sample).") var csv = false
    @Flag(help: "Also print /proc/meminfo's DirectMap lines (at the end, or after step --at).") var meminfo = false
    @Flag(help: "Also print the kernel page table in ptdump format (at the end, or after step --at).") var ptdump = false
    @Option(help: ArgumentHelp("With --meminfo: walk (the table's leaves) or kernel (direct_pages_count as the running kernel keeps it).", valueName: "how"))
    var count: Kernel.DirectMapCount = .walk
    @Option(help: ArgumentHelp("Print --meminfo/--ptdump of this guest's own kernel instead of the host's.", valueName: "name")) var guest: String?
    @Option(help: ArgumentHelp("With --ptdump: print this user process's page table instead (ptdump's format, then each entry's raw x86 value); with --guest, a process of that guest.", valueName: "name")) var process: String?
    @Option(help: ArgumentHelp("Show --meminfo/--ptdump/--svg as they were right after step N (0 = after boot).", valueName: "N")) var at: Int?
    @Flag(help: "Check every invariant after every step; stop at the first violation.") var check = false
    @Option(name: .customLong("check-every"), help: ArgumentHelp(
        "With --check: walk everything every N steps and after the last; in between, check the regions each step changed (default: every step while a full walk visits at most 16,384 tables of 512 entries, counting the page tables and the platform's own such as the RMP; every 64 steps beyond).",
        valueName: "N")) var checkEvery: Int?
    @Option(help: ArgumentHelp("Record every metric after boot, every N steps, every N operations inside a workload, and at the end (JSON 'samples', CSV rows, trace counters).", valueName: "N")) var sample: Int?
    @Option(help: ArgumentHelp("Write a Chrome trace event file (open it in Perfetto).", valueName: "file")) var trace: String?
    @Option(help: ArgumentHelp("Write an SVG map of physical memory.", valueName: "file")) var svg: String?
    @Option(help: ArgumentHelp("Write an HTML page with the map and the summary.", valueName: "file")) var html: String?
    @Option(help: ArgumentHelp("Colour the map by leaf-size or ownership.", valueName: "mode")) var color: String = "leaf-size"
    @Option(help: ArgumentHelp("Replace the file's policy in a slot, e.g. host.directmap-policy=none (repeatable; 'cocomem list policies').", valueName: "slot=name"))
    var policy: [String] = []
    @Option(help: ArgumentHelp("Print the first N host faults, each as the kernel would log it, then their count.", valueName: "N")) var faults = 10
    @Flag(help: "No progress line on stderr.") var quiet = false

    func validate() throws {
        if json && csv { throw ValidationError("give --json or --csv, not both") }
        if process != nil && !ptdump { throw ValidationError("--process chooses whose page table --ptdump prints; give --ptdump") }
        if guest != nil && !(meminfo || ptdump) { throw ValidationError("--guest chooses whose --meminfo or --ptdump to print; give one of them") }
        if (json || csv) && (meminfo || ptdump) { throw ValidationError("--meminfo and --ptdump print text; they cannot be mixed with --json or --csv") }
        if let at, at < 0 { throw ValidationError("--at must be 0 or a step number") }
        if let sample, sample < 1 { throw ValidationError("--sample must be at least 1") }
        if faults < 0 { throw ValidationError("--faults \(faults): give 0 or more") }
        for p in policy where p.split(separator: "=", omittingEmptySubsequences: false).count != 2 || p.hasPrefix("=") || p.hasSuffix("=") {
            throw ValidationError("--policy '\(p)': write SLOT=NAME, e.g. host.directmap-policy=none")
        }
        if MemoryMap.Coloring(rawValue: color) == nil {
            throw ValidationError("--color '\(color)': valid: \(MemoryMap.Coloring.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() throws {
        let scenario = try Self.load(file, policies: policy)
        if let guest, !scenario.guests.contains(where: { $0.name == guest }) {
            throw CLIError("--guest '\(guest)': \(file) has " + (scenario.guests.isEmpty ? "no guests" : "guests " + scenario.guests.map(\.name).joined(separator: ", ")))
        }
        if let at, at > scenario.steps.count {
            throw CLIError("--at \(at): \(file) has \(scenario.steps.count) steps; valid: 0 to \(scenario.steps.count)")
        }
        if svg != nil || html != nil, scenario.memory.endOfRAM > MemoryMap.maxRAM {
            throw CLIError("--\(svg != nil ? "svg" : "html"): RAM up to \(ByteSize.format(scenario.memory.endOfRAM)); maps draw up to \(ByteSize.format(MemoryMap.maxRAM)) of RAM")
        }
        let progress = ProgressLine(quiet: quiet)
        if let n = checkEvery, n < 1 { throw ValidationError("--check-every \(n): give a number of steps, 1 or more") }
        var options = RunOptions(checkInvariants: check, fullCheckEvery: checkEvery, sampleEvery: sample, snapshotAt: at)
        if trace != nil { options.traceBatches = 64 }
        options.progress = { progress.update($0, $1, $2) }
        let result = try Runner.run(scenario, options: options)
        progress.finish()
        print(try Self.render(result, options: self), terminator: "")
        if !result.passed { throw ExitCode(1) }
    }

    /// Loads a scenario with `SLOT=NAME` overrides, each checked against the machine's slots.
    static func load(_ file: String, policies: [String]) throws -> Scenario {
        guard !policies.isEmpty else { return try ScenarioFiles.load(file) }
        let text = try ScenarioFiles.read(file)
        let base = try Scenario.load(yaml: text, file: file)
        var overrides: [(String, String)] = []
        for p in policies {
            let parts = p.split(separator: "=", maxSplits: 1).map(String.init)
            let slots = Policies.slots(base.architecture)
            guard let slot = slots.first(where: { $0.name == parts[0] }) else {
                throw CLIError("--policy '\(p)': no slot '\(parts[0])' on this scenario's machine; valid: \(slots.map(\.name).joined(separator: ", "))")
            }
            guard slot.policies.contains(where: { $0.name == parts[1] }) else {
                throw CLIError("--policy '\(p)': '\(parts[1])' is not a policy of \(slot.name); valid: \(slot.policies.map(\.name).joined(separator: ", "))")
            }
            overrides.append((parts[0], parts[1]))
        }
        return try Scenario.load(yaml: text, file: file, policyOverrides: overrides)
    }

    /// The SVG map of a machine: its platform's ownership, its guests labelled.
    static func map(_ machine: Machine, coloring: MemoryMap.Coloring, title: String) -> String {
        let guests = machine.guests.filter { $0.memory > 0 }.map { (name: $0.name, range: $0.placement..<$0.placement + $0.memory) }
        let marks = machine.kernel.faultLog.records.map { (pa: $0.pa, label: $0.line) }
        return MemoryMap.svg(machine.kernel, ownership: machine.platform is NoPlatform ? nil : machine.platform.ownership,
                             coloring: coloring, title: title, guests: guests, marks: marks)
    }

    /// Everything `run` prints and writes, for a finished run.
    static func render(_ result: RunResult, options o: Run) throws -> String {
        let shown = result.snapshot ?? result.machine
        if let path = o.trace { try ScenarioFiles.write(Trace.render(result), to: path) }
        let coloring = MemoryMap.Coloring(rawValue: o.color) ?? .leafSize
        let svgText = (o.svg != nil || o.html != nil) ? map(shown, coloring: coloring, title: result.scenario.name) : ""
        if let path = o.svg { try ScenarioFiles.write(svgText, to: path) }
        if let path = o.html {
            try ScenarioFiles.write(MemoryMap.html(svg: svgText, summary: RunReport.summary(result, faults: o.faults), title: result.scenario.name), to: path)
        }
        if o.json { return RunReport.json(result) }
        if o.csv { return RunReport.csv(result) }
        var out = RunReport.summary(result, faults: o.faults)
        var when = o.at.map { "after step \($0)" } ?? "at the end"
        var kernel = shown.kernel
        if let name = o.guest, let i = shown.guestIndex(name) {
            kernel = shown.guestKernels[i].kernel
            when = "of guest \(name) " + when
        }
        if o.meminfo {
            let lines = Meminfo.directMap(kernel, count: o.count)
            out += "\n/proc/meminfo \(when):\n" + (lines.isEmpty ? "(no DirectMap lines on \(kernel.config.isa.rawValue))\n" : lines)
        }
        if o.ptdump, let name = o.process {
            guard let p = kernel.user.processes.first(where: { $0.name == name }) else {
                let known = kernel.user.processes.map(\.name)
                throw CLIError("--process '\(name)': no such process in \(o.guest.map { "guest \($0)" } ?? "the host")" + (known.isEmpty ? " (the scenario declares none there)" : "; processes: " + known.joined(separator: ", ")))
            }
            out += "\nptdump of process \(name) \(when):\n"
            if kernel.config.isa == .s390x {
                out += "(the model's user table: x86-shaped levels and raw x86 values; s390's DAT layout is not modelled, docs/s390-pv.md)\n"
            }
            out += Ptdump.renderUser(p)
        } else if o.ptdump {
            out += "\nptdump \(when):\n" + Ptdump.render(kernel)
        }
        return out
    }
}

/// `cocomem check FILE…`: expectations and end checks as TAP.
struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run scenarios and print TAP version 13, one test point per expectation and check.",
        discussion: "Invariants are checked after every step. A file that cannot be read or run is one failing test point; the others still run. Exit status 1 if any test point fails.")

    @Argument(help: "Scenario files.") var files: [String]

    func validate() throws {
        if files.isEmpty { throw ValidationError("name at least one scenario file") }
    }

    func run() throws {
        var outcomes: [Result<RunResult, FileFailure>] = []
        for f in files {
            do {
                outcomes.append(.success(try Runner.run(try ScenarioFiles.load(f), options: RunOptions(checkInvariants: true))))
            } catch {
                outcomes.append(.failure(FileFailure(file: f, message: "\(error)")))
            }
        }
        print(RunReport.tap(outcomes), terminator: "")
        if !outcomes.allSatisfy({ (try? $0.get())?.passed == true }) { throw ExitCode(1) }
    }
}
