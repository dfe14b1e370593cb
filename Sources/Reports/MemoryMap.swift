import Hardware
import HostKernel
import PageTables

/// A picture of physical memory: one cell per 2M region, one row per 1G, coloured by the
/// direct-map leaf that maps the region or by who owns it; SVG, or HTML around the SVG.
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
        Class(color: "#762a83", label: "pages given to a guest or the firmware (RMP-assigned on SEV-SNP)"),
    ]

    /// The most RAM a map draws (one cell per 2M: 32M cells); larger maps are refused
    /// before the run (docs/limits.md).
    public static let maxRAM: UInt64 = 64 << 40

    /// The class index of every 2M region of [0, end of RAM).
    static func classify(_ kernel: Kernel, ownership: (any HostOwnership)?, coloring: Coloring) -> [UInt8] {
        let end = (kernel.mappedRanges.last!.upperBound + PageSize.size1G.bytes - 1) & ~(PageSize.size1G.bytes - 1)
        let hole: UInt8 = coloring == .leafSize ? 4 : 3
        var cells = [UInt8](repeating: hole, count: Int(end / PageSize.size2M.bytes))
        let leaves = (try? kernel.pageTable.leaves(virt: VirtAddr(kernel.layout.pageOffset), size: end - kernel.physOffset)) ?? []
        // Without memory encryption (arm64) every present page is the host's own.
        let encrypts = kernel.config.isa == .x86_64 && kernel.config.memEncrypt
        for leaf in leaves {
            let pa = kernel.pa(leaf.virt).rawValue
            let first = Int(pa / PageSize.size2M.bytes)
            let count = max(1, Int(leaf.size.bytes / PageSize.size2M.bytes))
            let a = leaf.attributes
            let cls: UInt8
            switch coloring {
            case .leafSize: cls = leaf.size == .size1G ? 0 : leaf.size == .size2M ? 1 : a.contains(.forced4K) ? 3 : 2
            case .ownership: cls = !a.contains(.present) ? 2 : a.contains(.encrypted) || !encrypts ? 0 : 1
            }
            // A region of 4K pages takes the most notable class among them (the higher index).
            for c in first..<min(first + count, cells.count) {
                cells[c] = cells[c] == hole ? cls : max(cells[c], cls)
            }
        }
        if coloring == .ownership, let ownership {
            for c in cells.indices where ownership.regionHasGuestPages(pfn: UInt64(c) * 512) { cells[c] = 4 }
        }
        return cells
    }

    /// The SVG document.
    /// `ownership` is the platform's ownership table (nil for a machine without one).
    public static func svg(_ kernel: Kernel, ownership: (any HostOwnership)? = nil, coloring: Coloring = .leafSize, title: String) -> String {
        let cells = classify(kernel, ownership: ownership, coloring: coloring)
        let classes = coloring == .leafSize ? leafClasses : Array(ownershipClasses.prefix(ownership == nil ? 4 : 5))
        let rows = cells.count / 512
        let cellW = 2, rowH = max(3, min(14, 3000 / max(rows, 1)))
        let left = 130, top = 56, gridW = 512 * cellW
        let legendY = top + rows * rowH + 24
        let height = legendY + classes.count * 20 + 16
        var s = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(left + gridW + 20)" height="\(height)" font-family="monospace" font-size="11">
            <title>\(escape(title))</title>
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(left)" y="18" font-size="13">\(escape(title)) — physical memory, one cell per 2M, one row per 1G (\(coloring.rawValue))</text>

            """
        for (i, label) in ["+0", "+256M", "+512M", "+768M"].enumerated() {
            let x = left + i * 128 * cellW
            s += "<text x=\"\(x)\" y=\"\(top - 6)\">\(label)</text><line x1=\"\(x)\" y1=\"\(top - 4)\" x2=\"\(x)\" y2=\"\(top)\" stroke=\"black\"/>\n"
        }
        let labelEvery = max(1, (rows + 63) / 64)
        for r in 0..<rows {
            let y = top + r * rowH
            if r % labelEvery == 0 {
                s += "<text x=\"4\" y=\"\(y + rowH - 1)\">\(hex(UInt64(r) << 30, digits: 12))</text>\n"
            }
            var c = 0
            while c < 512 {
                let cls = cells[r * 512 + c]
                var e = c + 1
                while e < 512 && cells[r * 512 + e] == cls { e += 1 }
                s += "<rect x=\"\(left + c * cellW)\" y=\"\(y)\" width=\"\((e - c) * cellW)\" height=\"\(rowH - 1)\" fill=\"\(classes[Int(cls)].color)\"/>\n"
                c = e
            }
        }
        for (i, cls) in classes.enumerated() {
            let y = legendY + i * 20
            let n = cells.filter { $0 == UInt8(i) }.count
            s += "<rect x=\"\(left)\" y=\"\(y)\" width=\"14\" height=\"14\" fill=\"\(cls.color)\" stroke=\"black\" stroke-width=\"0.5\"/>"
            s += "<text x=\"\(left + 20)\" y=\"\(y + 11)\">\(escape(cls.label)): \(n) × 2M</text>\n"
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


