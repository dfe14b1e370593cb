import PageTables

/// The x86-64 kernel image: where its sections start and end in the high kernel mapping
/// (__START_KERNEL_map, System.map's symbols), for what mark_rodata_ro does to it and to its
/// alias in the direct map, and for ptdump's High Kernel Mapping. Without KASLR the image is
/// at physical address `virt - __START_KERNEL_map` (phys_base 0). arch/x86/kernel/vmlinux.lds.S.
public struct KernelImage: Hashable, Sendable {
    /// __START_KERNEL_map. arch/x86/include/asm/page_64_types.h.
    public static let startKernelMap: UInt64 = 0xffff_ffff_8000_0000
    public var text: UInt64
    public var etext: UInt64
    public var startRodata: UInt64
    public var endRodata: UInt64
    /// __end_rodata_hpage_align: __end_rodata rounded up to 2M (X86_ALIGN_RODATA_END).
    public var endRodataHpageAlign: UInt64
    /// _sdata: .data starts right after the aligned end of rodata.
    public var sdata: UInt64
    public var initBegin: UInt64
    public var initEnd: UInt64
    public var brkEnd: UInt64

    public init(text: UInt64, etext: UInt64, startRodata: UInt64, endRodata: UInt64, endRodataHpageAlign: UInt64? = nil,
                sdata: UInt64? = nil, initBegin: UInt64, initEnd: UInt64, brkEnd: UInt64) {
        let aligned = endRodataHpageAlign ?? (endRodata + PageSize.size2M.bytes - 1) & ~(PageSize.size2M.bytes - 1)
        self.text = text
        self.etext = etext
        self.startRodata = startRodata
        self.endRodata = endRodata
        self.endRodataHpageAlign = aligned
        self.sdata = sdata ?? aligned
        self.initBegin = initBegin
        self.initEnd = initEnd
        self.brkEnd = brkEnd
    }

    /// The shape of a 6.x distribution kernel (14 MiB of text, 8 MiB of rodata, data, init
    /// and bss to 60 MiB), for a machine whose System.map is not given. Give yours with
    /// `KernelImage(systemMap:)` to compare with your machine.
    public static let typical = KernelImage(
        text: 0xffff_ffff_8100_0000, etext: 0xffff_ffff_81e0_2e51, startRodata: 0xffff_ffff_8200_0000,
        endRodata: 0xffff_ffff_8281_3000, initBegin: 0xffff_ffff_8330_0000, initEnd: 0xffff_ffff_8380_0000,
        brkEnd: 0xffff_ffff_8482_c000)

    /// The physical address of an image address (phys_base 0: no KASLR).
    public func pa(_ virt: UInt64) -> UInt64 { virt - Self.startKernelMap }

    /// The symbols System.map must give, by name.
    public static let symbols = ["_text", "_etext", "__start_rodata", "__end_rodata", "__init_begin", "__init_end", "_brk_end"]

    /// Reads a System.map (`ffffffff81000000 T _text`, one symbol a line): the section
    /// symbols, and __end_rodata_hpage_align and _sdata when it has them.
    public init(systemMap text: String) throws(HostKernelError) {
        var found: [String: UInt64] = [:]
        for line in text.split(whereSeparator: \.isNewline) {
            let words = line.split(separator: " ", omittingEmptySubsequences: true)
            guard words.count >= 3, let value = UInt64(words[0], radix: 16) else { continue }
            let name = String(words[2])
            if found[name] == nil { found[name] = value }
        }
        let missing = Self.symbols.filter { found[$0] == nil }
        guard missing.isEmpty else {
            throw HostKernelError("System.map: no \(missing.joined(separator: ", ")); it needs \(Self.symbols.joined(separator: ", "))")
        }
        let image = KernelImage(text: found["_text"]!, etext: found["_etext"]!, startRodata: found["__start_rodata"]!,
                                endRodata: found["__end_rodata"]!, endRodataHpageAlign: found["__end_rodata_hpage_align"],
                                sdata: found["_sdata"], initBegin: found["__init_begin"]!, initEnd: found["__init_end"]!,
                                brkEnd: found["_brk_end"]!)
        try image.validate()
        self = image
    }

    /// The image must sit in the 512 MiB or 1 GiB of the high kernel mapping, its sections in
    /// order, _text and the rodata boundaries 2M-aligned as vmlinux.lds.S aligns them.
    func validate() throws(HostKernelError) {
        let order = [text, etext, startRodata, endRodata, endRodataHpageAlign, sdata, initBegin, initEnd, brkEnd]
        guard zip(order, order.dropFirst()).allSatisfy({ $0 <= $1 }) else {
            throw HostKernelError("System.map: the sections are not in the order _text ≤ _etext ≤ __start_rodata ≤ __end_rodata ≤ _sdata ≤ __init_begin ≤ __init_end ≤ _brk_end")
        }
        guard text >= Self.startKernelMap, brkEnd <= 0xffff_ffff_c000_0000 else {
            throw HostKernelError("System.map: _text \(hex(text)) to _brk_end \(hex(brkEnd)) is not inside the kernel text mapping [0xffffffff80000000, 0xffffffffc0000000)")
        }
        let mask = PageSize.size2M.bytes - 1
        guard text & mask == 0, startRodata & mask == 0, endRodataHpageAlign & mask == 0 else {
            throw HostKernelError("System.map: _text, __start_rodata and __end_rodata_hpage_align must be 2M-aligned (a kernel built without KASLR relocation)")
        }
    }
}
