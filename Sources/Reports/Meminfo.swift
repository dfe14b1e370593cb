import HostKernel
import PageTables

/// The DirectMap lines of /proc/meminfo, byte for byte. Linux arch/x86/mm/pat/set_memory.c
/// arch_report_meminfo: DirectMap4k always, DirectMap2M on x86-64, DirectMap1G only with
/// gbpages; each `label:` padded to 16 columns and `%8lu kB`.
public enum Meminfo {
    /// Empty on arm64, whose /proc/meminfo has no DirectMap lines (arch_report_meminfo is
    /// x86, s390 and powerpc only).
    /// With `count: .kernel`, the counts the running kernel would print (its boot count, see
    /// BootCounter, changed since as the walk's); the default is the walk's.
    public static func directMap(_ kernel: Kernel, count: Kernel.DirectMapCount = .walk) -> String {
        guard kernel.config.isa == .x86_64 else { return "" }
        let c = kernel.directPagesCount(count)
        var out = line("DirectMap4k:", UInt64(c.size4K) << 2)
        out += line("DirectMap2M:", UInt64(c.size2M) << 11)
        if kernel.config.gbpages { out += line("DirectMap1G:", UInt64(c.size1G) << 20) }
        return out
    }

    /// `"%s    %8lu kB\n"` for a 12-character label.
    static func line(_ label: String, _ kb: UInt64) -> String {
        let n = String(kb)
        return label + "    " + String(repeating: " ", count: max(0, 8 - n.count)) + n + " kB\n"
    }
}
