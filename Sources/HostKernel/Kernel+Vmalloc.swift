import PageTables

extension Kernel {
    /// vmap: maps `pages` contiguous physical pages at the next free vmalloc address with 4K
    /// PAGE_KERNEL PTEs, leaving a one-page guard hole after the area. Returns the address.
    /// Linux mm/vmalloc.c vmap / __get_vm_area_node (guard page unless VM_NO_GUARD).
    public mutating func vmap(_ phys: PhysAddr, pages: Int) throws(HostKernelError) -> VirtAddr {
        guard phys.rawValue & (pageBytes - 1) == 0 else {
            throw HostKernelError("vmap: physical address \(phys) is not page-aligned")
        }
        guard pages >= 1, pages <= 1 << 30 else { throw HostKernelError("vmap: pages must be 1 to 2^30, got \(pages)") }
        let bytes = UInt64(pages) * pageBytes
        guard memory.isRAM(phys.rawValue..<phys.rawValue + bytes) else {
            throw HostKernelError("vmap: [\(phys)-\(hex(phys.rawValue + bytes))) is not RAM; RAM is "
                + memory.ram.map { "[\(hex($0.lowerBound))-\(hex($0.upperBound)))" }.joined(separator: " "))
        }
        let start = vmapAreas.last.map { $0.virt.rawValue + UInt64($0.pages + 1) * pageBytes } ?? layout.vmallocStart
        guard start + bytes <= layout.vmallocEnd else { throw HostKernelError("vmap: the vmalloc area is full") }
        do {
            try pageTable.map(virt: VirtAddr(start), phys: phys, size: bytes, attributes: pageKernel, sizes: [.size4K])
        } catch {
            throw HostKernelError("vmap: \(error)")
        }
        let area = VmapArea(virt: VirtAddr(start), phys: phys, pages: pages)
        vmapAreas.append(area)
        return area.virt
    }
}
