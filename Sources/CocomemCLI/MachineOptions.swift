import ArgumentParser
import Foundation
import Hardware
import HostKernel
import PageTables

/// The machine to boot and the operations to run on it, shared by meminfo and ptdump.
struct MachineOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "A memory map as dmesg prints it: a whole boot log (`dmesg > dmesg.txt`, or `journalctl -k -b > dmesg.txt`), of which only the 'BIOS-e820: [mem 0x…-0x…] TYPE' lines are read.", valueName: "file"))
    var e820: String?

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp(
        "RAM size for the usual PC layout: [0, 640K) and [1M, SIZE) (e.g. 64G, 3G-1M).", valueName: "size"))
    var memory: String?

    @Flag(name: .long, help: "Boot without 1G direct-map pages (the kernel's nogbpages).")
    var noGbpages = false

    @Flag(name: .long, help: "Use 5-level paging (PAGE_OFFSET 0xff11000000000000).")
    var la57 = false

    @Flag(name: .long, help: "Boot without host memory encryption (no C-bit; set_memory_{en,de}crypted do nothing).")
    var noMemEncrypt = false

    @Flag(name: .long, help: "Make every page-table allocation fail, so splits return -ENOMEM.")
    var failAlloc = false

    @Option(name: .long, help: ArgumentHelp(
        "Run an operation after boot, e.g. 'set_memory_decrypted 0xffff888040000000 1' or 'set_memory_4k pa:0x40000000 1'. Repeatable, in order; 'cocomem list-operations' lists them.",
        valueName: "operation"))
    var apply: [String] = []

    @Flag(name: .long, help: "Do not print each operation's result on stderr.")
    var quiet = false

    @Option(name: .long, help: ArgumentHelp(
        "The kernel image's symbols (/boot/System.map-$(uname -r)): mark_rodata_ro then reaches its alias in the direct map, and ptdump draws its High Kernel Mapping. ptdump uses a typical 6.x image when none is given; meminfo none.",
        valueName: "file"))
    var systemMap: String?

    @Flag(name: .long, help: "ptdump: boot without a kernel image (the direct map alone, as scenarios do).")
    var noKernelImage = false

    /// Default when neither --e820 nor --memory is given.
    static let defaultMemory = "64G"

    /// Boots the machine and applies the operations; returns the kernel and one result line
    /// per operation.
    func boot(defaultImage: KernelImage? = nil) throws -> (Kernel, [String]) {
        if e820 != nil && memory != nil { throw CLIError("give either --e820 or --memory, not both") }
        if systemMap != nil && noKernelImage { throw CLIError("give --system-map or --no-kernel-image, not both") }
        var image = noKernelImage ? nil : defaultImage
        if let path = systemMap {
            do { image = try KernelImage(systemMap: try ScenarioFiles.read(path, what: "--system-map")) } catch let error as HostKernelError {
                throw CLIError("--system-map \(path): \(error)")
            }
        }
        let physical: PhysicalMemory
        do {
            if let path = e820 {
                physical = try PhysicalMemory.parse(e820: try ScenarioFiles.read(path, what: "--e820"), wholeLog: true)
            } else {
                let text = memory ?? Self.defaultMemory
                guard let size = ByteSize.parse(text) else {
                    throw CLIError("--memory '\(text)': not a size; write e.g. 64G, 512M, 0x100000000 or 3G-1M")
                }
                physical = try PhysicalMemory.pc(size: size)
            }
        } catch let error as MemoryMapError {
            throw CLIError((e820.map { "\($0): " } ?? "--memory: ") + error.description)
        }
        var config = KernelConfig(gbpages: !noGbpages, la57: la57, memEncrypt: !noMemEncrypt)
        config.image = image
        var kernel = try Kernel(memory: physical, config: config)
        kernel.failPageTableAllocations = failAlloc
        var results: [String] = []
        for (i, text) in apply.enumerated() {
            do {
                let op = try KernelOperation.parse(text, layout: kernel.layout)
                results.append("\(op) = \(try op.apply(to: &kernel))")
            } catch {
                // A bare address below the end of RAM is most likely meant as a physical one.
                let words = text.split(separator: " "), bare = words.count > 1 ? ByteSize.parse(String(words[1])) : nil
                let hint = words.count > 1 && !words[1].hasPrefix("pa:") && words[0] != "vmap"
                    && bare.map { $0 < kernel.memory.endOfRAM } == true ? "; to name a physical page write pa:\(words[1])" : ""
                throw CLIError("--apply #\(i + 1) '\(text)': \(error)\(hint)")
            }
        }
        return (kernel, results)
    }

    func report(_ results: [String]) {
        guard !quiet else { return }
        for line in results { FileHandle.standardError.write(Data((line + "\n").utf8)) }
    }
}
