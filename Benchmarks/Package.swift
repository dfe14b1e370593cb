// swift-tools-version: 6.1
// Micro-benchmarks for cocomem (ordo-one/benchmark). Run from this folder:
//   swift package benchmark
import PackageDescription

let package = Package(
    name: "cocomem-benchmarks",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(name: "cocomem", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "CocomemBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "PageTables", package: "cocomem"),
                .product(name: "Hardware", package: "cocomem"),
                .product(name: "HostKernel", package: "cocomem"),
                .product(name: "Simulation", package: "cocomem"),
            ],
            path: "Benchmarks/CocomemBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]),
    ]
)
