import Hardware
import PageTables
@testable import HostKernel

/// The machine of the foundation issue: RAM [0-0x9fbff], [0x100000-0xbfffffff],
/// [0x100000000-0x63fffffff].
let exampleE820 = """
    BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
    BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved
    BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable
    BIOS-e820: [mem 0x00000000c0000000-0x00000000ffffffff] reserved
    BIOS-e820: [mem 0x0000000100000000-0x000000063fffffff] usable
    """

let K = pageBytes
let M2 = PageSize.size2M.bytes
let G1 = PageSize.size1G.bytes
let pageOffset: UInt64 = 0xffff_8880_0000_0000

func exampleKernel(gbpages: Bool = true, memEncrypt: Bool = true, smeCoherent: Bool = true) throws -> Kernel {
    try Kernel(memory: PhysicalMemory.parse(e820: exampleE820),
               config: KernelConfig(gbpages: gbpages, memEncrypt: memEncrypt, smeCoherent: smeCoherent))
}
