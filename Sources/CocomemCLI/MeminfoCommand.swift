import ArgumentParser
import HostKernel
import Reports

extension Kernel.DirectMapCount: ExpressibleByArgument {}

/// `cocomem meminfo`: the DirectMap lines of /proc/meminfo after boot and any --apply.
struct MeminfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meminfo",
        abstract: "Print the DirectMap lines of /proc/meminfo, exactly as the kernel does.",
        discussion: """
            Boots the host kernel's direct map over the memory map (init_mem_mapping),
            runs each --apply operation in order (results on stderr), and prints
            DirectMap4k, DirectMap2M and, with gbpages, DirectMap1G as
            arch_report_meminfo does. By default the counts are a walk of the direct
            map; --count kernel prints what the running kernel would, whose boot-time
            count can exceed RAM (memory_map_top_down maps in chunks and counts a large
            page again when a later chunk reaches it).
            """)

    @OptionGroup var machine: MachineOptions
    @Option(help: ArgumentHelp("walk (the table's leaves) or kernel (direct_pages_count as the kernel keeps it).", valueName: "how"))
    var count: Kernel.DirectMapCount = .walk

    func run() throws {
        let (kernel, results) = try machine.boot()
        machine.report(results)
        print(Meminfo.directMap(kernel, count: count), terminator: "")
    }
}

/// `cocomem ptdump`: the kernel page table in the kernel's ptdump format.
struct PtdumpCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ptdump",
        abstract: "Print the kernel page table as /sys/kernel/debug/page_tables/kernel does.",
        discussion: """
            With 4-level paging, the whole layout with the kernel's section markers:
            User Space, Kernel Space, LDT remap, Low Kernel Mapping (the direct map),
            vmalloc() Area, Vmemmap, CPU entry Area, ESPfix Area, EFI Runtime
            Services, High Kernel Mapping, Modules, End Modules, Fixmap Area, after
            boot, mark_rodata_ro of the kernel image (--system-map FILE for yours) and
            any --apply operations; one line per run of entries with the same flags and
            level. The direct map and vmalloc area are the model's; the rest is what a
            kernel without KASLR, PTI or KASAN maps on an AMD host (docs/ptdump.md says
            what to expect when diffing with a real machine). With --la57 the direct map
            and vmalloc area only.

            Compare with your machine:
              sudo cat /sys/kernel/debug/page_tables/kernel > real.txt
              cocomem ptdump --e820 dmesg.txt --system-map /boot/System.map-$(uname -r) > model.txt
              diff real.txt model.txt
            """)

    @OptionGroup var machine: MachineOptions

    func run() throws {
        let (kernel, results) = try machine.boot(defaultImage: .typical)
        machine.report(results)
        print(Ptdump.render(kernel), terminator: "")
    }
}

/// `cocomem list-operations`: what --apply accepts; the same as `cocomem list operations`.
struct ListOperations: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list-operations", abstract: "List the operations --apply accepts, one a line (the same as 'list operations').")

    func run() { print(List.text(.operations), terminator: "") }
}
