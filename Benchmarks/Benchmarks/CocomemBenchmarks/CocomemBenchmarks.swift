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

    // Translate random addresses through a 1 TiB direct map of 1G leaves, then the SNP
    // host-write check (the model's walk figure without the fragmentation).
    Benchmark("translate_check_1TiB", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let kernel = try Kernel(memory: PhysicalMemory.pc(size: 1 << 40))
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

    // Page-state changes of random 4K pages of an 8 GiB SNP guest through KVM.
    Benchmark("psc_4k_8GiB_guest", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let yaml = """
            name: bench
            machine: {arch: x86-snp, memory: 16G}
            guests: [{name: vm0, asid: 1, memory: 8G, placement: {pa: 0x100000000}}]
            steps: []
            """
        var m = try Scenario.load(yaml: yaml, file: "bench").boot()
        _ = m.guestBoot(0)
        var stream = Stream(x: 4)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let gfn = stream.next() % ((8 << 30) >> 12)
            blackHole(m.pageStateChange(guest: 0, gfn: gfn, toPrivate: !m.isPrivate(guest: 0, gfn: gfn)))
        }
    }
}
