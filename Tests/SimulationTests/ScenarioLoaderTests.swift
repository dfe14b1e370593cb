import Testing
@testable import HostKernel
@testable import Simulation
import Expectations

/// Reading scenarios: good files load; each kind of mistake is an error naming the place.
struct ScenarioLoaderTests {
    static let minimal = """
        name: t
        machine:
          memory: 4G
        steps:
          - set_memory_ro: {pa: 0x40000000, numpages: 1}
            expect: ok
        """

    func load(_ text: String) throws -> Scenario { try Scenario.load(yaml: text, file: "t.yaml") }

    func error(_ text: String) -> ScenarioError? {
        #expect(throws: ScenarioError.self) { try load(text) }
    }

    @Test func minimalScenarioLoads() throws {
        let s = try load(Self.minimal)
        expectEqual(s.name, "t")
        expectEqual(s.seed, 0)
        expectEqual(s.architecture.name, "x86-64")
        expectEqual(s.steps.count, 1)
        expectEqual(s.steps[0].name, "set_memory_ro")
        expectEqual(s.steps[0].expect, "ok")
        expectEqual(s.steps[0].arguments.map(\.1), ["0xffff888040000000", "1"])
        expectEqual(s.policies.map(\.policy), ["rox"])
    }

    @Test func numbersAcceptHexDecimalAndSizes() throws {
        let s = try load("""
            name: t
            seed: 0x10
            machine: {memory: 3G-1M+1M}
            steps:
              - set_memory_ro: {addr: 0xffff888040000000, numpages: 2K}
            """)
        expectEqual(s.seed, 16)
        expectEqual(s.memory.endOfRAM, 3 << 30)
        expectEqual(s.steps[0].arguments.map(\.1), ["0xffff888040000000", "2048"])
    }

    @Test func unknownStepSuggestsTheClosestNames() {
        let e = error("name: t\nmachine: {memory: 4G}\nsteps:\n  - set_memory_bogus: {pa: 0}\n")
        #expect(e?.line == 4 && e?.column == 5)  // the key
        expectEqual(e?.field, "steps[1].set_memory_bogus")
        expectEqual(e?.message, "unknown step 'set_memory_bogus'; did you mean 'set_memory_ro' or 'set_memory_rox' or 'set_memory_4k'?")
        let far = error("name: t\nmachine: {memory: 4G}\nsteps:\n  - xyzzy: {pa: 0}\n")
        expectEqual(far?.message, "unknown step 'xyzzy'; 'cocomem list steps' lists them")
    }

    @Test func aTypoInAFieldGetsDidYouMean() {
        let e = error("name: t\nmachine: {memory: 4G}\nsteps:\n  - set_memory_ro: {pa: 0x40000000, numpage: 2}\n")
        expectEqual(e?.message, "unknown field 'numpage'; did you mean 'numpages'?; valid: addr, numpages, guest, gpa, pa")
    }

    @Test func unalignedAddressNamesTheField() {
        let e = error("name: t\nmachine: {memory: 4G}\nsteps:\n  - set_memory_ro: {pa: 0x40000001}\n")
        expectEqual(e?.description, "t.yaml:4:25: steps[1].set_memory_ro.pa: set_memory_ro: address 0xffff888040000001 is not page-aligned (the kernel would WARN and round it down)")
    }

    @Test func sizePastRAMIsRefused() {
        let e = error("name: t\nmachine: {memory: 4G}\nsteps:\n  - set_memory_ro: {pa: 0xffffff000, numpages: 2}\n")
        expectEqual(e?.message.contains("is not inside the direct map [0xffff888000000000-0xffff888100000000)"), true)
    }

    @Test func unknownFieldListsValidOnes() {
        let e = error("name: t\nmachine: {memory: 4G, ram: 8G}\nsteps: []\n")
        expectEqual(e?.field, "machine.ram")
        expectEqual(e?.line, 2)
        expectEqual(e?.column, 23)
        expectEqual(e?.message, "unknown field 'ram'; valid: arch, e820, memory, cpus, gbpages, la57, mem-encrypt, sme-coherent")
    }

    @Test func missingNameIsRequired() {
        expectEqual(error("machine: {memory: 4G}\nsteps: []\n")?.message, "'name' is required")
    }

    @Test func unknownArchitectureListsTheValidOnes() {
        let e = error("name: t\nmachine: {arch: riscv, memory: 4G}\nsteps: []\n")
        expectEqual(e?.message, "unknown architecture 'riscv'; valid: x86-64, x86-snp, x86-sev, x86-tdx, arm64, arm64-cca, arm64-pkvm, arm64-mte, s390-pv")
        expectEqual(error("name: t\nmachine: {arch: x86_snp, memory: 4G}\nsteps: []\n")?.message.hasPrefix("unknown architecture 'x86_snp'; did you mean 'x86-snp'"), true)
    }

    /// Every registered architecture is modelled now; the one unmodelled name is arm64-mte,
    /// which says what to write instead.
    @Test func theOnlyUnmodelledNameSaysWhatToWrite() {
        expectEqual(Architectures.all.filter { !$0.modelled }.map(\.name), ["arm64-mte"])
        #expect(error("name: t\nmachine: {arch: arm64-mte, memory: 4G}\nsteps: []\n")?.message
            == "MTE is a capability of an arm64 machine, not an architecture: write 'arch: arm64' and 'mte: true' under machine")
    }

    @Test func aStepOrSettingOfTheOtherKernelArchitectureNamesWhoHasIt() {
        let arm = "name: t\nmachine: {arch: arm64, memory: 4G}\n"
        let e = error(arm + "steps:\n  - set_memory_4k: {addr: 0xffff000000000000}\n")
        expectEqual(e?.message, "step 'set_memory_4k' needs 'arch: x86-64' or 'arch: x86-snp' or 'arch: x86-sev' or 'arch: x86-tdx'; this machine is arm64")
        expectEqual(e?.line, 4)
        expectEqual(error("name: t\nmachine: {arch: arm64, memory: 4G, la57: true}\nsteps: []\n")?.message, "'la57' is an x86 machine setting; this machine is arm64")
        #expect(error("name: t\nmachine: {memory: 4G}\nsteps:\n  - set_memory_valid: {pa: 0x100000}\n")?.message
            == "step 'set_memory_valid' needs 'arch: arm64' or 'arch: arm64-cca' or 'arch: arm64-pkvm'; this machine is x86-64")
        #expect(error(arm + "host: {arm64-linear-map: huge}\nsteps: []\n")?.message
            == "unknown policy for host.arm64-linear-map 'huge'; valid: blocks, pte, bbml2-split")
        expectEqual(error(arm + "steps:\n  - workload: {kind: cpa-churn}\n")?.message, "workload cpa-churn needs 'arch: x86-64' or 'arch: x86-snp' or 'arch: x86-sev' or 'arch: x86-tdx'; this machine is arm64")
        // The PC layout's RAM starts at 0: PHYS_OFFSET 0, so pa: 0x1000 is the linear map's second page.
        let s = try? Scenario.load(yaml: arm + "steps:\n  - set_direct_map_invalid_noflush: {pa: 0x1000}\n", file: "t.yaml")
        expectEqual(s?.steps.first?.arguments.first.map { "\($0.0)=\($0.1)" }, "addr=0xffff000000001000")
    }

    @Test func unknownPolicyListsTheValidOnes() {
        let e = error("name: t\nmachine: {memory: 4G}\nhost: {cpa-collapse: sometimes}\nsteps: []\n")
        expectEqual(e?.message, "unknown policy for host.cpa-collapse 'sometimes'; valid: never, rox, always")
        expectEqual(e?.line, 3)
    }

    @Test func unknownWorkloadListsTheValidOnes() {
        let e = error("name: t\nmachine: {memory: 4G}\nsteps:\n  - workload: {kind: stress, operations: 5}\n")
        expectEqual(e?.message, "unknown workload 'stress'; valid: cpa-churn, split-scatter, rox-cycle, secretmem, host-writes")
        let snp = error("name: t\nmachine: {memory: 4G}\nsteps:\n  - workload: {kind: vm-churn, guest: vm0}\n")
        expectEqual(snp?.message, "workload vm-churn needs 'arch: x86-snp' or 'arch: x86-tdx'; this machine is x86-64")
    }

    @Test func unknownCheckListsTheValidOnes() {
        let e = error("name: t\nmachine: {memory: 4G}\nsteps: []\ncheck:\n  - no-crash\n")
        expectEqual(e?.message, "unknown check 'no-crash'; valid: no-errors, invariants, no-host-crash, directmap, metric, broken-invariant")
    }

    @Test func badConditionIsExplained() {
        let e = error("name: t\nmachine: {memory: 4G}\nsteps: []\ncheck:\n  - directmap: {4k: lots}\n")
        expectEqual(e?.message.hasPrefix("'lots' is not a condition"), true)
    }

    @Test func unknownMetricIsRefused() {
        let e = error("name: t\nmachine: {memory: 4G}\nsteps: []\ncheck:\n  - metric: {speed: 1}\n")
        expectEqual(e?.message, "unknown metric 'speed'; 'cocomem list metrics' lists them")
        #expect(error("name: t\nmachine: {memory: 4G}\nsteps: []\ncheck:\n  - metric: {tlb_full_flush: 1}\n")?.message
            == "unknown metric 'tlb_full_flush'; did you mean 'tlb_full_flushes'?")
        #expect(error("name: t\nmachine: {memory: 4G}\nsteps: []\ncheck:\n  - metric: {psmash: 1}\n")?.message
            == "unknown metric 'psmash'; it is reported on x86-snp, and this machine is x86-64")
    }

    @Test func stepWithTwoOperationsIsRefused() {
        let e = error("name: t\nmachine: {memory: 4G}\nsteps:\n  - {set_memory_ro: {pa: 0}, set_memory_rw: {pa: 0}}\n")
        expectEqual(e?.message.hasPrefix("a step is one operation"), true)
    }

    @Test func e820ErrorPointsAtItsLine() {
        let e = error("name: t\nmachine:\n  e820: |\n    BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable\n    BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] RAM\nsteps: []\n")
        expectEqual(e?.line, 5)
        expectEqual(e?.message.hasPrefix("unknown type 'RAM'"), true)
    }

    @Test func memoryAndE820TogetherAreRefused() {
        expectEqual(error("name: t\nmachine: {memory: 4G, e820: x}\nsteps: []\n")?.message, "give either 'e820' or 'memory', not both")
    }

    @Test func memoryPastTheDirectMapIsRefused() {
        expectEqual(error("name: t\nmachine: {memory: 65T}\nsteps: []\n")?.message.contains("past the 64T the direct map can hold"), true)
    }

    @Test func guestsAreRefusedOnAMachineWithoutAGuestLayer() {
        #expect(error("name: t\nmachine: {memory: 4G}\nguests: [{name: vm0}]\nsteps: []\n")?.message
            == "guests need an architecture with guests (modelled: x86-snp, x86-sev, x86-tdx, arm64-cca, arm64-pkvm, s390-pv); 'x86-64' has none, so use 'guests: []'")
    }

    @Test func yamlSyntaxErrorHasLineAndColumn() {
        let e = error("name: t\nmachine: {memory: 4G\nsteps: []\n")
        expectNotEqual(e?.line, nil)
        expectNotEqual(e?.column, nil)
        expectEqual(e?.message.hasPrefix("YAML: "), true)
    }

    @Test func duplicateKeyIsRefused() {
        let e = error("name: t\nname: u\nmachine: {memory: 4G}\nsteps: []\n")
        expectEqual(e?.message, "a mapping repeats 'name'; each key may appear once")
        expectEqual(e?.line, 1)
    }

    @Test func aliasBombIsRefused() {
        var text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        for i in 1...9 { text += "a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 10).joined(separator: ", ") + "]\n" }
        text += "name: t\nmachine: {memory: 4G}\nsteps: []\n"
        expectEqual(error(text)?.message, "the document expands to more than 1000000 nodes (YAML aliases?); refused")
    }

    @Test func overLargeDocumentIsRefused() {
        let text = "name: t\n# " + String(repeating: "x", count: Scenario.maxBytes) + "\n"
        expectEqual(error(text)?.message.hasPrefix("the document is "), true)
    }

    @Test func deepFlowNestingIsRefused() {
        let text = "name: " + String(repeating: "[", count: 300) + String(repeating: "]", count: 300) + "\n"
        expectEqual(error(text)?.message, "flow collections nest more than 256 deep")
        expectEqual(error(text)?.line, 1)
        // Brackets inside quoted strings, comments and block scalars are text.
        let quoted = "name: \"" + String(repeating: "[", count: 300) + "\"  # " + String(repeating: "{", count: 300)
            + "\nmachine:\n  memory: 1G\n  e820: |\n    " + String(repeating: "[", count: 300) + "\nsteps: []\n"
        expectNotEqual(error(quoted)?.message.contains("nest"), true)
    }

    @Test func anAliasUsedAsAMappingKeyIsRefusedBeforeParsing() {
        var text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        for i in 1..<12 { text += "a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 10).joined(separator: ", ") + "]\n" }
        let e = error(text + "? *a11\n: 1\nname: t\n")
        expectEqual(e?.message, "a YAML alias used as a mapping key is refused (it can expand without bound); write the key out")
        expectEqual(e?.line, 13)
        expectEqual(error(text + "*a11 : 1\nname: t\n")?.line, 13)
        // As a value, the expansion is counted and refused by the node limit.
        expectEqual(error(text + "name: t\n")?.message.hasPrefix("the document expands to more than"), true)
    }

    @Test func vmapOfNonRAMIsRefused() {
        let e = error("name: t\nmachine: {memory: 4G}\nsteps:\n  - vmap: {pa: 0x200000000}\n")
        expectEqual(e?.message.hasPrefix("[0x200000000-0x200001000) is not RAM; RAM is [0x0-0xa0000) [0x100000-0x100000000)"), true)
    }

    @Test func zeroOperationsIsOutOfRange() {
        let e = error("name: t\nmachine: {memory: 4G}\nsteps:\n  - workload: {kind: cpa-churn, operations: 0}\n")
        expectEqual(e?.message, "operations 0 is out of range; valid: 1 to 1000000000000")
    }
}

/// SNP scenarios: what only a scenario can get wrong is an error naming the place.
struct SNPScenarioTests {
    static let head = """
        name: s
        machine: {arch: x86-snp, memory: 4G}
        guests:
          - {name: vm0, asid: 5, memory: 4M, placement: {pa: 0x40000000}}

        """

    func error(_ text: String) -> ScenarioError? {
        #expect(throws: ScenarioError.self) { try Scenario.load(yaml: text, file: "s.yaml") }
    }

    @Test func snpScenarioLoadsAndRuns() throws {
        let s = try Scenario.load(yaml: Self.head + "steps:\n  - rmpupdate: {spa: 0x40000000, assigned: true, asid: 5}\n    expect: ok\n", file: "s.yaml")
        let r = try Runner.run(s, options: RunOptions(checkInvariants: true))
        expectEqual(r.records[0].result, "ok")
        expectEqual((r.machine.platform as? SNPPlatform)?.rmp.chunksInUse, 1)
    }

    @Test func pageBeyondRAMIsAScenarioError() {
        let e = error(Self.head + "steps:\n  - rmpread: {spa: 0x100000000}\n")
        expectEqual(e?.message, "0x100000000 is past the end of RAM (0x100000000)")
        expectEqual(e?.line, 6)
    }

    @Test func unknownGuestListsTheGuests() {
        expectEqual(error(Self.head + "steps:\n  - pvalidate: {guest: vm9, gpa: 0, validate: true}\n")?.message, "unknown guest 'vm9'; did you mean 'vm0'?; valid: vm0")
    }

    @Test func sizeMustBe4KOr2M() {
        expectEqual(error(Self.head + "steps:\n  - rmpupdate: {spa: 0x40000000, assigned: true, size: 1G}\n")?.message, "unknown size '1G'; valid: 4K, 2M")
    }

    @Test func vmplAboveThreeIsRefused() {
        expectEqual(error(Self.head + "steps:\n  - guest-read: {guest: vm0, gpa: 0, vmpl: 4}\n")?.message, "vmpl 4 is out of range; valid: 0 to 3")
    }

    @Test func gpaPastGuestMemoryIsRefused() {
        expectEqual(error(Self.head + "steps:\n  - guest-read: {guest: vm0, gpa: 0x400000}\n")?.message, "gpa 0x400000 is past vm0's 4M of memory")
    }

    @Test func overlappingPlacementNamesBothRanges() {
        let e = error(Self.head.replacingOccurrences("\n\n", "\n") + "  - {name: vm1, asid: 6, memory: 2M, placement: {pa: 0x40200000}}\nsteps: []\n")
        expectEqual(e?.message, "[0x40200000-0x40400000) overlaps vm0 at [0x40000000-0x40400000)")
    }

    @Test func placementOutsideRAMIsRefused() {
        let e = error("name: s\nmachine: {arch: x86-snp, memory: 4G}\nguests:\n  - {name: vm0, asid: 5, memory: 4M, placement: {pa: 0xc0000}, backing: guest-memfd-4K}\nsteps: []\n")
        expectEqual(e?.message.hasPrefix("[0xc0000-0x4c0000) is not all RAM"), true)
        let misaligned = error("name: s\nmachine: {arch: x86-snp, memory: 4G}\nguests:\n  - {name: vm0, asid: 5, memory: 4M, placement: {pa: 0x40001000}}\nsteps: []\n")
        expectEqual(misaligned?.message, "placement 0x40001000 is not 2M-aligned, so guest-memfd-2M cannot back it (its 2M folios are 2M-aligned); align the placement or use backing: guest-memfd-4K")
    }

    @Test func duplicateASIDIsRefused() {
        let e = error(Self.head.replacingOccurrences("\n\n", "\n") + "  - {name: vm1, asid: 5, memory: 2M, placement: {pa: 0x80000000}}\nsteps: []\n")
        expectEqual(e?.message, "ASID 5 is already vm0's")
    }

    @Test func snpStepsNeedTheSNPMachine() {
        let e = error("name: s\nmachine: {memory: 4G}\nsteps:\n  - psmash: {spa: 0x40000000}\n")
        expectEqual(e?.message, "step 'psmash' needs 'arch: x86-snp'; this machine is x86-64")
    }

    @Test func unknownBackingListsTheValidOnes() {
        let e = error("name: s\nmachine: {arch: x86-snp, memory: 4G}\nguests:\n  - {name: vm0, asid: 5, memory: 4M, placement: {pa: 0x40000000}, backing: hugetlb}\nsteps: []\n")
        expectEqual(e?.message, "unknown backing 'hugetlb'; valid: guest-memfd-4K, guest-memfd-2M, guest-memfd-1G")
    }

    @Test func unknownDirectMapPolicyListsTheValidOnes() {
        let e = error("name: s\nmachine: {arch: x86-snp, memory: 4G}\nhost: {directmap-policy: lazy}\nsteps: []\n")
        // The built-in policies in order, then any an embedding program registered (the
        // tests run in one process with EmbeddingTests, which registers one).
        let listed = "unknown policy for host.directmap-policy 'lazy'; valid: none, split-on-assign, proactive-4k, unmap-private, split-on-fault, pooled, coalesce"
        let message = e?.message ?? ""
        expectTrue(message.hasPrefix(listed))
        let rest = String(message.dropFirst(listed.count))
        #expect(rest.isEmpty || rest == DirectMapPolicyKind.registered.map { ", \($0.rawValue)" }.joined())
    }

    @Test func guestThatDoesNotFitIsRefusedBeforeAnythingRuns() {
        let e = error("name: s\nmachine: {arch: x86-snp, memory: 4G}\nguests:\n  - {name: vm0, asid: 5, memory: 2G, placement: {pa: 0xc0000000}}\nsteps: []\n")
        expectEqual(e?.message, "[0xc0000000-0x140000000) is not all RAM; RAM is [0x0-0xa0000) [0x100000-0x100000000)")
    }

    @Test func kvmStepOnAnUnknownGuestListsTheGuests() {
        expectEqual(error(Self.head + "steps:\n  - launch: {guest: vm7}\n")?.message, "unknown guest 'vm7'; did you mean 'vm0'?; valid: vm0")
    }

    @Test func msrPageStateChangeIsOnePage() {
        let e = error(Self.head + "steps:\n  - psc: {guest: vm0, gpa: 0, size: 8K, to: shared, via: msr}\n")
        expectEqual(e?.message, "the MSR protocol changes one 4K page; use via: ghcb")
    }

    @Test func unknownHostContextListsTheValidOnes() {
        let e = error(Self.head + "steps:\n  - host-write: {pa: 0x1000, context: irq}\n")
        expectEqual(e?.message, "unknown context 'irq'; valid: data, kernel-stack, page-table, gdt-idt, nmi, user-copy, user")
    }
}
