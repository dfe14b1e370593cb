// swift-tools-version: 6.1
// cocomem: an executable model of memory management on confidential-computing hardware.
import Foundation
import PackageDescription

/// Debug builds compile each target as one whole module (`-wmo`, code generation on every
/// core): one frontend job per target, where batch mode runs a job per core plus one that
/// emits the module, each parsing and type-checking the target again (the emitting job also
/// expands every swift-testing macro again). On two cores a fresh clone's `swift test` took
/// 2 min 36 s to 2 min 51 s instead of 2 min 55 s to 3 min 6 s: the build 190 to 208 s of CPU
/// instead of 265 to 274 s, the test run 35 s of CPU instead of about 50 s (PageTables and
/// HardwareCore optimized across their files; docs/PERFORMANCE.md, session 20).
/// The price is the incremental build: an edit rebuilds its whole target and every target
/// above it. `COCOMEM_INCREMENTAL=1` builds in batch mode, incrementally, as SwiftPM does by
/// default (switching can rebuild every target once). The driver says "remark:
/// Incremental compilation has been disabled" once per target: that is this setting.
let wholeModule = Context.environment["COCOMEM_INCREMENTAL"] == "1"
    ? [] : ["-wmo", "-num-threads", "\(ProcessInfo.processInfo.activeProcessorCount)", "-disable-batch-mode"]
/// A target's settings in debug builds: whole-module, and optimized where the tests need it.
func debug(optimized: Bool = false) -> [SwiftSetting] {
    let flags = (optimized ? ["-O"] : []) + wholeModule
    return flags.isEmpty ? [] : [.unsafeFlags(flags, .when(configuration: .debug))]
}

/// The architectures' folders in Sources/Hardware that build in the `Hardware` target, not in
/// the optimized `HardwareCore`: a new architecture's folder goes here.
let unoptimizedHardware = ["CCA", "TDX", "S390", "SEV", "MTE"]

let package = Package(
    name: "cocomem",
    platforms: [.macOS(.v14)],
    products: [
        // Every layer behind one import, for programs that embed the model.
        .library(name: "Cocomem", targets: ["Cocomem"]),
        .library(name: "PageTables", targets: ["PageTables"]),
        .library(name: "Hardware", targets: ["Hardware", "HardwareCore"]),
        .library(name: "HostKernel", targets: ["HostKernel"]),
        .library(name: "Hypervisor", targets: ["Hypervisor"]),
        .library(name: "GuestKernel", targets: ["GuestKernel"]),
        .library(name: "Simulation", targets: ["Simulation"]),
        .library(name: "Reports", targets: ["Reports"]),
        .executable(name: "cocomem", targets: ["cocomem"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // Layer 0: addresses, descriptors, the radix page table and its walker.
        // Optimized in debug builds too: every test and `cocomem check` walks these tables
        // after each step, and unoptimized generic walks made the test suite CPU-bound.
        .target(name: "PageTables", swiftSettings: debug(optimized: true)),
        // Layer 1: physical memory (e820), CPUs and TLBs, each architecture's ownership tables
        // and firmware. One layer, two targets in one folder, for the debug build's sake:
        // HardwareCore (Core/ and SNP/, whose RMP the tests and examples run at terabyte
        // scale) is optimized in debug builds too; Hardware (the `unoptimizedHardware`
        // folders) is not, and re-exports HardwareCore, so the layers above import only
        // Hardware. Optimizing those folders cost about 20 s of CPU per clean build (measured
        // in batch mode, before `debug()`), and no test needs it.
        .target(
            name: "HardwareCore", dependencies: ["PageTables"], path: "Sources/Hardware",
            exclude: unoptimizedHardware + ["Hardware.swift"],
            swiftSettings: debug(optimized: true)),
        .target(
            name: "Hardware", dependencies: ["HardwareCore", "PageTables"], path: "Sources/Hardware",
            exclude: ["Core", "SNP"], swiftSettings: debug()),
        // Layer 2: the host kernel: direct map, change_page_attr, vmalloc aliases.
        .target(name: "HostKernel", dependencies: ["Hardware", "PageTables"], swiftSettings: debug()),
        // Layer 3: KVM (VMs, memory attributes, guest_memfd, stage-2 tables) and one backend per
        // architecture (SNP/: launch, PSC, RMP faults).
        .target(name: "Hypervisor", dependencies: ["HostKernel", "Hardware", "PageTables"], swiftSettings: debug()),
        // Layer 3, beside Hypervisor: a guest's own kernel (its direct map through the shared
        // change_page_attr engine) and each architecture's conversion protocol.
        .target(name: "GuestKernel", dependencies: ["HostKernel", "Hardware", "PageTables"], swiftSettings: debug()),
        // Machine, scenarios, workloads, policies, invariants, metrics.
        .target(name: "Simulation", dependencies: ["GuestKernel", "Hypervisor", "HostKernel", "Hardware", "PageTables", "Yams"], swiftSettings: debug()),
        // Renderers: the kernel's own formats (/proc/meminfo, ptdump), tables, JSON, CSV,
        // Chrome traces, SVG/HTML maps.
        .target(name: "Reports", dependencies: ["Simulation", "GuestKernel", "HostKernel", "Hardware", "PageTables"], swiftSettings: debug()),
        // The library's front door: re-exports every layer.
        .target(name: "Cocomem", dependencies: ["Reports", "Simulation", "GuestKernel", "Hypervisor", "HostKernel", "Hardware", "PageTables"], swiftSettings: debug()),
        // The command line, as a library so tests can drive it.
        .target(
            name: "CocomemCLI",
            dependencies: [
                "Reports", "Simulation", "GuestKernel", "Hypervisor", "HostKernel", "Hardware", "PageTables", "CReference",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ], swiftSettings: debug()),
        .executableTarget(name: "cocomem", dependencies: ["CocomemCLI"], swiftSettings: debug()),
        // The physical-limit reference `cocomem bench` compares the model against.
        .target(name: "CReference", cSettings: [.unsafeFlags(["-O2"])]),

        // `expectEqual`, `expectNotEqual`, `expectTrue`: `#expect` expanded once, not at each
        // of some 2,100 call sites (see Tests/Expectations/Expectations.swift).
        .target(name: "Expectations", path: "Tests/Expectations", swiftSettings: debug()),

        .testTarget(name: "PageTablesTests", dependencies: ["PageTables", "Expectations"], swiftSettings: debug()),
        // The seeded differential tests against the naive per-unit model, apart and optimized
        // in debug too: they compare every unit of a window after every operation, 44 s of
        // CPU unoptimized and under 5 s optimized. Only their two files pay for `-O`: all of
        // PageTablesTests with it took 10 s more CPU to compile.
        .testTarget(name: "PageTablesDifferentialTests", dependencies: ["PageTables", "Expectations"], swiftSettings: debug(optimized: true)),
        .testTarget(name: "HardwareTests", dependencies: ["Hardware", "HardwareCore", "Expectations"], swiftSettings: debug()),
        .testTarget(name: "HostKernelTests", dependencies: ["HostKernel", "Expectations"], swiftSettings: debug()),
        .testTarget(name: "HypervisorTests", dependencies: ["Hypervisor", "Expectations"], swiftSettings: debug()),
        .testTarget(name: "GuestKernelTests", dependencies: ["GuestKernel", "Expectations"], swiftSettings: debug()),
        .testTarget(name: "SimulationTests", dependencies: ["Simulation", "Expectations"], swiftSettings: debug()),
        .testTarget(name: "ReportsTests", dependencies: ["Reports", "Expectations"], swiftSettings: debug()),
        .testTarget(name: "CocomemCLITests", dependencies: ["CocomemCLI", "Expectations"], swiftSettings: debug()),
        .testTarget(name: "CocomemTests", dependencies: ["Cocomem", "Expectations"], swiftSettings: debug()),
    ]
)

// Documentation only, and only when asked: `COCOMEM_DOCS=1 swift package --disable-sandbox
// generate-documentation --target Cocomem`. Every build otherwise compiles the plugin's two
// command programs (Swift-DocC and its preview) before anything else.
if Context.environment["COCOMEM_DOCS"] == "1" {
    package.dependencies.append(.package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"))
}
