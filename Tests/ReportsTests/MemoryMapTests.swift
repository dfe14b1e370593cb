import Foundation
import Testing
import Hardware
import HostKernel
import PageTables
@testable import Reports
import Simulation
import Expectations

/// Maps that scale: a cell per 2M up to 64 GiB, a cell per 1G (or larger) past it, with the
/// scale in the title, legends in GiB, the classes counted exactly, a class for 2M regions
/// that mix guest and host pages, guests labelled, and a tooltip on every run of cells.
struct MemoryMapTests {
    /// The legend's counts, by label.
    func legend(_ svg: String) -> [String: String] {
        var out: [String: String] = [:]
        for line in svg.split(separator: "\n") where line.contains("stroke-width=\"0.5\"/><text") {
            guard let text = line.split(separator: ">").dropFirst(2).first?.split(separator: "<").first else { continue }
            // The count follows the last ": " (labels may hold one).
            if let colon = text.range(of: ": ", options: .backwards) {
                out[String(text[..<colon.lowerBound])] = String(text[colon.upperBound...])
            }
        }
        return out
    }

    @Test func sixtyFourGiBIsDrawnInTwoMegabyteCells() throws {
        var k = try Kernel(memory: PhysicalMemory.pc(size: 64 << 30))
        _ = try k.setMemory4K(k.layout.pageOffset + (5 << 30) + 0x3000, numpages: 1)
        let svg = MemoryMap.svg(k, title: "t")
        expectTrue(svg.contains("one cell per 2M, one row per 1G (leaf-size)"))
        // 64G of RAM from 1M: the first 2M in 4K pages, 511 2M leaves, 62 1G leaves, the one
        // split 1G region as 511 2M leaves and one split 2M.
        #expect(legend(svg) == ["1G leaf": "62 GiB", "2M leaf": "2.0 GiB", "split to 4K": "2 MiB",
                                "4K, set_memory_4k (never collapses)": "2 MiB", "not mapped (hole)": "0 GiB"])
        #expect(svg.contains("<title>[0x140000000-0x140200000): 2M leaf</title>") || svg.contains("2M leaf</title>"))
    }

    @Test func sixteenTiBIsDrawnInGigabyteCellsByHowMuchIsSplit() throws {
        var k = try Kernel(memory: PhysicalMemory.pc(size: 16 << 40))
        // Region 100: a single 2M split further to 4K; regions 200 and 201: 2M leaves only
        // (a read-only 2M at each end of a 4M range across them).
        _ = try k.setMemory4K(k.layout.pageOffset + (100 << 30) + 0x3000, numpages: 1)
        _ = try k.setMemoryRO(k.layout.pageOffset + (201 << 30) - (2 << 20), numpages: 1024)
        let svg = MemoryMap.svg(k, title: "big")
        expectEqual(MemoryMap.cellBytes(end: 16 << 40), 1 << 30)
        expectTrue(svg.contains("one cell per 1G, one row per 512G (leaf-size)"))
        let l = legend(svg)
        // Region 0 (ISA 4K and 2M leaves) and region 100 are split, each with 2M of 4K pages.
        expectEqual(l["1G leaves only"], "16380 GiB")
        expectEqual(l["split to 4K pages: up to 25% of it"], "2 GiB")
        expectEqual(l["not mapped (hole)"], "0 GiB")
        expectEqual(l["split to 2M leaves, no 4K pages"], "2 GiB")
        expectTrue(svg.contains("<title>[0x3240000000-0x3280000000): split to 2M leaves, no 4K pages; 0 1G leaves, 512 2M leaves, 0 4K pages</title>"))
        expectEqual(l.count, 7)
        // The tooltips of the split cells count their leaves.
        expectTrue(svg.contains("<title>[0x1900000000-0x1940000000): split to 4K pages: up to 25% of it; 0 1G leaves, 511 2M leaves, 512 4K pages</title>"))
        expectTrue(svg.contains("<title>[0x0-0x40000000): split to 4K pages: up to 25% of it; 0 1G leaves, 511 2M leaves, 512 4K pages</title>"))
        let rows = svg.split(separator: "\n").filter { $0.hasPrefix("<text x=\"4\"") }.count
        expectEqual(rows, 32)  // 16 TiB in rows of 512G
        expectEqual(MemoryMap.cellBytes(end: 4 << 50), 8 << 30)  // 4 PiB: 8G cells, 1024 rows
    }

    /// A 2M region half given to a guest: the map's own class for the seed's hazard.
    @Test func aRegionMixingGuestAndHostPagesHasItsOwnColour() throws {
        let k = try Kernel(memory: PhysicalMemory.pc(size: 4 << 30))
        var rmp = RMP(end: 4 << 30)
        expectEqual(rmp.rmpupdate(spa: 0x4000_0000, RMPUpdate(gpa: 0, assigned: true, asid: 1)), .success)
        expectEqual(rmp.rmpupdate(spa: 0x4020_0000, RMPUpdate(gpa: 0x20_0000, assigned: true, size: .size2M, asid: 1)), .success)
        let svg = MemoryMap.svg(k, ownership: rmp, coloring: .ownership, title: "mixed", guests: [("vm0", 0x4000_0000..<0x4040_0000)])
        let l = legend(svg)
        expectEqual(l["mixing guest and host pages (a host write through a 2M or 1G mapping here faults)"], "2 MiB")
        expectTrue(svg.contains("<title>[0x40000000-0x40200000): mixing guest and host pages (a host write through a 2M or 1G mapping here faults); 1 of its 512 pages a guest's or the firmware's</title>"))
        expectTrue(svg.contains("<title>[0x40200000-0x40400000): wholly given to a guest or the firmware"))
        expectTrue(svg.contains(">vm0 [0x40000000-0x40400000)</text>"))
    }

    /// The two example maps whose PNGs are in docs/ (map-64g*.png, map-16t*.png): the region
    /// counts behind each colour, exactly, in both colourings. Run as `cocomem check` runs them
    /// (invariants after every step), and passing: `everyExamplePassesCheck` leaves map-16t here.
    @Test func theExampleMapsInDocsCountTheirRegions() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        func maps(_ name: String) throws -> (leaf: [String: String], owner: [String: String], title: String) {
            let file = root.appendingPathComponent("examples/\(name).yaml").path
            let r = try Runner.run(try Scenario.load(yaml: try String(contentsOfFile: file, encoding: .utf8), file: file), options: RunOptions(checkInvariants: true))
            expectTrue(r.passed)
            let m = r.machine, guests = m.guests.map { (name: $0.name, range: $0.placement..<$0.placement + $0.memory) }
            let leaf = MemoryMap.svg(m.kernel, ownership: m.platform.ownership, coloring: .leafSize, title: name, guests: guests)
            let owner = MemoryMap.svg(m.kernel, ownership: m.platform.ownership, coloring: .ownership, title: name, guests: guests)
            expectTrue(leaf.contains(">vm0 [0x"))
            return (legend(leaf), legend(owner), String(leaf.split(separator: "\n")[3]))
        }
        let g64 = try maps("map-64g")
        expectTrue(g64.title.contains("one cell per 2M, one row per 1G"))
        #expect(g64.leaf == ["1G leaf": "49 GiB", "2M leaf": "12.9 GiB", "split to 4K": "2 MiB",
                             "4K, set_memory_4k (never collapses)": "2.1 GiB", "not mapped (hole)": "0 GiB"])
        #expect(g64.owner == ["host private (encrypted)": "50.0 GiB", "host shared (decrypted pages)": "0 GiB", "not present pages": "0 GiB",
                              "not mapped (hole)": "0 GiB", "wholly given to a guest or the firmware (RMP-assigned on SEV-SNP)": "11.9 GiB",
                              "mixing guest and host pages (a host write through a 2M or 1G mapping here faults)": "2.1 GiB"])
        let t16 = try maps("map-16t")
        expectTrue(t16.title.contains("one cell per 1G, one row per 512G"))
        #expect(t16.leaf == ["1G leaves only": "15827 GiB", "split to 2M leaves, no 4K pages": "0 GiB",
                             "split to 4K pages: up to 25% of it": "535 GiB", "split to 4K pages: up to 50% of it": "18 GiB",
                             "split to 4K pages: up to 75% of it": "4 GiB", "split to 4K pages: up to 100% of it": "0 GiB",
                             "not mapped (hole)": "0 GiB"])
        #expect(t16.owner == ["no guest pages": "15827 GiB", "guest pages in up to 25% of its 2M regions": "0 GiB",
                              "guest pages in up to 50% of its 2M regions": "0 GiB", "guest pages in up to 75% of its 2M regions": "0 GiB",
                              "guest pages in up to 100% of its 2M regions": "0 GiB", "not mapped (hole)": "0 GiB",
                              "holds a 2M region mixing guest and host pages (a host write through a large mapping there faults)": "557 GiB"])
    }
}
