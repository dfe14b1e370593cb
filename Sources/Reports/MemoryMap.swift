import Hardware
import HostKernel
import PageTables

/// A picture of physical memory, one row of 512 cells at a time: on a machine of up to 64
/// GiB one cell per 2M region (a row per 1G), coloured by the direct-map leaf that maps it or
/// by who owns it; past 64 GiB one cell per 1G region or larger (at most 1024 rows), coloured
/// by whether it is split to 2M leaves and how much of it to 4K pages, or by how many of its
/// 2M regions hold guest pages.
/// Guests are labelled where their memory starts; each run of cells carries a tooltip. SVG,
/// or HTML around the SVG.
public enum MemoryMap {
    /// What the colours show.
    public enum Coloring: String, CaseIterable, Sendable {
        /// The direct-map leaf size over the region.
        case leafSize = "leaf-size"
        /// Ownership: host private (C-bit set), host shared (C-bit clear), not present, not RAM,
        /// and on SEV-SNP the regions holding pages the RMP assigns to a guest or firmware.
        case ownership
    }

    /// A cell class, its colour and its legend text, in legend order.
    struct Class {
        let color: String
        let label: String
    }

    static let leafClasses = [
        Class(color: "#1b9e77", label: "1G leaf"), Class(color: "#7570b3", label: "2M leaf"),
        Class(color: "#d95f02", label: "split to 4K"), Class(color: "#e7298a", label: "4K, set_memory_4k (never collapses)"),
        Class(color: "#dddddd", label: "not mapped (hole)"),
    ]
    static let ownershipClasses = [
        Class(color: "#4575b4", label: "host private (encrypted)"), Class(color: "#f46d43", label: "host shared (decrypted pages)"),
        Class(color: "#fee090", label: "not present pages"), Class(color: "#dddddd", label: "not mapped (hole)"),
        Class(color: "#762a83", label: "wholly given to a guest or the firmware (RMP-assigned on SEV-SNP)"),
        Class(color: "#e31a1c", label: "mixing guest and host pages (a host write through a 2M or 1G mapping here faults)"),
    ]
    /// Large cells: how much of the cell is split below 1G, and how many of its 2M regions
    /// hold guest pages.
    static let shades = ["#fdd49e", "#fc8d59", "#d7301f", "#7f0000"]
    static let largeLeafClasses = [Class(color: "#1b9e77", label: "1G leaves only"), Class(color: "#7570b3", label: "split to 2M leaves, no 4K pages")]
        + zip(shades, ["25", "50", "75", "100"]).map { Class(color: $0, label: "split to 4K pages: up to \($1)% of it") }
        + [Class(color: "#dddddd", label: "not mapped (hole)")]
    static let largeOwnershipClasses = [Class(color: "#4575b4", label: "no guest pages")]
        + zip(["#d4b9da", "#c994c7", "#dd3497", "#762a83"], ["25", "50", "75", "100"]).map { Class(color: $0, label: "guest pages in up to \($1)% of its 2M regions") }
        + [Class(color: "#dddddd", label: "not mapped (hole)"),
           Class(color: "#e31a1c", label: "holds a 2M region mixing guest and host pages (a host write through a large mapping there faults)")]

    /// Fault marks drawn at most (a cell holds one).
    static let maxMarks = 200

    /// Maps draw up to 4 PiB of RAM (52-bit physical addresses).
    public static let maxRAM: UInt64 = 1 << 52

    /// The bytes one cell stands for when the covered memory ends at `end`: 2M up to 64 GiB,
    /// else 1G doubled until the map has at most 1024 rows of 512 cells.
    public static func cellBytes(end: UInt64) -> UInt64 {
        if end <= 64 << 30 { return PageSize.size2M.bytes }
        var cell = PageSize.size1G.bytes
        while (end + 512 * cell - 1) / (512 * cell) > 1024 { cell <<= 1 }
        return cell
    }

    /// The class of every cell of [0, end of RAM), the classes, and the cell's size.
    /// `details` adds to a cell's tooltip what its class does not say (leaf counts, guest
    /// pages); a cell with details gets a tooltip of its own.
    static func classify(_ kernel: Kernel, ownership: (any HostOwnership)?, coloring: Coloring)
        -> (cells: [UInt8], classes: [Class], cell: UInt64, details: [Int: String]) {
        let end = (kernel.mappedRanges.last!.upperBound + PageSize.size1G.bytes - 1) & ~(PageSize.size1G.bytes - 1)
        let cell = cellBytes(end: end)
        let count = Int((end + 512 * cell - 1) / (512 * cell)) * 512
        if cell == PageSize.size2M.bytes {
            let leaves = (try? kernel.pageTable.leaves(virt: VirtAddr(kernel.layout.pageOffset), size: end - kernel.physOffset)) ?? []
            let hole: UInt8 = coloring == .leafSize ? 4 : 3
            var cells = [UInt8](repeating: hole, count: count)
            // Without memory encryption (arm64) every present page is the host's own.
            let encrypts = kernel.config.isa == .x86_64 && kernel.config.memEncrypt
            for leaf in leaves {
                let pa = kernel.pa(leaf.virt).rawValue
                let first = Int(pa / cell), span = max(1, Int(leaf.size.bytes / cell))
                let a = leaf.attributes
                let cls: UInt8
                switch coloring {
                case .leafSize: cls = leaf.size == .size1G ? 0 : leaf.size == .size2M ? 1 : a.contains(.forced4K) ? 3 : 2
                case .ownership: cls = !a.contains(.present) ? 2 : a.contains(.encrypted) || !encrypts ? 0 : 1
                }
                // A region of 4K pages takes the most notable class among them (the higher index).
                for c in first..<min(first + span, cells.count) { cells[c] = cells[c] == hole ? cls : max(cells[c], cls) }
            }
            guard coloring == .ownership, let ownership else {
                return (cells, coloring == .leafSize ? leafClasses : Array(ownershipClasses.prefix(4)), cell, [:])
            }
            var details: [Int: String] = [:]
            for c in cells.indices {
                let n = ownership.guestPages(inRegionOf: UInt64(c) * 512)
                if n > 0 { cells[c] = n == 512 ? 4 : 5 }
                if n > 0 && n < 512 { details[c] = "\(n) of its 512 pages a guest's or the firmware's" }
            }
            return (cells, ownershipClasses, cell, details)
        }
        // Large cells (1G-aligned, so no leaf crosses one): each cell's leaves counted by size
        // by the page table's own walk, not listed (a 16 TiB map has millions of 4K leaves).
        // A cell with nothing mapped keeps the hole's class.
        var cells = [UInt8](repeating: coloring == .leafSize ? 6 : 5, count: count)
        var details: [Int: String] = [:]
        let regions = cell / PageSize.size2M.bytes
        for c in 0..<count {
            let lo = max(UInt64(c) * cell, kernel.physOffset), hi = min(UInt64(c + 1) * cell, end)
            guard lo < hi, let n = try? kernel.pageTable.leafCounts(virt: kernel.va(PhysAddr(lo)), size: hi - lo) else { continue }
            let split = UInt64(n.size2M) * PageSize.size2M.bytes + UInt64(n.size4K) * PageSize.size4K.bytes
            let mapped = UInt64(n.size1G) * PageSize.size1G.bytes + split
            guard mapped > 0 else { continue }
            if coloring == .leafSize {
                let k4 = UInt64(n.size4K) << 12
                cells[c] = split == 0 ? 0 : k4 == 0 ? 1 : UInt8(2 + min(3, (k4 * 4 - 1) / mapped))
                if split > 0 { details[c] = "\(n.size1G) 1G leaves, \(n.size2M) 2M leaves, \(n.size4K) 4K pages" }
                continue
            }
            // Only a cell holding guest pages gets a tooltip of its own here.
            guard let ownership else { cells[c] = 0; continue }
            let (holding, mixing) = ownership.regionsWithGuestPages(from: UInt64(c) * regions * 512, regions: regions)
            cells[c] = mixing > 0 ? 6 : holding == 0 ? 0 : UInt8(1 + min(3, (UInt64(holding) * 4 - 1) / regions))
            if holding > 0 { details[c] = "guest pages in \(holding) of its \(regions) 2M regions, \(mixing) of them mixing" }
        }
        let classes = coloring == .leafSize ? largeLeafClasses : Array(largeOwnershipClasses.prefix(ownership == nil ? 6 : 7))
        return (cells, classes, cell, details)
    }

    /// A size for labels: `2M`, `1G`, `512G`, `8T`.
    static func size(_ bytes: UInt64) -> String { ByteSize.format(bytes) }

    /// Bytes for the legend: whole GiB exactly, else GiB to one decimal, and below 1 GiB in
    /// MiB, so that one 2M region still shows.
    static func gib(_ bytes: UInt64) -> String {
        if bytes % (1 << 30) == 0 { return "\(bytes >> 30) GiB" }
        if bytes < 1 << 30 { return "\(bytes >> 20) MiB" }
        let tenths = (bytes * 10 + (1 << 29)) >> 30
        return "\(tenths / 10).\(tenths % 10) GiB"
    }

    /// The SVG document. `ownership` is the platform's ownership table (nil for a machine
    /// without one); `guests` are labelled where their memory starts.
    public static func svg(_ kernel: Kernel, ownership: (any HostOwnership)? = nil, coloring: Coloring = .leafSize, title: String,
                           guests: [(name: String, range: Range<UInt64>)] = [], marks: [(pa: UInt64, label: String)] = []) -> String {
        let (cells, classes, cell, details) = classify(kernel, ownership: ownership, coloring: coloring)
        let rows = cells.count / 512, rowBytes = cell * 512
        let cellW = 2, rowH = max(3, min(14, 3000 / max(rows, 1)))
        let left = 130, top = 56, gridW = 512 * cellW, labelW = guests.isEmpty ? 0 : 260
        let legendY = top + rows * rowH + 24
        let height = legendY + (classes.count + (marks.isEmpty ? 0 : 1)) * 20 + 16
        var s = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(left + gridW + 20 + labelW)" height="\(height)" font-family="monospace" font-size="11">
            <title>\(escape(title))</title>
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(left)" y="18" font-size="13">\(escape(title)) — physical memory, one cell per \(size(cell)), one row per \(size(rowBytes)) (\(coloring.rawValue))</text>

            """
        for i in 0..<4 {
            let x = left + i * 128 * cellW
            s += "<text x=\"\(x)\" y=\"\(top - 6)\">+\(i == 0 ? "0" : size(UInt64(i) * 128 * cell))</text><line x1=\"\(x)\" y1=\"\(top - 4)\" x2=\"\(x)\" y2=\"\(top)\" stroke=\"black\"/>\n"
        }
        let labelEvery = max(1, (rows + 63) / 64)
        for r in 0..<rows {
            let y = top + r * rowH
            if r % labelEvery == 0 {
                s += "<text x=\"4\" y=\"\(y + rowH - 1)\">\(hex(UInt64(r) * rowBytes, digits: 12))</text>\n"
            }
            var c = 0
            while c < 512 {
                let cls = cells[r * 512 + c]
                // A run of cells of one class and no details shares one rectangle and tooltip.
                let detail = details[r * 512 + c]
                var e = c + 1
                while detail == nil && e < 512 && cells[r * 512 + e] == cls && details[r * 512 + e] == nil { e += 1 }
                let from = UInt64(r * 512 + c) * cell, to = UInt64(r * 512 + e) * cell
                s += "<rect x=\"\(left + c * cellW)\" y=\"\(y)\" width=\"\((e - c) * cellW)\" height=\"\(rowH - 1)\" fill=\"\(classes[Int(cls)].color)\">"
                s += "<title>[\(hex(from))-\(hex(to))): \(escape(classes[Int(cls)].label))\(detail.map { "; " + $0 } ?? "")</title></rect>\n"
                c = e
            }
        }
        // Faults: a ring on the cell of each (one per cell, the first), its log line as tooltip.
        var marked = Set<Int>()
        for m in marks {
            let c = Int(m.pa / cell)
            guard c < cells.count, marked.count < maxMarks, marked.insert(c).inserted else { continue }
            let cx = left + (c % 512) * cellW + cellW / 2, cy = top + (c / 512) * rowH + rowH / 2
            s += "<circle cx=\"\(cx)\" cy=\"\(cy)\" r=\"\(max(3, rowH / 2))\" fill=\"none\" stroke=\"black\" stroke-width=\"1.5\"><title>\(escape(m.label))</title></circle>\n"
        }
        let shownGuests = guests.prefix(32)
        for g in shownGuests {
            let c = Int(g.range.lowerBound / cell), r = c / 512
            guard r < rows else { continue }
            let x = left + (c % 512) * cellW, y = top + r * rowH
            s += "<line x1=\"\(x)\" y1=\"\(y)\" x2=\"\(x)\" y2=\"\(y + rowH - 1)\" stroke=\"black\" stroke-width=\"2\"/>"
            s += "<text x=\"\(left + gridW + 8)\" y=\"\(y + rowH - 1)\">\(escape(g.name)) [\(hex(g.range.lowerBound))-\(hex(g.range.upperBound)))</text>\n"
        }
        if guests.count > shownGuests.count {
            s += "<text x=\"\(left + gridW + 8)\" y=\"\(legendY)\">and \(guests.count - shownGuests.count) more guests</text>\n"
        }
        if !marks.isEmpty {
            let y = legendY + classes.count * 20
            s += "<circle cx=\"\(left + 7)\" cy=\"\(y + 7)\" r=\"5\" fill=\"none\" stroke=\"black\" stroke-width=\"1.5\"/>"
            s += "<text x=\"\(left + 20)\" y=\"\(y + 11)\">host fault: \(marks.count) recorded, \(marked.count) cells marked (hover for the log line)</text>\n"
        }
        for (i, cls) in classes.enumerated() {
            let y = legendY + i * 20
            let n = UInt64(cells.filter { $0 == UInt8(i) }.count)
            s += "<rect x=\"\(left)\" y=\"\(y)\" width=\"14\" height=\"14\" fill=\"\(cls.color)\" stroke=\"black\" stroke-width=\"0.5\"/>"
            s += "<text x=\"\(left + 20)\" y=\"\(y + 11)\">\(escape(cls.label)): \(gib(n * cell))</text>\n"
        }
        return s + "</svg>\n"
    }

    /// An HTML page with the map, the summary and the legend.
    public static func html(svg: String, summary: String, title: String) -> String {
        """
        <!DOCTYPE html>
        <html><head><meta charset="utf-8"><title>\(escape(title))</title>
        <style>body{font-family:sans-serif;margin:2em} pre{background:#f6f6f6;padding:1em}</style></head>
        <body><h1>\(escape(title))</h1>
        \(svg)
        <h2>Summary</h2><pre>\(escape(summary))</pre>
        </body></html>

        """
    }

    /// User text in XML: the five markup characters as entities, and characters XML 1.0
    /// cannot hold at all (controls other than tab and newlines, unpaired surrogates cannot
    /// occur in a Swift string, U+FFFE/U+FFFF) as U+FFFD.
    static func escape(_ s: String) -> String {
        s.escaped { u in
            switch u {
            case "&": "&amp;"
            case "<": "&lt;"
            case ">": "&gt;"
            case "\"": "&quot;"
            case "'": "&apos;"
            case "\t", "\n", "\r": nil
            case _ where u.value < 0x20 || u.value == 0xfffe || u.value == 0xffff: "\u{fffd}"
            default: nil
            }
        }
    }
}


