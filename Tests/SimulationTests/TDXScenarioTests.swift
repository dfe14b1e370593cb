import Testing
@testable import Simulation
import Expectations

/// x86-tdx through scenarios: bad input is a scenario error naming the step and field; what
/// the module answers itself prints its status.
struct TDXScenarioTests {
    static let head = """
        name: t
        machine: {arch: x86-tdx, memory: 1G}
        guests:
          - {name: td0, asid: 1, memory: 16M, placement: {pa: 0x10000000}}
        steps:

        """

    @Test func badInputIsAScenarioError() {
        // A SEAMCALL on another machine.
        refused("name: t\nmachine: {memory: 1G}\nsteps:\n  - tdh.mem.track: {td: td0}\n",
                "steps[1].tdh.mem.track: step 'tdh.mem.track' needs 'arch: x86-tdx'; this machine is x86-64")
        // An unknown TD, a level that does not exist, a field the step does not take.
        refused(Self.head + "  - tdh.mem.track: {td: td9}\n", "steps[1].tdh.mem.track.td: unknown guest 'td9'")
        refused(Self.head + "  - tdh.mem.page.aug: {td: td0, gpa: 0, level: 4M}\n", "steps[1].tdh.mem.page.aug.level: unknown level '4M'")
        refused(Self.head + "  - tdh.mem.page.aug: {td: td0, gpa: 0, lvl: 2M}\n", "unknown field 'lvl'")
        refused(Self.head + "  - tdh.mem.page.aug: {td: td0}\n", "'gpa' is required")
        refused(Self.head + "  - host-write: {pa: 0x1000, access: nt}\n", "unknown access 'nt'")
    }

    /// A GPA not aligned to its level, or past the TD's private GPA space, reaches the module.
    @Test func operandsTheModuleRefusesPrintItsStatus() throws {
        let r = try Runner.run(try Scenario.load(yaml: Self.head + """
              - launch: {td: td0}
              - tdh.mem.sept.add: {td: td0, gpa: 0x200000, level: 1G}
              - tdh.mem.range.block: {td: td0, gpa: 0x800000000000}
              - tdg.mem.page.accept: {td: td0, gpa: 0x1000, level: 1G}

            """, file: "t.yaml"))
        #expect(r.records.map(\.result) == ["TDX_SUCCESS", "TDX_OPERAND_INVALID 0xc000010000000001",
                                            "TDX_OPERAND_INVALID 0xc000010000000001", "TDX_OPERAND_INVALID 0xc000010000000001"])
    }

    /// Extreme operands answer at once: a GPA near 2^64 is the module's OPERAND_INVALID, a
    /// MapGPA of 128 TiB stops at the TD's end, SEPT.REMOVE of a 512G entry frees it, a FATAL
    /// TD cannot be entered.
    @Test func extremeOperandsAnswerAtOnce() throws {
        let r = try Runner.run(try Scenario.load(yaml: Self.head + """
              - launch: {td: td0}
              - tdh.mem.page.aug: {td: td0, gpa: 0xfffffffffffff000}
              - tdh.mem.sept.add: {td: td0, gpa: 0, level: 512G}
              - tdh.mem.sept.remove: {td: td0, gpa: 0, level: 512G}
              - tdh.mem.sept.remove: {td: td0, gpa: 0, level: 512G}
              - tdh.mr.finalize: {td: td0}
              - tdg.vp.vmcall.mapgpa: {td: td0, gpa: 0, size: 0x7ffffffff000, shared: true}

            """, file: "t.yaml"))
        #expect(r.records.map(\.result) == ["TDX_SUCCESS", "TDX_OPERAND_INVALID 0xc000010000000001", "TDX_SUCCESS", "TDX_SUCCESS (RCX 0x1008000)",
                                            "TDX_EPT_ENTRY_STATE_INCORRECT 0xc0000b0d00000001", "TDX_SUCCESS", "TDVMCALL_STATUS_SUCCESS"])
    }

    /// The TDX guest-kernel steps and policies refuse bad input by name.
    @Test func guestStepsAndPoliciesRefuseBadInput() {
        refused("name: t\nmachine: {memory: 1G}\nsteps:\n  - accept_memory: {td: td0, gpa: 0, size: 0x1000}\n",
                "step 'accept_memory' needs 'arch: x86-tdx'; this machine is x86-64")
        refused(Self.head + "  - guest-alloc: {td: td0, pages: 0}\n", "steps[1].guest-alloc.pages")
        refused(Self.head + "  - guest-alloc: {td: td0}\n", "'pages' is required")
        refused(Self.head.replacingOccurrences(of: "guests:", with: "kvm: {tdx-hugepages: maybe}\nguests:"), "unknown policy for kvm.tdx-hugepages 'maybe'; valid: off, on")
        refused(Self.head.replacingOccurrences(of: "guests:", with: "host: {tdx-page-reset: never}\nguests:"), "valid: always, erratum-only")
        refused(Self.head + "  - workload: {kind: guest-boot, guest: td0, firmware-accepted: 1x}\n", "firmware-accepted")
    }

    /// One TD per guest: KVM_TDX_INIT_VM again is -EINVAL, as is a destroy with no TD; after
    /// a destroy the guest can be launched again. A firmware claim past the TD's memory is
    /// all of it, and the allocator runs dry with the guest's out-of-memory outcome.
    @Test func oneTDPerGuestAndTheAllocatorRunsDry() throws {
        let r = try Runner.run(try Scenario.load(yaml: Self.head + """
              - launch: {td: td0}
              - tdh.mng.create: {td: td0}
              - launch: {td: td0}
              - destroy: {td: td0}
              - destroy: {td: td0}
              - workload: {kind: guest-boot, guest: td0, firmware-accepted: 1G}
              - guest-alloc: {td: td0, pages: 4097}

            """, file: "t.yaml"))
        #expect(r.records.map(\.result) == ["TDX_SUCCESS", "-EINVAL", "-EINVAL", "ok", "-EINVAL", "ok",
                                            "guest out of memory: the allocator has no memory left to accept"])
    }

    /// host.tdx-page-reset: a zapped page is reset (always), or keeps its TD-owner bits on a
    /// CPU without the erratum (erratum-only), so the host reads zeros from it.
    @Test func pageResetPolicy() throws {
        func run(_ policy: String) throws -> [String] {
            let yaml = Self.head.replacingOccurrences(of: "guests:", with: "host: {tdx-page-reset: \(policy)}\nguests:") + """
                  - workload: {kind: guest-boot, guest: td0, firmware-accepted: 16M}
                  - set_memory_decrypted: {guest: td0, gpa: 0x1000, numpages: 1}
                  - host-read: {pa: 0x10001000}

                """
            let r = try Runner.run(try Scenario.load(yaml: yaml, file: "t.yaml"))
            let m = Dictionary(uniqueKeysWithValues: r.metrics)
            return r.records.map(\.result) + [m["tdx_page_resets"], m["tdx_pages_not_reset"]].map { "\($0 ?? 99)" }
        }
        try expectEqual(run("always"), ["ok", "ok", "ok", "1", "0"])
        try expectEqual(run("erratum-only"), ["ok", "ok", "ok (reads zeros: TD-owner bit set)", "0", "1"])
    }

    /// tdx-private-mapping: the guest's own conversions keep it; a MapGPA to shared behind
    /// the guest kernel's back (its direct map still private) breaks it.
    @Test func privateMappingToASharedPageBreaksTheInvariant() throws {
        let base = Self.head + """
              - launch: {td: td0}
              - tdh.mr.finalize: {td: td0}
              - set_memory_decrypted: {guest: td0, gpa: 0x1000, numpages: 2}

            """
        let ok = try Runner.run(try Scenario.load(yaml: base + "check:\n  - invariants\n", file: "t.yaml"))
        expectTrue(ok.passed)
        let broken = try Runner.run(try Scenario.load(yaml: base + """
              - tdg.vp.vmcall.mapgpa: {td: td0, gpa: 0x5000, size: 0x2000, shared: true}
            check:
              - broken-invariant: tdx-private-mapping

            """, file: "t.yaml"))
        expectTrue(broken.passed)
        expectEqual(broken.checks.first?.detail.contains("gfn 0x5 is shared in KVM"), true)
    }

    /// Booting twice only allocates the second time; a firmware claim that is not 2M-aligned
    /// is accepted to the unit's end; extreme operands answer without trapping; after KVM
    /// kills the VM (an access before accepting) its vCPU calls are -EIO until destroyed.
    @Test func bootTwiceUnalignedFirmwareAndADeadVM() throws {
        let r = try Runner.run(try Scenario.load(yaml: Self.head + """
              - workload: {kind: guest-boot, guest: td0, firmware-accepted: 3M}
              - workload: {kind: guest-boot, guest: td0, firmware-accepted: 0xffffffffffffffff, allocate: 16}
              - load_unaligned_zeropad: {td: td0, gpa: 0x37fffd}
              - accept_memory: {td: td0, gpa: 0xffffffffffe00000, size: 0}
              - load_unaligned_zeropad: {td: td0, gpa: 0xfffffffffffffffd}
              - load_unaligned_zeropad: {td: td0, gpa: 0x5ffffd}
              - set_memory_decrypted: {guest: td0, gpa: 0x1000, numpages: 1}
              - destroy: {td: td0}
              - workload: {kind: guest-boot, guest: td0, firmware-accepted: 16M}

            """, file: "t.yaml"))
        #expect(r.records.map(\.result) == ["ok", "ok", "ok", "ok", "ok (#VE: MMIO emulated by handle_mmio)",
                                            "KVM: Guest access before accepting 0x600000: the VM is dead", "-EIO", "ok", "ok"])
    }
}

