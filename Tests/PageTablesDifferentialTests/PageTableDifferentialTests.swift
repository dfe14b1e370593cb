import Foundation
import Testing
@testable import PageTables
import Expectations

/// Seeded differential tests: random map, unmap, protect, forced split and collapse on the
/// real table and on the naive per-unit model; leaves, tables and counters are compared
/// after every operation.
struct PageTableDifferentialTests {
    static let base: UInt64 = 0xffff_8880_0000_0000
    /// Operations per configuration: a quick 2,500 by default (every operation kind many
    /// times over), the full 10,000 or more with COCOMEM_LONG_TESTS=1 (or a number).
    static let operations: Int = {
        guard let v = ProcessInfo.processInfo.environment["COCOMEM_LONG_TESTS"] else { return 2_500 }
        return Int(v).map { max($0, 10_000) } ?? 10_000
    }()

    /// A window of `count` units of `unit`; ops are `unit`-granular.
    struct Config: Sendable, CustomTestStringConvertible {
        let unit: PageSize
        let count: Int
        let seed: UInt64
        /// Splits make compact tables (the default) or dense ones.
        var compact = true
        var testDescription: String { "\(unit) units ×\(count), seed \(seed)\(compact ? "" : ", dense splits")" }
    }

    static let configs: [Config] =
        [1, 2, 3].map { Config(unit: .size4K, count: 2048, seed: $0) }      // 8 MiB: 4K and 2M leaves
        + [Config(unit: .size4K, count: 2048, seed: 4, compact: false)]
        + [11, 12].map { Config(unit: .size2M, count: 2048, seed: $0) }     // 4 GiB: 2M and 1G leaves
        + [Config(unit: .size2M, count: 2048, seed: 13, compact: false)]

    static let attributeChoices: [Attributes] = [
        .pageKernel(encrypted: false), .pageKernel(encrypted: true),
        [.present, .noExecute, .global], Attributes.pageKernel(encrypted: false).with(memoryType: .uncached),
    ]
    static let flagChoices: [Attributes] = [.writable, .present, .noExecute, .global, .encrypted]

    @Test(arguments: configs)
    func randomOperationsAgreeWithNaiveModel(_ config: Config) throws {
        var rng = TestRNG(seed: config.seed)
        var real = PageTable(format: .x86_64)
        real.compactSplits = config.compact
        let naive = NaiveTable(base: Self.base, unit: config.unit, count: config.count)
        let per2M = Int(PageSize.size2M.bytes / config.unit.bytes)
        let aligned = config.unit == .size4K ? per2M : 512  // units in the next size up
        for step in 0..<Self.operations {
            var start = Int.random(in: 0..<config.count, using: &rng)
            if Bool.random(using: &rng) { start = start / aligned * aligned }
            let lengths = [1, Int.random(in: 1...8, using: &rng), aligned, 2 * aligned, Int.random(in: 1...config.count, using: &rng)]
            let length = min(lengths.randomElement(using: &rng)!, config.count - start)
            let range = start..<start + length
            let va = VirtAddr(naive.va(start))
            let bytes = UInt64(length) * config.unit.bytes
            let roll = Int.random(in: 0..<100, using: &rng)
            var what = ""
            switch roll {
            case 0..<35:
                let attrs = Self.attributeChoices.randomElement(using: &rng)!
                var sizes = config.unit == .size4K ? [PageSize.size4K, .size2M, .size1G] : [.size2M, .size1G]
                if Int.random(in: 0..<4, using: &rng) == 0 { sizes.removeLast() }
                let bigPages = config.unit == .size4K ? UInt64(512) : UInt64(512 * 512)
                var pfn = UInt64.random(in: 0..<(1 << 20), using: &rng) * config.unit.pages
                if Int.random(in: 0..<4, using: &rng) != 0 { pfn = pfn / bigPages * bigPages + UInt64(start % aligned) * config.unit.pages }
                what = "map \(range) pfn \(hex(pfn)) \(attrs) \(sizes)"
                try real.map(virt: va, phys: PFN(pfn).physAddr, size: bytes, attributes: attrs, sizes: sizes)
                naive.map(range, pfn: pfn, attributes: attrs, sizes: sizes)
            case 35..<72:
                let flag = Self.flagChoices.randomElement(using: &rng)!
                let set = Bool.random(using: &rng)
                what = "protect \(range) \(set ? "set" : "clear") \(flag)"
                try real.protect(virt: va, size: bytes, set: set ? flag : [], clear: set ? [] : flag)
                naive.protect(range, set: set ? flag : [], clear: set ? [] : flag, force: false)
            case 72..<82:
                what = "unmap \(range)"
                try real.unmap(virt: va, size: bytes)
                naive.unmap(range)
            case 82..<87 where config.unit == .size4K:
                what = "set_memory_4k \(range)"
                try real.protect(virt: va, size: bytes, set: .forced4K, forceSplit: true)
                naive.protect(range, set: .forced4K, clear: [], force: true)
            default:
                what = "collapse \(range)"
                try real.collapse(virt: va, size: bytes)
                naive.collapse(range, sizes: [.size2M, .size1G])
            }
            try compare(real, naive, step: step, what: what)
        }
    }

    func compare(_ real: PageTable, _ naive: NaiveTable, step: Int, what: String) throws {
        let bytes = UInt64(naive.count) * naive.unit.bytes
        var mapped = [Bool](repeating: false, count: naive.count)
        for leaf in try real.leaves(virt: VirtAddr(naive.base), size: bytes) {
            let first = Int((leaf.virt.rawValue - naive.base) / naive.unit.bytes)
            for k in 0..<naive.per(leaf.size) {
                let u = first + k
                mapped[u] = true
                let ok = naive.mapped[u] && naive.size[u] == leaf.size && naive.attrs[u] == leaf.attributes
                    && naive.frame[u] == leaf.descriptor.frame.rawValue + UInt64(k) * naive.unit.pages
                if !ok {
                    Issue.record("step \(step) (\(what)): unit \(u) real \(leaf) naive mapped=\(naive.mapped[u]) size=\(naive.size[u]) frame=\(hex(naive.frame[u])) \(naive.attrs[u])")
                    throw CancellationError()
                }
            }
        }
        if let u = (0..<naive.count).first(where: { naive.mapped[$0] != mapped[$0] }) {
            Issue.record("step \(step) (\(what)): unit \(u) mapped in naive=\(naive.mapped[u]) real=\(mapped[u])")
            throw CancellationError()
        }
        var copy = real
        var tables = TablesVisitor()
        try copy.walk(start: naive.base, size: bytes, &tables)
        expectEqual(tables.found, naive.tables, "step \(step) (\(what)): tables")
        expectEqual(real.leafCounts, naive.leafCounts, "step \(step) (\(what)): leaf counts")
        expectEqual(real.tablePages, naive.tables.count + 1, "step \(step) (\(what)): table pages")
        try real.checkInvariants()
        if tables.found != naive.tables || real.leafCounts != naive.leafCounts { throw CancellationError() }
    }
}

/// The stage-2 primitives and toggle sets against the dense layout: the same seeded stream
/// of faults (installLeaf where nothing maps), zaps and one-flag protects on a compact and a
/// dense table must leave the same leaves, counts and table pages.
struct CompactAgainstDenseTests {
    @Test(arguments: [21, 22, 23] as [UInt64])
    func faultsZapsAndProtectsAgree(_ seed: UInt64) throws {
        var rng = TestRNG(seed: seed)
        var compact = PageTable(format: .x86_64), dense = PageTable(format: .x86_64)
        dense.compactSplits = false
        let blocks: UInt64 = 8, units = blocks * 512  // 16 MiB of 4K units
        let attrs: Attributes = [.present, .writable]
        for step in 0..<PageTableDifferentialTests.operations {
            let u = UInt64.random(in: 0..<units, using: &rng)
            let va = VirtAddr(u << 12)
            var what = ""
            switch Int.random(in: 0..<100, using: &rng) {
            case 0..<45:
                guard compact.lookup(va).map({ !$0.descriptor.isPresentLeaf }) ?? true else { continue }
                let huge = Int.random(in: 0..<8, using: &rng) == 0
                let size: PageSize = huge ? .size2M : .size4K
                let first = huge ? u & ~511 : u
                // Mostly the block's linear frames (the formula), now and then elsewhere.
                let frame = Int.random(in: 0..<6, using: &rng) == 0 ? UInt64.random(in: 1..<(1 << 20), using: &rng) << 9 | (first & 511) : 0x40000 + first
                what = "install \(hex(first << 12)) \(size) frame \(hex(frame))"
                try compact.installLeaf(virt: VirtAddr(first << 12), phys: PFN(frame).physAddr, size: size, attributes: attrs)
                try dense.installLeaf(virt: VirtAddr(first << 12), phys: PFN(frame).physAddr, size: size, attributes: attrs)
            case 45..<75:
                let n = min([1, 3, 512, 700].randomElement(using: &rng)!, units - u)
                what = "zap \(hex(u << 12)) +\(n)"
                try compact.zap(virt: va, size: n << 12)
                try dense.zap(virt: va, size: n << 12)
            default:
                let n = min([1, 2, 9].randomElement(using: &rng)!, units - u)
                let flag: Attributes = Bool.random(using: &rng) ? .encrypted : .noExecute
                let set = Bool.random(using: &rng)
                what = "protect \(hex(u << 12)) +\(n) \(set ? "set" : "clear") \(flag)"
                try compact.protect(virt: va, size: n << 12, set: set ? flag : [], clear: set ? [] : flag)
                try dense.protect(virt: va, size: n << 12, set: set ? flag : [], clear: set ? [] : flag)
            }
            let a = try compact.leaves(virt: VirtAddr(0), size: units << 12), b = try dense.leaves(virt: VirtAddr(0), size: units << 12)
            guard a == b, compact.leafCounts == dense.leafCounts, compact.tablePages == dense.tablePages else {
                Issue.record("seed \(seed) step \(step) (\(what)): compact \(a.count) leaves \(compact.leafCounts) \(compact.tablePages) pages, dense \(b.count) \(dense.leafCounts) \(dense.tablePages)")
                return
            }
            // The count from compact records, whole and over a range that cuts two tables,
            // against the walker's entry-by-entry count and the dense table's.
            let part = VirtAddr((u & ~511) << 12 + 0x3000), partSize: UInt64 = min(0x20_0000, (units << 12) - part.rawValue)
            let whole = try compact.leafCounts(virt: VirtAddr(0), size: units << 12)
            let fast = try compact.leafCounts(virt: part, size: partSize), walked = try compact.walkedLeafCounts(virt: part, size: partSize)
            guard whole == compact.leafCounts, fast == walked, fast == (try dense.leafCounts(virt: part, size: partSize)) else {
                Issue.record("seed \(seed) step \(step) (\(what)): counted \(whole) of \(compact.leafCounts); at \(part) \(fast), walked \(walked)")
                return
            }
            if step % 97 == 0 { try compact.checkInvariants() }
        }
        try compact.checkInvariants()
        try dense.checkInvariants()
        expectTrue(compact.toggles.count > 0)  // the stream did reach toggle sets
    }
}
