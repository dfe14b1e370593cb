import Benchmark
import Hardware
import HostKernel
import PageTables
import Simulation

/// A seeded SplitMix64 stream, so every run walks the same addresses.
struct Stream {
    var x: UInt64
    mutating func next() -> UInt64 {
        x &+= 0x9e37_79b9_7f4a_7c15
        var z = x
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

/// Micro-benchmarks for the hot paths `cocomem bench` reports as figures. Thresholds live in
/// Thresholds/ (swift package benchmark thresholds update); `swift package benchmark
/// thresholds check` fails when a figure regresses past them.
let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock, .mallocCountTotal], maxDuration: .seconds(2),
        thresholds: [.wallClock: .init(relative: [.p90: 35]), .mallocCountTotal: .init(relative: [.p90: 10])])

    // Translate random addresses through a fragmented 1 TiB direct map (one 1G leaf in 16
    // split to 2M, one 2M in 8 of those split to 4K, compact tables as users get them), then
    // the SNP host-write check: walk_ratio's model side.
    Benchmark("translate_check_1TiB", configuration: .init(scalingFactor: .kilo)) { benchmark in
        var kernel = try Kernel(memory: PhysicalMemory.pc(size: 1 << 40))
        for g in stride(from: UInt64(1), to: 1024, by: 16) {
            for m in stride(from: UInt64(0), to: 512, by: 8) {
                _ = try kernel.setMemory4K(kernel.layout.pageOffset + g << 30 + m << 21 + 0x3000, numpages: 1)
            }
        }
        let rmp = RMP(end: 1 << 40)
        var stream = Stream(x: 1)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let va = kernel.layout.pageOffset + (1 << 20) + (stream.next() % ((1 << 40) - (2 << 20))) & ~0xfff
            if let (pa, leaf) = kernel.pageTable.translate(VirtAddr(va)) {
                blackHole(rmp.hostAccess(spa: pa.rawValue, write: true, mappingSize: leaf.size))
            }
        }
    }

    // Software TLB hits (tlb_hit_ratio's model side).
    Benchmark("soft_tlb_hit", configuration: .init(scalingFactor: .mega)) { benchmark in
        var tlb = SoftTLB()
        for i in 0..<256 { tlb.fill(UInt64(i) << 12, pa: UInt64(i) << 21, size: .size4K) }
        var stream = Stream(x: 2)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { blackHole(tlb.lookup((stream.next() & 0xff) << 12)) }
    }

    // set_memory_decrypted then set_memory_encrypted on random 4K pages, splits included.
    Benchmark("cpa_dec_enc_4k_64GiB", configuration: .init(scalingFactor: .kilo)) { benchmark in
        var kernel = try Kernel(memory: PhysicalMemory.pc(size: 64 << 30))
        var stream = Stream(x: 3)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let va = kernel.layout.pageOffset + ((stream.next() % ((64 << 30) - (2 << 20))) + (1 << 20)) & ~0xfff
            blackHole(try kernel.setMemoryDecrypted(va, numpages: 1))
            blackHole(try kernel.setMemoryEncrypted(va, numpages: 1))
        }
    }

    // Every 2M region of a 64 GiB direct map split to 4K: guards bytes_per_split_2m (compact
    // tables cost 56 bytes a split, dense ones 4096: 2 MiB against 128 MiB of peak resident memory).
    Benchmark("split_every_2m_64GiB", configuration: .init(
        metrics: [.peakMemoryResident], maxDuration: .seconds(2), maxIterations: 5,
        thresholds: [.peakMemoryResident: .init(relative: [.p90: 25])])
    ) { benchmark in
        var kernel = try Kernel(memory: PhysicalMemory.pc(size: 64 << 30), config: KernelConfig(gbpages: false))
        benchmark.startMeasurement()
        for region in UInt64(1)..<32768 { blackHole(try kernel.setMemory4K(kernel.layout.pageOffset + region << 21, numpages: 1)) }
    }

    // A 4 TiB host booted with 64 SNP guests of 16 GiB launched and accepted: guards
    // rss_16t_256g_mib at a quarter of its size.
    Benchmark("boot_4TiB_64_guests", configuration: .init(
        metrics: [.peakMemoryResident], maxDuration: .seconds(5), maxIterations: 3,
        thresholds: [.peakMemoryResident: .init(relative: [.p90: 25])])
    ) { benchmark in
        var yaml = "name: bench\nmachine: {arch: x86-snp, memory: 4T}\nguests:\n"
        for g in 0..<64 { yaml += "  - {name: vm\(g), asid: \(g + 1), memory: 16G, placement: {pa: \((4 << 30) + g * (16 << 30))}}\n" }
        yaml += "steps:\n"
        for g in 0..<64 { yaml += "  - workload: {kind: guest-boot, guest: vm\(g)}\n" }
        benchmark.startMeasurement()
        let s = try Scenario.load(yaml: yaml, file: "bench")
        var m = try s.boot()
        for step in s.steps { blackHole(try m.run(step)) }
        blackHole(m)
    }

    // One 4K guest page assigned in every 2M region of 64 GiB: 32,768 RMP chunks. Guards the
    // RMP's storage: a flag byte per 4K entry (about 17 MiB of chunks here) against the
    // 16-byte entries it replaced (256 MiB).
    Benchmark("rmp_4k_every_2m_64GiB", configuration: .init(
        metrics: [.peakMemoryResident], maxDuration: .seconds(2), maxIterations: 5,
        thresholds: [.peakMemoryResident: .init(relative: [.p90: 25])])
    ) { benchmark in
        var rmp = RMP(end: 65 << 30)
        benchmark.startMeasurement()
        for region in UInt64(1)..<32769 {
            blackHole(rmp.rmpupdate(spa: region << 21 + 0x5000, RMPUpdate(gpa: region << 21, assigned: true, asid: 1)))
        }
        blackHole(rmp)
    }

    // Page-state changes of random 4K pages of an 8 GiB SNP guest through KVM.
    Benchmark("psc_4k_8GiB_guest", configuration: .init(scalingFactor: .kilo)) { benchmark in
        // The guest's own set_memory_decrypted/encrypted (adversarial-flip), one per iteration.
        let yaml = """
            name: bench
            seed: 4
            machine: {arch: x86-snp, memory: 16G}
            guests: [{name: vm0, asid: 1, memory: 8G, placement: {pa: 0x100000000}}]
            steps:
              - workload: {kind: guest-boot, guest: vm0}
              - workload: {kind: adversarial-flip, guest: vm0, operations: \(benchmark.scaledIterations.count)}
            """
        let s = try Scenario.load(yaml: yaml, file: "bench")
        var m = try s.boot()
        blackHole(try m.run(s.steps[0]))
        benchmark.startMeasurement()
        blackHole(try m.run(s.steps[1]))
    }
}
