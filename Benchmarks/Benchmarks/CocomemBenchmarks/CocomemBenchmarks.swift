import Benchmark
import Hardware
import HostKernel
import PageTables

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

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .mallocCountTotal], maxDuration: .seconds(2))

    // Translate random addresses through a 1 TiB direct map of 1G leaves.
    Benchmark("translate_1TiB_direct_map", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let kernel = try Kernel(memory: PhysicalMemory.pc(size: 1 << 40))
        var stream = Stream(x: 1)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let va = kernel.layout.pageOffset + (stream.next() % ((1 << 40) - (1 << 20))) + (1 << 20)
            blackHole(kernel.pageTable.translate(VirtAddr(va & ~0xfff)))
        }
    }

    // set_memory_decrypted then set_memory_encrypted on random 4K pages, splits included.
    Benchmark("cpa_dec_enc_4k_64GiB", configuration: .init(scalingFactor: .kilo)) { benchmark in
        var kernel = try Kernel(memory: PhysicalMemory.pc(size: 64 << 30))
        var stream = Stream(x: 2)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let pa = ((stream.next() % ((64 << 30) - (1 << 20))) + (1 << 20)) & ~0xfff
            let va = kernel.layout.pageOffset + pa
            blackHole(try kernel.setMemoryDecrypted(va, numpages: 1))
            blackHole(try kernel.setMemoryEncrypted(va, numpages: 1))
        }
    }
}
