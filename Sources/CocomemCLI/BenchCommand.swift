import ArgumentParser
import CReference
import Foundation
import Hardware
import HostKernel
import Hypervisor
import PageTables
import Reports
import Simulation

/// `cocomem bench`: speed and memory figures, each measured against the physical limit or a
/// fixed budget in the same run (ratios, so a noisy shared machine matters less).
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure cocomem's speed and memory: ratios against a C reference, operations per second, resident memory.",
        discussion: """
            Figures: walk_ratio, tlb_hit_ratio (model ÷ C on the same data and address
            stream), cpa_ops_per_s, psc_ops_per_s, pkvm_share_ops_per_s, rss_16t_256g_mib,
            rss_snp_4p_boot_mib, bytes_per_split_2m, scale_run_s, scale_run_rss_mib. Memory figures run in
            a child process so each starts clean. --quick uses smaller sizes (the same
            figures) and finishes in under a minute.
            """)

    @Flag(help: "Smaller sizes, the same figures (what CI runs).") var quick = false
    @Flag(help: "One JSON object keyed by figure name.") var json = false
    @Option(help: .hidden) var worker: String?
    @Flag(help: .hidden) var walkOnly = false
    @Flag(help: .hidden) var cpaOnly = false
    @Flag(help: .hidden) var pscOnly = false

    func run() throws {
        if let worker {
            print(try Self.runWorker(worker, quick: quick))
            return
        }
        var figures: [(String, Double, String)] = []
        if cpaOnly { print(try Self.cpaOps(quick: quick)); return }
        if pscOnly { print(try Self.pscOps(quick: quick)); return }
        let (walk, tlb) = try Self.walkAndTLB(quick: quick)
        if walkOnly { print(walk.ratio, tlb.ratio); return }
        figures.append(("walk_ratio", walk.ratio, "model \(fmt(walk.model)) ns, C \(fmt(walk.c)) ns per translate+check (goal ≤ 1.5)"))
        figures.append(("tlb_hit_ratio", tlb.ratio, "model \(fmt(tlb.model)) ns, C \(fmt(tlb.c)) ns per TLB hit (goal ≤ 1.5)"))
        figures.append(("cpa_ops_per_s", try Self.cpaOps(quick: quick), "set_memory_decrypted/encrypted of random 4K pages, 1 TiB (goal ≥ 2e6)"))
        figures.append(("psc_ops_per_s", try Self.pscOps(quick: quick), "page-state changes through KVM, the RMP and split-on-assign (goal ≥ 1e6)"))
        figures.append(("pkvm_share_ops_per_s", Self.pkvmShareOps(quick: quick), "pKVM host share then unshare of a random 4K page with a guest, 64 GiB host (goal ≥ 1e6)"))
        figures.append(("bytes_per_split_2m", try Self.bytesPerSplit(), "model bytes per 2M region split to 4K (goal ≤ 4096)"))
        let rss = try Self.child("rss", quick: quick)
        figures.append(("rss_16t_256g_mib", rss, quick ? "4 TiB host, 64 guests of 16 GiB, booted (quick sizes; goal ≤ 1024 at 16 TiB/256)" : "16 TiB host, 256 SNP guests of 16 GiB, booted (goal ≤ 1024)"))
        figures.append(("rss_snp_4p_boot_mib", try Self.child("snp-4p", quick: quick), "x86-snp host with 4 PiB of RAM (la57), 16 guests of 16 GiB, booted (goal ≤ 256)"))
        let scale = try Self.child("scale", quick: quick)
        let scaleRSS = try Self.child("scale-rss", quick: quick)
        figures.append(("scale_run_s", scale, quick ? "1 TiB host, 64 guests, 200,000 PSCs (quick)" : "1 TiB host, 64 guests, 10,000,000 adversarial PSCs"))
        figures.append(("scale_run_rss_mib", scaleRSS, "resident memory of that run"))
        if json {
            print(JSON.object(figures.map { ($0.0, .double($0.1)) }).render())
        } else {
            print(RunReport.table(["figure", "value", "what"], figures.map { [$0.0, fmt($0.1), $0.2] }, rightAlign: [1]), terminator: "")
        }
    }

    struct Ratio { let model: Double; let c: Double; var ratio: Double { model / c } }

    /// Nanoseconds per item of the fastest of `rounds` runs of `body`.
    static func bestNs(_ n: Int, rounds: Int = 5, _ body: () -> UInt64) -> (Double, UInt64) {
        var best = Double.infinity
        var sink: UInt64 = 0
        for _ in 0..<rounds {
            let t0 = ContinuousClock.now
            sink &+= body()
            let d = ContinuousClock.now - t0
            let ns = Double(d.components.seconds) * 1e9 + Double(d.components.attoseconds) / 1e9
            best = min(best, ns / Double(n))
        }
        return (best, sink)
    }

    /// A 1 TiB direct map with one 1G leaf in 16 split to 2M and one 2M in 8 of those split
    /// to 4K, an RMP with a guest page in each 4K region and some 2M pages, and a random
    /// address stream. Then the model's translate+check against the C loop, and TLB hits.
    static func walkAndTLB(quick: Bool) throws -> (Ratio, Ratio) {
        var k = try Kernel(memory: PhysicalMemory.pc(size: 1 << 40))
        k.compactPageTables = false  // the C reference reads the dense layout
        var rmp = RMP(end: 1 << 40)
        let off = k.layout.pageOffset
        for g in stride(from: UInt64(1), to: 1024, by: 16) {
            for m in stride(from: UInt64(0), to: 512, by: 8) {
                let pa = g << 30 + m << 21
                _ = try k.setMemory4K(off + pa + 0x3000, numpages: 1)
                _ = rmp.rmpupdate(spa: pa + 0x3000, RMPUpdate(gpa: 0, assigned: true, asid: 1))
            }
            _ = rmp.rmpupdate(spa: g << 30 + 0x20_0000, RMPUpdate(gpa: 0, assigned: true, size: .size2M, asid: 2))
        }
        var rng = SeededGenerator(seed: 1)
        let n = 4_000_000  // also when quick: a shorter stream reads noisier (1.6-1.7 against 1.4)
        let vas = (0..<n).map { _ in off + (1 << 20) + (rng.below((1 << 40) - (2 << 20)) & ~4095) }
        let table = k.pageTable
        let (modelNs, s1) = bestNs(n) {
            var sum: UInt64 = 0
            for va in vas {
                guard let (pa, leaf) = table.translate(VirtAddr(va)) else { sum &+= 1; continue }
                var fault: UInt64 = 0
                if case .hostRMPFault = rmp.hostAccess(spa: pa.rawValue, write: true, mappingSize: leaf.size) { fault = 1 }
                sum &+= pa.rawValue ^ fault
            }
            return sum
        }
        let (cNs, s2) = bestNs(n) {
            table.withEntries { entries in
                rmp.withStorage { top, mid, codes, counts, flags in
                    vas.withUnsafeBufferPointer { cref_walk_check(entries, Int32(table.rootLevel), top, mid, codes, counts, flags, $0.baseAddress!, n) }
                }
            }
        }
        precondition(s1 == s2, "the model and the C reference disagree on the walk")
        // TLB hits through the model's own access path (Kernel.translate on CPU 0: its TLB,
        // counted): 256 pages in distinct slots, filled by a first access, then accessed at
        // random; the C reference reads the same CPU's TLB storage.
        let hot = (0..<256).map { i in off + (UInt64(i) << 12) + (UInt64(rng.below(1 << 20)) << 20) }
        for va in hot { _ = k.translate(cpu: 0, va) }
        let stream = (0..<n).map { _ in hot[Int(rng.below(256))] + rng.below(4096) }
        let warm = k
        let (tlbModel, t1) = bestNs(n) {
            var k = warm, sum: UInt64 = 0
            for va in stream { sum &+= k.translate(cpu: 0, va).map { $0.pa | (va & (pageBytes - 1)) } ?? 1 }
            return sum
        }
        let (tlbC, t2) = bestNs(n) {
            k.cpus[0].tlb.withStorage { slots in stream.withUnsafeBufferPointer { cref_tlb_lookup(slots, $0.baseAddress!, n) } }
        }
        precondition(t1 == t2, "the model and the C reference disagree on the TLB")
        return (Ratio(model: modelNs, c: cNs), Ratio(model: tlbModel, c: tlbC))
    }

    static func cpaOps(quick: Bool) throws -> Double {
        var k = try Kernel(memory: PhysicalMemory.pc(size: 1 << 40))
        var rng = SeededGenerator(seed: 2)
        let n = quick ? 100_000 : 1_000_000
        let t0 = ContinuousClock.now
        for _ in 0..<n {
            let va = k.layout.pageOffset + (1 << 20) + (rng.below((1 << 40) - (2 << 20)) & ~4095)
            _ = try k.setMemoryDecrypted(va, numpages: 1)
            _ = try k.setMemoryEncrypted(va, numpages: 1)
        }
        return Double(2 * n) / seconds(ContinuousClock.now - t0)
    }

    /// pKVM ownership transitions per second: __pkvm_host_share_guest then
    /// __pkvm_host_unshare_guest of a random 4K page of a 64 GiB host at a random gfn, each
    /// checking the vmemmap and the guest's stage-2 and changing both. Timed after a warm-up
    /// of half as many pairs, which makes most of the guest's stage-2 tables (KVM keeps a
    /// VM's tables once made, as the model does: unsharing zaps the leaf only).
    static func pkvmShareOps(quick: Bool) -> Double {
        let ram: Range<UInt64> = (1 << 30)..<(65 << 30)
        var p = PKVM(memory: [ram], guests: [("vm", false)])
        var rng = SeededGenerator(seed: 4)
        let n = quick ? 200_000 : 2_000_000
        func pairs(_ count: Int) {
            for _ in 0..<count {
                let pfn = (ram.lowerBound >> 12) + rng.below((ram.upperBound - ram.lowerBound) >> 12), gfn = rng.below(1 << 24)
                precondition(p.hostShareGuest(pfn: pfn, gfn: gfn, nrPages: 1, guest: 0, prot: .rwx) == .ok)
                precondition(p.hostUnshareGuest(gfn: gfn, nrPages: 1, guest: 0) == .ok)
            }
        }
        pairs(n / 2)
        let t0 = ContinuousClock.now
        pairs(n)
        return Double(2 * n) / seconds(ContinuousClock.now - t0)
    }

    /// An SEV-SNP scenario of `guests` guests that boots each, then runs `flips` adversarial
    /// page-state changes, each on a guest picked at random.
    static func snpScenario(hostMemory: String, guests: Int, guestMemory: UInt64, flips: Int, seed: Int, la57: Bool = false) throws -> Scenario {
        var yaml = "name: bench\nseed: \(seed)\nmachine: {arch: x86-snp, memory: \(hostMemory)\(la57 ? ", la57: true" : "")}\nguests:\n"
        for g in 0..<guests {
            yaml += "  - {name: vm\(g), asid: \(g + 1), memory: \(guestMemory), placement: {pa: \(hex((4 << 30) + UInt64(g) * guestMemory))}}\n"
        }
        yaml += "steps:\n"
        for g in 0..<guests { yaml += "  - workload: {kind: guest-boot, guest: vm\(g)}\n" }
        if flips > 0 { yaml += "  - workload: {kind: adversarial-flip, guest: \(guests == 1 ? "vm0" : "all"), operations: \(flips)}\n" }
        return try Scenario.load(yaml: yaml, file: "<bench>")
    }

    /// Page-state changes per second: one booted guest, its set_memory_decrypted/encrypted
    /// of random 4K pages through the guest kernel, KVM, the RMP and split-on-assign.
    static func pscOps(quick: Bool) throws -> Double {
        let memory: UInt64 = quick ? 8 << 30 : 64 << 30
        let n = quick ? 100_000 : 1_000_000
        let boot = try snpScenario(hostMemory: quick ? "16G" : "128G", guests: 1, guestMemory: memory, flips: 0, seed: 3)
        let flip = try snpScenario(hostMemory: quick ? "16G" : "128G", guests: 1, guestMemory: memory, flips: n, seed: 3)
        // Time the flips alone: the run with them, less the boot-only run.
        let t0 = ContinuousClock.now
        _ = try Runner.run(boot)
        let t1 = ContinuousClock.now
        _ = try Runner.run(flip)
        let t2 = ContinuousClock.now
        return Double(n) / max(seconds(t2 - t1) - seconds(t1 - t0), 1e-9)
    }

    static func bytesPerSplit() throws -> Double {
        var k = try Kernel(memory: PhysicalMemory.pc(size: 64 << 30), config: KernelConfig(gbpages: false))
        let before = k.pageTable.usedBytes
        let n = 4096
        for i in 0..<n { _ = try k.setMemory4K(k.layout.pageOffset + (1 << 30) + UInt64(i) << 21, numpages: 1) }
        return Double(k.pageTable.usedBytes - before) / Double(n)
    }

    static func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

    /// Runs a figure in a child process so its memory starts clean.
    static func child(_ worker: String, quick: Bool) throws -> Double {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CommandLine.arguments[0].contains("/") ? CommandLine.arguments[0] : "/proc/self/exe")
        p.executableURL = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        p.arguments = ["bench", "--worker", worker] + (quick ? ["--quick"] : [])
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, let v = Double(String(decoding: data, as: UTF8.self).trimmingCharacters(in: " \n")) else {
            throw CLIError("bench worker \(worker) failed")
        }
        return v
    }

    /// Resident set size in MiB (VmRSS from /proc/self/status).
    static func rssMiB() -> Double {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = s.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = Double(line.split(separator: " ").dropFirst().first ?? "") else { return -1 }
        return kb / 1024
    }

    static func runWorker(_ name: String, quick: Bool) throws -> String {
        switch name {
        case "rss":
            let guests = quick ? 64 : 256
            let s = try snpScenario(hostMemory: quick ? "4T" : "16T", guests: guests, guestMemory: 16 << 30, flips: 0, seed: 4)
            let r = try Runner.run(s)
            return withExtendedLifetime(r) { String(format: "%.1f", rssMiB()) }
        case "snp-4p":
            let s = try snpScenario(hostMemory: "4P", guests: 16, guestMemory: 16 << 30, flips: 0, seed: 4, la57: true)
            let r = try Runner.run(s)
            return withExtendedLifetime(r) { String(format: "%.1f", rssMiB()) }
        case "scale", "scale-rss":
            let s = try snpScenario(hostMemory: "1T", guests: 64, guestMemory: 8 << 30, flips: quick ? 200_000 : 10_000_000, seed: 4)
            let t0 = ContinuousClock.now
            let r = try Runner.run(s)
            return withExtendedLifetime(r) {
                name == "scale" ? String(format: "%.2f", seconds(ContinuousClock.now - t0)) : String(format: "%.1f", rssMiB())
            }
        default:
            throw CLIError("unknown bench worker \(name)")
        }
    }
}

func fmt(_ v: Double) -> String {
    v >= 1000 ? String(format: "%.0f", v) : v >= 10 ? String(format: "%.1f", v) : String(format: "%.3f", v)
}
