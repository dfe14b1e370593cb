import Hardware
import PageTables

/// The user-mapping calls that need the rest of the kernel: its direct map (which pages are
/// decrypted), its page allocator for kernel pages.
extension Kernel {
    /// mmap in process `pi`; a decrypted coherent DMA buffer is decrypted in the direct map
    /// too (dma_direct_alloc → set_memory_decrypted under force_dma_unencrypted).
    public mutating func userMmap(process pi: Int, _ r: MmapRequest) -> MmapOutcome {
        let result = user.mmap(process: pi, r)
        if case .mapped(let addr) = result, case .dmaCoherent(true) = r.backing,
           let vi = user.processes[pi].vmaIndex(addr) {
            let v = user.processes[pi].vmas[vi]
            for leaf in (try? user.processes[pi].pageTable.leaves(virt: VirtAddr(v.start), size: v.end - v.start)) ?? [] {
                _ = try? setMemoryDecrypted(va(PhysAddr(leaf.descriptor.frame.rawValue << pageShift)).rawValue, numpages: 1)
            }
        }
        return result
    }

    /// map_vdso's [vvar]: a VM_READ|VM_MAYREAD|VM_IO|VM_DONTDUMP|VM_PFNMAP special mapping of
    /// four pages below mmap_base; the vvar data page is a kernel page, and with `pvclock`
    /// (an SEV guest using kvmclock) the pvti page is decrypted in the direct map
    /// (__bss_decrypted, 6a1cac56f41f). arch/x86/entry/vdso/vma.c map_vdso.
    public mutating func mapVvar(process pi: Int, pvclock: Bool) -> MmapOutcome {
        if user.vvarPFN == nil {
            guard let data = user.allocator.alloc4K() else { return .error(.ENOMEM) }
            user.vvarPFN = data
        }
        if pvclock && user.pvclockPFN == nil {
            guard let p = user.allocator.alloc4K() else { return .error(.ENOMEM) }
            user.pvclockPFN = p
            _ = try? setMemoryDecrypted(va(PhysAddr(p << pageShift)).rawValue, numpages: 1)
        }
        let len = UInt64(UserMM.vvarPages) << pageShift
        guard let addr = user.unmappedArea(user.processes[pi], hint: 0, len: len, align: pageBytes) else { return .error(.ENOMEM) }
        let flags: VMFlags = [.read, .mayRead, .io, .dontDump, .pfnmap]
        let vma = VMA(start: addr, end: addr + len, flags: flags, pageProt: PgProt.vmGetPageProt(flags, memEncrypt: user.memEncrypt), backing: .vvar, pgoff: 0)
        user.processes[pi].vmas.insert(vma, at: user.processes[pi].insertionIndex(addr))
        return .mapped(addr)
    }

    /// Whether frame `pfn` holds data under this kernel's key: RAM by its direct-map entry's
    /// C-bit, anything else (iomem) unencrypted.
    public func pageEncrypted(_ pfn: UInt64) -> Bool {
        let pa = pfn << pageShift
        guard memory.ram.contains(where: { $0.contains(pa) }) else { return false }
        return directMapLeaf(PhysAddr(pa))?.attributes.contains(.encrypted) ?? false
    }

    /// User entries whose encryption bit disagrees with the page they map (the bug of seed
    /// 000): (process, address, entry's C-bit).
    public func userEncryptionMismatches(limit: Int = .max) -> [(process: String, addr: UInt64, encrypted: Bool)] {
        var out: [(String, UInt64, Bool)] = []
        for p in user.processes {
            for leaf in (try? p.pageTable.leaves(virt: VirtAddr(0), size: UserMM.taskSize + pageBytes)) ?? [] where leaf.descriptor.attributes.contains(.present) {
                let enc = leaf.descriptor.attributes.contains(.encrypted)
                let first = leaf.descriptor.frame.rawValue
                for i in 0..<(leaf.size.bytes >> pageShift) where pageEncrypted(first + i) != enc {
                    out.append((p.name, leaf.virt.rawValue + i << pageShift, enc))
                    if out.count >= limit { return out }
                    break
                }
            }
        }
        return out
    }

    /// The user-mapping invariants: each process's page table is consistent, and every
    /// present user entry's encryption bit agrees with the page it maps.
    public func checkUserInvariants() throws(InvariantViolation) {
        for p in user.processes { try p.pageTable.checkInvariants() }
        if let m = userEncryptionMismatches(limit: 1).first {
            throw InvariantViolation("user-pte-encryption", "process \(m.process): the user PTE at \(hex(m.addr)) has C=\(m.encrypted ? 1 : 0), but the page it maps is \(m.encrypted ? "not encrypted" : "encrypted") (the kernel maps it with C=\(m.encrypted ? 0 : 1))")
        }
    }
}
