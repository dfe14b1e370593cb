import PageTables

extension PhysicalMemory {
    /// Reads a memory map from lines exactly as dmesg prints them:
    /// `BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable`.
    ///
    /// A leading dmesg timestamp (`[    0.000000] `) is skipped, as are blank lines and
    /// lines starting with `#`. With `wholeLog` (a whole `dmesg`), every line that is not a
    /// `BIOS-e820:` line is skipped too. Linux arch/x86/kernel/e820.c e820__print_table.
    public static func parse(e820 text: String, wholeLog: Bool = false) throws(MemoryMapError) -> PhysicalMemory {
        var entries: [E820Entry] = []
        var lines: [Int] = []
        // "\r\n" is one Character in Swift: split on both, so CRLF files read line by line.
        for (index, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).enumerated() {
            let n = index + 1
            var line = Substring(raw.trimmingCharacters(in: " \t\r"))
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("["), let close = line.firstIndex(of: "]"), !line.hasPrefix("[mem") {
                line = line[line.index(after: close)...].drop { $0 == " " }
            }
            let expected = "expected 'BIOS-e820: [mem 0xSTART-0xEND] TYPE' with TYPE one of "
                + E820Type.names.map { "'\($0)'" }.joined(separator: ", ")
            if wholeLog && !line.hasPrefix("BIOS-e820: ") { continue }
            guard line.hasPrefix("BIOS-e820: [mem "), let close = line.firstIndex(of: "]") else {
                throw MemoryMapError(line: n, "cannot read '\(raw)': \(expected)")
            }
            let range = line[line.index(line.startIndex, offsetBy: 16)..<close]
            let parts = range.split(separator: "-")
            guard parts.count == 2, let start = hexValue(parts[0]), let last = hexValue(parts[1]) else {
                throw MemoryMapError(line: n, "cannot read the range '[mem \(range)]': \(expected)")
            }
            let typeText = line[line.index(after: close)...].trimmingCharacters(in: " ")
            guard let type = E820Type(printed: String(typeText)) else {
                throw MemoryMapError(line: n, "unknown type '\(typeText)': valid types are "
                    + E820Type.names.map { "'\($0)'" }.joined(separator: ", "))
            }
            guard start <= last else {
                throw MemoryMapError(line: n, "range ends (\(hex(last))) before it starts (\(hex(start)))")
            }
            guard last < 1 << 52 else {
                throw MemoryMapError(line: n, "range ends at \(hex(last)), past the 52-bit physical address limit")
            }
            entries.append(E820Entry(start: start, last: last, type: type))
            lines.append(n)
        }
        if entries.isEmpty {
            throw MemoryMapError(line: nil, "no 'BIOS-e820:' lines found" + (wholeLog ? " (the log must start at boot: `dmesg` right after boot, or `journalctl -k -b`)" : ""))
        }
        // Overlaps by sorting (n log n): an overlapping pair is adjacent in start order; the
        // later line of the first such pair in the file is the one reported.
        let order = entries.indices.sorted { (entries[$0].start, lines[$0]) < (entries[$1].start, lines[$1]) }
        var clash: (line: Int, other: Int)?
        var reach = order[0]  // the entry reaching furthest so far
        for i in order.dropFirst() {
            if entries[i].start <= entries[reach].last {
                let pair = lines[i] > lines[reach] ? (i, reach) : (reach, i)
                if clash.map({ lines[pair.0] < lines[$0.line] }) ?? true { clash = (pair.0, pair.1) }
            }
            if entries[i].last > entries[reach].last { reach = i }
        }
        if let (i, j) = clash {
            throw MemoryMapError(line: lines[i], "range \(hex(entries[i].start))-\(hex(entries[i].last)) overlaps line \(lines[j]) (\(entries[j]))")
        }
        return try PhysicalMemory(entries: entries)
    }

    private static func hexValue(_ s: Substring) -> UInt64? {
        guard s.hasPrefix("0x"), s.count > 2, s.count <= 18 else { return nil }
        return UInt64(s.dropFirst(2), radix: 16)
    }
}
