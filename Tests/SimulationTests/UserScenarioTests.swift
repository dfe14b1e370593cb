import Testing
@testable import HostKernel
@testable import Simulation
import Expectations

/// User mappings and SEV through scenarios: bad input is a scenario error naming the field;
/// what the kernel answers itself prints its errno.
struct UserScenarioTests {
    static let head = """
        name: t
        machine: {arch: x86-sev, memory: 1G}
        guests:
          - {name: sev0, asid: 1, memory: 16M, placement: {pa: 0x10000000}}
        processes: [qemu, {name: app, guest: sev0}]
        steps:

        """

    static func load(_ steps: String, head: String = head) throws -> Scenario { try Scenario.load(yaml: head + steps, file: "t.yaml") }

    static func results(_ steps: String) throws -> [String] {
        try Runner.run(try load(steps)).records.map(\.result)
    }

    func refused(_ steps: String, _ message: String, head: String = head, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(sourceLocation: sourceLocation, performing: { _ = try Self.load(steps, head: head) }, throws: { "\($0)".contains(message) })
    }

    @Test func badInputIsAScenarioError() {
        refused("  - mmap: {process: nobody, len: 4K}\n", "steps[1].mmap.process: unknown process 'nobody' in the host; valid: qemu")
        refused("  - user-read: {process: app, addr: 0x1000}\n", "unknown process 'app' in the host")
        refused("  - user-read: {process: qemu, guest: sev0, addr: 0x1000}\n", "unknown process 'qemu' in guest sev0")
        refused("  - mmap: {process: qemu, len: 4K, prot: PROT_RAED}\n", "unknown flag 'PROT_RAED' in prot 'PROT_RAED'; did you mean 'PROT_READ'")
        refused("  - mmap: {process: qemu, len: 4K, prot: decrypted}\n", "unknown flag 'decrypted' in prot")
        refused("  - mmap: {process: qemu, len: 4K, flags: MAP_SHARED|MAP_FIXD}\n", "unknown flag 'MAP_FIXD'")
        refused("  - get_user_pages: {process: qemu, addr: 0x1000, flags: FOLL_PIN}\n", "unknown flag 'FOLL_PIN' in flags")
        refused("  - mmap: {process: qemu, len: 4K, vram: 2}\n", "'vram' goes with 'backing: ttm'")
        refused("  - mmap: {process: qemu, len: 4K, backing: guest-memory}\n", "'backing: guest-memory' needs 'memory-of:'")
        refused("  - mmap: {process: qemu, len: 4K, backing: guest-memory, memory-of: sev9}\n", "unknown guest 'sev9'")
        refused("  - fork: {process: qemu, child: ghost}\n", "unknown process 'ghost'")
        refused("  - sev_launch_update_data: {guest: sev0, gpa: 0x1000000}\n", "0x1000000 + 1 page must be page-aligned and inside sev0's 16M")
        refused("  - sev_mem_enc_register_region: {guest: sev0, process: app, addr: 0}\n", "unknown host process 'app'")
        // On another architecture: processes and the steps are not there.
        refused("steps: []\n", "processes[1]: user processes need an architecture with user mappings (x86-sev, s390-pv); this machine is x86-64",
                head: "name: t\nmachine: {memory: 1G}\nprocesses: [a]\n")
        refused("  - mmap: {process: a, len: 4K}\n", "step 'mmap' needs 'arch: x86-sev' or 'arch: arm64' or 'arch: s390-pv'; this machine is x86-64",
                head: "name: t\nmachine: {memory: 1G}\nsteps:\n")
        refused("steps: []\n", "process 'a' is declared twice in the host", head: "name: t\nmachine: {arch: x86-sev, memory: 1G}\nprocesses: [a, a]\n")
    }

    /// The kernel's own answers: errnos for a range past the address space, MAP_FIXED_NOREPLACE
    /// over a mapping, an unaligned munmap; signals for accesses outside a VMA.
    @Test func theKernelAnswersWithItsErrno() throws {
        let r = try Self.results("""
              - mmap: {process: qemu, addr: 0x10000000, len: 8K, flags: MAP_PRIVATE|MAP_FIXED}
              - mmap: {process: qemu, addr: 0x10001000, len: 4K, flags: MAP_FIXED_NOREPLACE}
              - mmap: {process: qemu, addr: 0x7ffffffff000, len: 8K, flags: MAP_FIXED}
              - munmap: {process: qemu, addr: 0x10000800, len: 4K}
              - mprotect: {process: qemu, addr: 0x20000000, len: 4K, prot: PROT_READ}
              - user-write: {process: qemu, addr: 0x30000000}
              - user-write: {process: qemu, addr: 0x10000000}
              - get_user_pages: {process: qemu, addr: 0x30000000}
              - unpin_user_page: {pa: 0x1000}

            """)
        expectEqual(r, ["0x10000000", "-EEXIST", "-ENOMEM", "-EINVAL", "-ENOMEM", "SIGSEGV", "ok", "-EFAULT", "-EINVAL"])
    }

    /// Lengths and addresses at the top of the 64-bit space wrap nothing and trap nothing:
    /// each call answers as the kernel does, and an object larger than RAM fails to populate
    /// at once instead of eating memory.
    @Test func extremeArgumentsAnswerWithoutTrapping() throws {
        let r = try Self.results("""
              - mmap: {process: qemu, len: 0xffffffffffffffff}
              - munmap: {process: qemu, addr: 0x1000, len: 0xffffffffffffffff}
              - mprotect: {process: qemu, addr: 0x1000, len: 0xffffffffffffffff, prot: PROT_READ}
              - madvise: {process: qemu, addr: 0x1000, len: 0xffffffffffffffff, advice: MADV_DONTNEED}
              - get_user_pages: {process: qemu, addr: 0xfffffffffffff000, numpages: 4}
              - user-pte: {process: qemu, addr: 0xffff800000000000}
              - user-read: {process: qemu, addr: 0xffffffffffffffff}
              - mmap: {process: qemu, len: 512G, flags: MAP_SHARED, backing: ttm}
              - user-read: {process: qemu, addr: 0x7f7ff7fff000}
              - mmap: {process: qemu, len: 512G, flags: MAP_SHARED, backing: dma-coherent}

            """)
        expectEqual(r, ["-ENOMEM", "-EINVAL", "-ENOMEM", "-EINVAL", "-EFAULT", "none", "SIGSEGV", "0x7f7ff7fff000", "VM_FAULT_OOM", "-ENOMEM"])
        refused("  - vmf_insert_pfn_prot: {process: qemu, addr: 0x1000, pa: 0x10000000000000}\n", "pa")
        refused("  - kmap: {pa: 0x100000000}\n", "past the end of RAM")
    }

    /// A VMM mapping longer than the guest's RAM faults past it with SIGBUS (the memfd's
    /// end); unregistering a region never registered is -EINVAL.
    @Test func guestMemoryEndsWhereTheGuestDoes() throws {
        let r = try Self.results("""
              - mmap: {process: qemu, len: 32M, flags: MAP_SHARED, backing: guest-memory, memory-of: sev0}
              - user-read: {process: qemu, addr: 0x7ffff5fff000}
              - user-read: {process: qemu, addr: 0x7ffff6fff000}
              - sev_mem_enc_unregister_region: {guest: sev0}

            """)
        expectEqual(r, ["0x7ffff5fff000", "ok", "SIGBUS", "-EINVAL"])
    }

    /// A guest's process runs on the guest's own kernel: its pages are guest frames.
    @Test func aGuestProcessUsesTheGuestKernel() throws {
        let result = try Runner.run(try Self.load("""
              - mmap: {process: app, guest: sev0, len: 4K}
              - user-write: {process: app, guest: sev0, addr: 0x7ffff7ffe000}

            """))
        let gk = result.machine.guestKernels[0].kernel
        expectEqual(result.records.map(\.result), ["0x7ffff7ffe000", "ok"])
        expectEqual(gk.user.allocatedPages, 1)
        expectEqual(result.machine.kernel.user.allocatedPages, 0)
        expectTrue(gk.user.mappedFrame(process: 0, addr: 0x7fff_f7ff_e000)!.pfn < 16 << 8)  // inside the guest's 16 MiB
    }

    /// SEV's flush points: without SME_COHERENT a host write before launch is flushed by
    /// register region's CLFLUSH; a host write to a launched guest's private page corrupts it.
    @Test func sevStrayWritesAndFlushes() throws {
        let head = Self.head.replacingOccurrences(of: "memory: 1G}", with: "memory: 1G, sme-coherent: false}")
        let r = try Runner.run(try Self.load("""
              - mmap: {process: qemu, len: 16M, flags: MAP_SHARED, backing: guest-memory, memory-of: sev0}
              - host-write: {pa: 0x10000000}
              - sev_launch_start: {guest: sev0}
              - sev_mem_enc_register_region: {guest: sev0, process: qemu, addr: 0x7ffff6fff000}
              - sev_launch_update_data: {guest: sev0, gpa: 0}
              - guest-read: {guest: sev0, gpa: 0}
              - guest-write: {guest: sev0, gpa: 0x1000}
              - host-write: {pa: 0x10001000}
              - guest-read: {guest: sev0, gpa: 0x1000}
              - sev_vm_destroy: {guest: sev0}

            """, head: head))
        #expect(r.records.map(\.result) == ["0x7ffff6fff000", "ok", "ok", "ok", "ok", "ok", "ok", "ok",
                                            "corrupted: the page no longer holds what the guest wrote", "ok"])
        let m = Dictionary(uniqueKeysWithValues: r.metrics)
        expectEqual(m["sev_guest_corrupt_reads"], 1)
        expectEqual(m["sev_stray_writes"], 1)
        expectEqual(m["sev_wbinvd"], 1)
        expectEqual(m["sev_pinned_pages"], 0)
        expectEqual(r.machine.kernel.user.folio(0x10000)!.refcount, 2)  // the memfd's and the VMM mapping's: the pins are gone
    }
}
