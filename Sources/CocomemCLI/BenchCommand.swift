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
            stream), cpa_ops_per_s, psc_ops_per_s, pkvm_share_ops_per_s, mte_swap_cycle_ops_per_s,
            user_fault_ops_per_s, tdx_convert_ops_per_s, snp_convert_ops_per_s, cca_convert_ops_per_s,
            pv_swap_cycle_ops_per_s, tdx_pamt_static_mib,
            tdx_pamt_dynamic_mib,
            explore_states_per_s, mte_race_found_s, sweep_speedup,
            rss_16t_256g_mib, rss_snp_4p_boot_mib, bytes_per_split_2m, scale_run_s,
            scale_run_rss_mib. Ratios are the median of seven interleaved pairs (model,
            reference, model, reference …); other timed and memory figures the median of
            seven runs; each with its minimum and maximum (NAME_min, NAME_max in --json).
            Memory figures run in a child process so each starts clean. --quick uses
            smaller sizes (the same figures) and finishes in about a minute.
            """)

    @Flag(help: "Smaller sizes, the same figures (what CI runs).") var quick = false
    @Flag(help: "One JSON object keyed by figure name.") var json = false
    @Option(help: .hidden) var worker: String?
    @Flag(help: .hidden) var walkOnly = false
    @Flag(help: .hidden) var cpaOnly = false
    @Flag(help: .hidden) var pscOnly = false
    @Flag(help: .hidden) var userOnly = false
    @Flag(help: .hidden) var convertOnly = false
    @Flag(help: .hidden) var pvOnly = false
    @Flag(help: .hidden) var ccaOnly = false
    @Flag(help: .hidden) var mteOnly = false
    @Flag(help: .hidden) var exploreOnly = false

    func run() throws {
        if let worker {
            print(try Self.runWorker(worker, quick: quick))
            return
        }
        var figures: [(String, Spread, String)] = []
        // Each figure's time on stderr, so a slow one shows where CI's minutes go.
        var last = ContinuousClock.now
        func add(_ figure: (String, Spread, String)) {
            figures.append(figure)
            let now = ContinuousClock.now
            FileHandle.standardError.write("bench: \(figure.0) took \(fmt(Self.seconds(now - last))) s\n".data(using: .utf8)!)
            last = now
        }
        if cpaOnly { print(try Self.cpaOps(quick: quick)); return }
        if pscOnly { print(try Self.pscOps(quick: quick)); return }
        if userOnly { print(Self.userFaultOps(quick: quick)); return }
        if pvOnly { print(try Self.pvSwapCycles(quick: quick)); return }
        if mteOnly { print(Self.mteSwapCycles(quick: quick)); return }
        if exploreOnly { print(try Self.exploreStates(quick: quick)); return }
        if ccaOnly { let c = try Self.convertOps(quick: quick, cca: true).2; print(c.median, c.min, c.max); return }
        if convertOnly {
            let (t, s, c) = try Self.convertOps(quick: quick)
            print("tdx", t.median, t.min, t.max, "snp", s.median, s.min, s.max, "cca", c.median, c.min, c.max)
            return
        }
        let (walk, tlb) = try Self.walkAndTLB(quick: quick)
        if walkOnly { print(walk.ratio.median, tlb.ratio.median, walk.model, walk.c); return }
        add(("walk_ratio", walk.ratio, "model \(fmt(walk.model)) ns, C \(fmt(walk.c)) ns per translate+check (goal ≤ 1.5)"))
        add(("tlb_hit_ratio", tlb.ratio, "model \(fmt(tlb.model)) ns, C \(fmt(tlb.c)) ns per TLB hit (goal ≤ 1.5)"))
        add(("cpa_ops_per_s", try Self.runs { try Self.cpaOps(quick: quick) }, "set_memory_decrypted/encrypted of random 4K pages, 1 TiB (goal ≥ 2e6)"))
        add(("psc_ops_per_s", try Self.runs { try Self.pscOps(quick: quick) }, "page-state changes through KVM, the RMP and split-on-assign (goal ≥ 1e6)"))
        add(("pkvm_share_ops_per_s", try Self.runs { Self.pkvmShareOps(quick: quick) }, "pKVM host share then unshare of a random 4K page with a guest, 64 GiB host (goal ≥ 1e6)"))
        add(("mte_swap_cycle_ops_per_s", try Self.runs { Self.mteSwapCycles(quick: quick) }, "swap out and back in one tagged 4K page of a 16 GiB guest: tags saved and restored (goal ≥ 1e6)"))
        add(("user_fault_ops_per_s", try Self.runs { Self.userFaultOps(quick: quick) }, "a write fault then MADV_DONTNEED of a random 4K page of a 64 GiB anonymous VMA, each counted (goal ≥ 2e6)"))
        let (tdxConvert, snpConvert, ccaConvert) = try Self.convertOps(quick: quick)
        add(("tdx_convert_ops_per_s", tdxConvert, "set_memory_decrypted then _encrypted of a random 4K page of a \(quick ? "8" : "64") GiB TD: MapGPA, KVM's zap or fault, ACCEPT (goal ≥ 5e5, within 1.5× of SNP)"))
        add(("snp_convert_ops_per_s", snpConvert, "the same cycle in an SEV-SNP guest of the same size: PVALIDATE, page-state changes, RMPUPDATE, split-on-assign"))
        add(("cca_convert_ops_per_s", ccaConvert, "the same cycle in a realm of the same size, the page touched after each: RSI, KVM's DATA_DESTROY/undelegate or DELEGATE/DATA_CREATE_UNKNOWN, RTT_SET_RIPAS, the GPT (goal ≥ 5e5, within 1.5× of SNP)"))
        add(("pv_swap_cycle_ops_per_s", try Self.runs { try Self.pvSwapCycles(quick: quick) }, "s390-pv: a protected guest of \(quick ? "4" : "16") GiB writes a random 4K page (imported), the host swaps it out (exported by the PTE clear, written to swap), the guest reads it back (swapped in, imported and verified); each of the three counted (goal ≥ 5e5, as the conversion cycles)"))
        let pamt = Self.tdxPAMTMiB(acceptedFraction: 1)
        add(("tdx_pamt_static_mib", Spread(one: pamt.static), "PAMT of a 1 TiB TDX host (tdmr_get_pamt_sz), whatever its TDs use"))
        add(("tdx_pamt_dynamic_mib", Spread(one: pamt.dynamic), "dynamic PAMT of that host with 64 TDs of 8 GiB, all accepted and mapped at 4K: bitmap, 2M/1G levels, refcounts, page pairs"))
        add(("explore_states_per_s", try Self.runs { try Self.exploreStates(quick: quick) }, quick ? "explorer states per second, seed 003's race on four CPUs, restore in 16 steps: 184,225 states (goal ≥ 1e6; at least 1e5)" : "explorer states per second, seed 003's race on four CPUs, restore in 64 steps: 1,547,041 states (goal ≥ 1e6; at least 1e5)"))
        add(("mte_race_found_s", try Self.runs { try Self.mteRaceFound() }, "seconds to the counterexample of seed 003's swap race under v5.14 (goal ≤ 1)"))
        add(("sweep_speedup", try Self.sweepSpeedup(quick: quick), "a sweep of 32 short runs, --jobs 2 against --jobs 1, pairs interleaved (goal ≥ 1.8 on 2 cores)"))
        add(("bytes_per_split_2m", Spread(one: try Self.bytesPerSplit()), "model bytes per 2M region split to 4K (goal ≤ 4096)"))
        let rss = try Self.runs { try Self.child("rss", quick: quick)[0] }
        add(("rss_16t_256g_mib", rss, quick ? "4 TiB host, 64 guests of 16 GiB, booted (quick sizes; goal ≤ 1024 at 16 TiB/256)" : "16 TiB host, 256 SNP guests of 16 GiB, booted (goal ≤ 1024)"))
        add(("rss_snp_4p_boot_mib", try Self.runs { try Self.child("snp-4p", quick: quick)[0] }, "x86-snp host with 4 PiB of RAM (la57), 16 guests of 16 GiB, booted (goal ≤ 256)"))
        var scale: [Double] = [], scaleRSS: [Double] = []
        for _ in 0..<Self.rounds {
            let v = try Self.child("scale", quick: quick)
            scale.append(v[0])
            scaleRSS.append(v[1])
        }
        add(("scale_run_s", Spread(scale), quick ? "1 TiB host, 64 guests, 200,000 PSCs (quick)" : "1 TiB host, 64 guests, 10,000,000 adversarial PSCs"))
        add(("scale_run_rss_mib", Spread(scaleRSS), "resident memory of that run"))
        if json {
            var pairs: [(String, JSON)] = []
            for (name, v, _) in figures {
                pairs.append((name, .double(v.median)))
                if v.count > 1 { pairs += [(name + "_min", .double(v.min)), (name + "_max", .double(v.max))] }
            }
            print(JSON.object(pairs).render())
        } else {
            print(RunReport.table(["figure", "median", "min–max", "what"],
                                  figures.map { [$0.0, fmt($0.1.median), $0.1.count > 1 ? "\(fmt($0.1.min))–\(fmt($0.1.max))" : "", $0.2] },
                                  rightAlign: [1, 2]), terminator: "")
        }
    }

    /// Runs (or interleaved pairs) behind every timed figure: the median is reported, with
    /// the minimum and the maximum.
    static let rounds = 7

    /// A figure's median over its runs, with its range.
    struct Spread {
        let median: Double, min: Double, max: Double, count: Int
        init(_ xs: [Double]) {
            let s = xs.sorted()
            median = s.isEmpty ? .nan : s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
            min = s.first ?? .nan
            max = s.last ?? .nan
            count = s.count
        }
        init(one v: Double) { self.init([v]) }
    }

    /// `rounds` runs of `body`.
    static func runs(_ body: () throws -> Double) throws -> Spread {
        var xs: [Double] = []
        for _ in 0..<rounds { xs.append(try body()) }
        return Spread(xs)
    }

    /// A ratio from interleaved pairs (model, C, model, C …): the median of the pair ratios
    /// and its range, and the median nanoseconds of each side.
    struct Ratio { let ratio: Spread; let model: Double; let c: Double }

    /// Nanoseconds per item of one run of `body`.
    @inline(__always) static func ns(_ n: Int, _ body: () -> UInt64, _ sink: inout UInt64) -> Double {
        let t0 = ContinuousClock.now
        sink &+= body()
        let d = ContinuousClock.now - t0
        return (Double(d.components.seconds) * 1e9 + Double(d.components.attoseconds) / 1e9) / Double(n)
    }

    /// `rounds` interleaved pairs of the model's and the reference's run, after one warm-up
    /// pair, so that a noisy neighbour slows both sides of a pair alike.
    @inline(__always) static func interleaved(_ n: Int, model: () -> UInt64, reference: () -> UInt64) -> (Ratio, UInt64, UInt64) {
        var s1: UInt64 = 0, s2: UInt64 = 0
        _ = ns(n, model, &s1)
        _ = ns(n, reference, &s2)
        var ms: [Double] = [], cs: [Double] = [], ratios: [Double] = []
        for _ in 0..<rounds {
            let m = ns(n, model, &s1), c = ns(n, reference, &s2)
            ms.append(m)
            cs.append(c)
            ratios.append(m / c)
        }
        return (Ratio(ratio: Spread(ratios), model: Spread(ms).median, c: Spread(cs).median), s1, s2)
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
        let table = k.pageTable, rmpFixed = rmp
        let (walk, s1, s2) = interleaved(n, model: { modelWalk(table, rmpFixed, vas) }, reference: {
            table.withEntries { entries in
                rmpFixed.withStorage { top, mid, codes, counts, flags in
                    vas.withUnsafeBufferPointer { cref_walk_check(entries, Int32(table.rootLevel), top, mid, codes, counts, flags, $0.baseAddress!, n) }
                }
            }
        })
        precondition(s1 == s2, "the model and the C reference disagree on the walk")
        // TLB hits through the model's own access path (Kernel.translate on CPU 0: its TLB,
        // counted): 256 pages in distinct slots, filled by a first access, then accessed at
        // random; the C reference reads the same CPU's TLB storage.
        let hot = (0..<256).map { i in off + (UInt64(i) << 12) + (UInt64(rng.below(1 << 20)) << 20) }
        for va in hot { _ = k.translate(cpu: 0, va) }
        let stream = (0..<n).map { _ in hot[Int(rng.below(256))] + rng.below(4096) }
        let warm = k
        let (tlb, t1, t2) = interleaved(n, model: {
            var k = warm, sum: UInt64 = 0
            for va in stream { sum &+= k.translate(cpu: 0, va).map { $0.pa | (va & (pageBytes - 1)) } ?? 1 }
            return sum
        }, reference: {
            k.cpus[0].tlb.withStorage { slots in stream.withUnsafeBufferPointer { cref_tlb_lookup(slots, $0.baseAddress!, n) } }
        })
        precondition(t1 == t2, "the model and the C reference disagree on the TLB")
        return (walk, tlb)
    }

    /// The model's side of walk_ratio: translate and RMP-check each address (a function of
    /// its own, so the loop compiles as it would in the model, not inside a closure's context).
    @inline(never) static func modelWalk(_ table: PageTable, _ rmp: RMP, _ vas: [UInt64]) -> UInt64 {
        var sum: UInt64 = 0
        for va in vas {
            guard let (pa, leaf) = table.translate(VirtAddr(va)) else { sum &+= 1; continue }
            var fault: UInt64 = 0
            if case .hostRMPFault = rmp.hostAccess(spa: pa.rawValue, write: true, mappingSize: leaf.size) { fault = 1 }
            sum &+= pa.rawValue ^ fault
        }
        return sum
    }

    /// Swap cycles per second of one tagged page of a 16 GiB guest's memory (an untagged VMM
    /// mapping, as in seed 003): swap_writepage saves its tags, the next fault maps a new
    /// page and restores them (v6.1-lock form).
    static func mteSwapCycles(quick: Bool) -> Double {
        var h = MTEHost()
        let ram: [Range<UInt64>] = [(1 << 30)..<(33 << 30)]
        _ = h.mmap(name: "guestram", pages: 4 << 20, protMTE: false, backing: "anon", shared: false)
        var rng = SeededGenerator(seed: 5)
        let page = Int(rng.below(4 << 20))
        let pfn = h.fault(vma: 0, page: page, ram: ram)!
        h.sanitise(pfn)
        h.guestStoreTags(vma: 0, page: page, pfn: pfn, tag: 0x5)
        let n = quick ? 200_000 : 2_000_000
        let t0 = ContinuousClock.now
        for _ in 0..<n {
            _ = h.swapOut(vma: 0, page: page)
            _ = h.fault(vma: 0, page: page, ram: ram)
        }
        let t = seconds(ContinuousClock.now - t0)
        precondition(h.stats.restored == n && h.stats.lost == 0, "the swap cycle lost tags")
        return Double(n) / t
    }

    /// s390-pv swap cycles per second: a protected guest over a VMM's anonymous memory of
    /// 16 GiB (4 quick); a random page written by the guest (DAT fault, import), swapped out
    /// by the host (try_to_unmap's export, pageout), read back by the guest (do_swap_page,
    /// the import's integrity check). Each of the three is one operation.
    static func pvSwapCycles(quick: Bool) throws -> Double {
        let size: UInt64 = quick ? 4 << 30 : 16 << 30, n = quick ? 100_000 : 1_000_000
        let yaml = """
            name: bench
            machine: {arch: s390-pv, memory: \(quick ? "8G" : "24G")}
            guests: [{name: pv0}]
            processes: [qemu]
            steps:
              - mmap: {process: qemu, addr: 0x100000000, len: \(size), flags: MAP_PRIVATE|MAP_FIXED}
              - kvm_s390_pv_init_vm: {guest: pv0, process: qemu, addr: 0x100000000, len: \(size)}

            """
        var m = try Runner.run(try Scenario.load(yaml: yaml, file: "<bench>")).machine
        var rng = SeededGenerator(seed: 29)
        let t0 = ContinuousClock.now
        let bad = m.withPlatform(S390Platform.self) { p, m in p.benchSwapCycles(&m, pages: size >> pageShift, cycles: n, &rng) }
        let t = seconds(ContinuousClock.now - t0)
        precondition(bad == 0, "the swap cycle lost a guest's data")
        return Double(3 * n) / t
    }

    /// Conversions per second on TDX and on SEV-SNP, rounds interleaved: one guest of 64 GiB
    /// (8 GiB quick), booted (SNP: launched and validated; TDX: launched and finalized,
    /// private memory mapped on first accept), then random 4K pages made shared and private
    /// again through the guest kernel's set_memory_decrypted/encrypted, the hypervisor and
    /// the hardware model. Each conversion is one operation.
    /// The three conversion cycles, interleaved (`cca` alone: only the realm's).
    static func convertOps(quick: Bool, cca ccaOnly: Bool = false) throws -> (Spread, Spread, Spread) {
        let guest: UInt64 = quick ? 8 << 30 : 64 << 30, host = quick ? "16G" : "80G", n = quick ? 20_000 : 200_000
        let g = "  - {name: vm0, asid: 1, memory: \(guest), placement: {pa: 0x100000000}}\n"
        let tdx = "name: bench\nmachine: {arch: x86-tdx, memory: \(host)}\nguests:\n\(g)steps:\n  - launch: {td: vm0}\n  - tdh.mr.finalize: {td: vm0}\n"
        let snp = "name: bench\nmachine: {arch: x86-snp, memory: \(host)}\nguests:\n\(g)steps:\n  - workload: {kind: guest-boot, guest: vm0}\n"
        let cca = "name: bench\nmachine: {arch: arm64-cca, memory: \(host)}\nguests:\n\(g)steps:\n  - realm-launch: {realm: vm0}\n"
        func run(_ yaml: String, touch: Bool = false) throws -> Double {
            var m = try Runner.run(try Scenario.load(yaml: yaml, file: "<bench>")).machine
            var rng = SeededGenerator(seed: 23)
            // The platform's type once: a copy of the platform alive across the call would
            // make every change to it copy its tables.
            let platform = type(of: m.platform)
            let t0 = ContinuousClock.now
            for _ in 0..<n {
                let gfn = rng.below(guest >> pageShift)
                let a = platform.guestSetMemory(&m, guest: 0, gfns: gfn..<gfn + 1, encrypt: false)
                let b = platform.guestSetMemory(&m, guest: 0, gfns: gfn..<gfn + 1, encrypt: true)
                precondition(!a.isError && !b.isError, "a conversion failed: \(a), \(b)")
                if touch {
                    let c = CCAPlatform.realmKernelTouch(&m, guest: 0, gpa: gfn << pageShift)
                    precondition(c.kind == .success, "the realm's access failed: \(c)")
                }
            }
            return Double(2 * n) / seconds(ContinuousClock.now - t0)
        }
        var t: [Double] = [], s: [Double] = [], c: [Double] = []
        for _ in 0..<(quick ? 3 : rounds) {
            if !ccaOnly {
                t.append(try run(tdx))
                s.append(try run(snp))
            }
            c.append(try run(cca, touch: true))
        }
        return (Spread(t), Spread(s), Spread(c))
    }

    /// The PAMT of a 1 TiB TDX host with 64 TDs of 8 GiB, `acceptedFraction` of each TD's
    /// memory accepted (lazily, in 2M units from the bottom) and mapped at 4K: static for all
    /// memory, or dynamic with a page pair per 2M region holding a 4K page in use. Those are
    /// the TDs' accepted pages and KVM's control and S-EPT pages (TDR, six TDCS, a TDVPR,
    /// the PT/PD/PDPT pages mapping the accepted range at 4K), packed 512 to a region.
    static func tdxPAMTMiB(acceptedFraction: Double) -> (static: Double, dynamic: Double) {
        let host: UInt64 = 1 << 40, tds: UInt64 = 64, tdPages: UInt64 = (8 << 30) >> 12
        let units = UInt64((Double(tdPages / 512) * acceptedFraction).rounded(.up)), accepted = units * 512
        func ceilDiv(_ a: UInt64, _ b: UInt64) -> UInt64 { (a + b - 1) / b }
        let septPages = ceilDiv(accepted, 512) + ceilDiv(accepted, 512 * 512) + ceilDiv(accepted, 512 * 512 * 512)
        let metaPages = tds * (septPages + 1 + UInt64(TDXModule.minTDCSPages) + 1)
        let regions = tds * units + ceilDiv(metaPages, 512)
        let mib = { (b: UInt64) in Double(b) / Double(1 << 20) }
        return (mib(TDXPAMTSize.staticBytes(tdmr: host)), mib(TDXPAMTSize.dynamicBytes(tdmr: host, maxPA: host, regions: regions)))
    }

    /// User faults and unmaps per second: a write fault (do_anonymous_page: a new folio, its
    /// PTE) then MADV_DONTNEED (the PTE zapped, the folio freed) of a random 4K page of a
    /// 64 GiB private anonymous VMA, on an SME host's user MM; each fault and each unmap is
    /// one operation. The PTE tables stay, as zap_page_range leaves them.
    static func userFaultOps(quick: Bool) -> Double {
        var m = UserMM(ram: [(1 << 30)..<(2 << 30)], memEncrypt: true)
        m.addProcess("bench")
        guard case .mapped(let base) = m.mmap(process: 0, MmapRequest(len: 64 << 30, prot: UserProt(read: true, write: true))) else {
            preconditionFailure("the bench's mmap failed")
        }
        var rng = SeededGenerator(seed: 19)
        let n = quick ? 200_000 : 2_000_000
        let t0 = ContinuousClock.now
        for _ in 0..<n {
            let va = base + rng.below(16 << 20) << 12
            _ = m.handleFault(process: 0, addr: va, write: true)
            _ = m.madviseDontneed(process: 0, addr: va, len: 4096)
        }
        let t = seconds(ContinuousClock.now - t0)
        precondition(m.stats.faults == UInt64(n) && m.allocatedPages == 0, "the fault cycle leaked pages")
        return Double(2 * n) / t
    }

    /// Explorer states per second on seed 003's swap race scaled up: four CPUs, two pages
    /// each mapped back from swap by a parent and its forked child, under v6.1-lock, with
    /// the tag restore in 64 steps (16 quick): 1,547,041 states (184,225), explored whole.
    static func exploreStates(quick: Bool) throws -> Double {
        let yaml = """
            name: scaled swap race
            machine: {arch: arm64, cpus: 4, mte: true, mte-restore-steps: \(quick ? 16 : 64), e820: "BIOS-e820: [mem 0x0000000040000000-0x000000007fffffff] usable"}
            host: {mte-sync: v6.1-lock}
            steps:
              - mmap: {vma: buf, pages: 2, prot-mte: true}
              - user-store-tags: {vma: buf, page: 0, tag: 6}
              - user-store-tags: {vma: buf, page: 1, tag: 7}
              - fork: {}
              - swap_writepage: {vma: buf, page: 0}
              - swap_writepage: {vma: buf, page: 1}
            threads:
              - - set_pte_at: {vma: buf, page: 0}
              - - set_pte_at: {vma: buf.child, page: 0}
              - - set_pte_at: {vma: buf, page: 1}
              - - set_pte_at: {vma: buf.child, page: 1}
            assert:
              - metric: {mte_stale_maps: "== 0"}
            """
        let s = try Scenario.load(yaml: yaml, file: "<bench>")
        var options = Explorer.Options()
        options.maxStates = 2_000_000
        let t0 = ContinuousClock.now
        let r = try Explorer.explore(s, options: options)
        let t = seconds(ContinuousClock.now - t0)
        precondition(r.violation == nil && r.limited == nil && r.states == (quick ? 184_225 : 1_547_041), "the space was not explored whole")
        return Double(r.states) / t
    }

    /// Seconds to the counterexample of examples/explore-mte-swap-race.yaml under v5.14.
    static func mteRaceFound() throws -> Double {
        let yaml = """
            name: race
            machine: {arch: arm64, cpus: 2, mte: true, e820: "BIOS-e820: [mem 0x0000000040000000-0x000000007fffffff] usable"}
            host: {mte-sync: v5.14}
            steps:
              - mmap: {vma: buf, pages: 1, prot-mte: true}
              - user-store-tags: {vma: buf, page: 0, tag: 6}
              - fork: {}
              - swap_writepage: {vma: buf, page: 0}
              - mmap: {vma: other, pages: 1}
              - user-load: {vma: other, page: 0, tag: 0}
            threads:
              - - set_pte_at: {vma: buf, page: 0}
              - - set_pte_at: {vma: buf.child, page: 0}
            assert:
              - metric: {mte_stale_maps: "== 0"}
            """
        let t0 = ContinuousClock.now
        let r = try Explorer.explore(try Scenario.load(yaml: yaml, file: "<bench>"))
        precondition(r.counterexample?.count == 7, "the race was not found")
        return seconds(ContinuousClock.now - t0)
    }

    /// The speedup of a sweep of 32 short SNP runs on two threads over one: `rounds`
    /// interleaved pairs, after a warm-up pair.
    static func sweepSpeedup(quick: Bool) throws -> Spread {
        let scenario = """
            name: sweep-bench
            machine: {arch: x86-snp, memory: 8G}
            guests:
              - {name: vm0, asid: 1, memory: 1G, placement: {pa: 0x100000000}}
            steps:
              - workload: {kind: guest-boot, guest: vm0}
              - workload: {kind: adversarial-flip, guest: vm0, operations: \(quick ? 1000 : 4000)}
            """
        let matrix = try SweepMatrix(yaml: "scenarios: [s.yaml]\naxes:\n  seed: [\((1...32).map(String.init).joined(separator: ", "))]\n",
                                     file: "<bench>") { _ in scenario }
        func time(_ jobs: Int) throws -> Double {
            let t0 = ContinuousClock.now
            try SweepCommand.runAll(matrix.runs, matrix: matrix, jobs: jobs) { _, _ in }
            return seconds(ContinuousClock.now - t0)
        }
        _ = (try time(1), try time(2))
        var xs: [Double] = []
        for _ in 0..<rounds { xs.append(try time(1) / time(2)) }
        return Spread(xs)
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
    static func child(_ worker: String, quick: Bool) throws -> [Double] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CommandLine.arguments[0].contains("/") ? CommandLine.arguments[0] : "/proc/self/exe")
        p.executableURL = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        p.arguments = ["bench", "--worker", worker] + (quick ? ["--quick"] : [])
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let values = String(decoding: data, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Double($0) }
        guard p.terminationStatus == 0, !values.isEmpty else { throw CLIError("bench worker \(worker) failed") }
        return values
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
        case "scale":
            // Seconds, then resident MiB, of one run.
            let s = try snpScenario(hostMemory: "1T", guests: 64, guestMemory: 8 << 30, flips: quick ? 200_000 : 10_000_000, seed: 4)
            let t0 = ContinuousClock.now
            let r = try Runner.run(s)
            let t = seconds(ContinuousClock.now - t0)
            return withExtendedLifetime(r) { String(format: "%.2f %.1f", t, rssMiB()) }
        default:
            throw CLIError("unknown bench worker \(name)")
        }
    }
}

func fmt(_ v: Double) -> String {
    v >= 1000 ? String(format: "%.0f", v) : v >= 10 ? String(format: "%.1f", v) : String(format: "%.3f", v)
}
