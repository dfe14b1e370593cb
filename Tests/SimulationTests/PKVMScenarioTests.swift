import Testing
import HostKernel
import Hypervisor
@testable import Simulation
import Expectations

/// pKVM scenarios: bad input is a scenario error naming the place (a step on another
/// architecture, an unknown guest, a protection letter, an address the hypercall cannot
/// take); what the hypervisor answers itself is its errno; the invariant runs after every
/// step.
struct PKVMScenarioTests {
    static let machine = """
        name: t
        machine:
          arch: arm64-pkvm
          e820: |
            BIOS-e820: [mem 0x0000000040000000-0x000000004fffffff] usable
        guests:
          - {name: vm}

        """

    func error(_ text: String) -> String? {
        #expect(throws: ScenarioError.self) { try Scenario.load(yaml: text, file: "t.yaml") }?.message
    }

    func step(_ s: String) -> String { Self.machine + "steps:\n  - " + s + "\n" }

    @Test(arguments: [
        ("pkvm_host_share_guest: {pa: 0x40000000, guest: nope, gfn: 1}", "unknown guest 'nope'"),
        ("pkvm_host_share_guest: {pa: 0x40000000, guest: vm, gfn: 1, prot: RWQ}", "'Q' is not a letter prot takes (valid: R, W, X, D, N)"),
        ("pkvm_host_share_guest: {pa: 0x40000000, guest: vm, gfn: 1, prot: RR}", "'R' is given twice in prot 'RR'"),
        ("pkvm_host_share_hyp: {pa: 0x40000800}", "0x40000800 is not page-aligned: pkvm_host_share_hyp takes a page frame number"),
        ("pkvm_host_share_guest: {pa: 0x40000000, guest: vm, gfn: 0x10000000}", "gfn 268435456 is out of range"),
        ("pkvm_host_donate_hyp: {pa: 0x40000000, nr_pages: 262145}", "nr_pages 262145 is out of range"),
        ("pkvm_host_share_hyp: {pa: 0x1000000000000}", "pa 281474976710656 is out of range"),
        ("pkvm-state: {pa: 0x10000000}", "0x10000000 is not RAM (the hypervisor's vmemmap covers RAM only); RAM is [0x40000000-0x50000000)"),
        ("pkvm-state: {pa: 0x40000000, guest: vm}", "with 'guest', 'gfn' is required"),
        ("pkvm_host_unshare_guest: {pa: 0x40000000, guest: vm, gfn: 1}", "unknown field 'pa'"),
        ("set_memory_valid: {pa: 0x40000000, guest: vm, gpa: 0}", "arm64-pkvm guests have no kernel in the model"),
        ("rmpupdate: {spa: 0x40000000, assigned: true}", "step 'rmpupdate' needs 'arch: x86-snp'; this machine is arm64-pkvm"),
    ])
    func badStepsAreScenarioErrors(_ text: String, _ message: String) {
        let m = error(step(text))
        expectEqual(m?.contains(message), true, "message was: \(m ?? "none")")
    }

    @Test func pkvmStepsAndSettingsOnAnotherMachineNameWhoHasThem() {
        #expect(error("name: t\nmachine: {arch: arm64, memory: 4G}\nsteps:\n  - pkvm_host_share_hyp: {pa: 0x40000000}\n")
            == "step 'pkvm_host_share_hyp' needs 'arch: arm64-pkvm'; this machine is arm64")
        expectEqual(error("name: t\nmachine: {memory: 4G, mte: true}\nsteps: []\n"), "'mte' is an arm64 machine setting; this machine is x86-64")
        expectEqual(error(Self.machine.replacingOccurrences(of: "{name: vm}", with: "{name: vm, asid: 1}") + "steps: []\n")?.contains("unknown field 'asid'"), true)
        expectEqual(error(Self.machine.replacingOccurrences(of: "{name: vm}", with: "{name: vm}\n  - {name: vm}") + "steps: []\n"), "guest 'vm' is defined twice")
    }

    /// What reaches the hypervisor is answered by it: MMIO and RAM's end are -EPERM, a
    /// range across RAM's end -EINVAL, a size other than 1 or 512 pages -EINVAL.
    @Test func theHypervisorAnswersWhatReachesIt() throws {
        let s = try Scenario.load(yaml: Self.machine + """
            steps:
              - pkvm_host_share_ffa: {pa: 0x10000000}
              - pkvm_host_donate_hyp: {pa: 0x50000000}
              - pkvm_host_donate_hyp: {pa: 0x4ffff000, nr_pages: 2}
              - pkvm_host_share_guest: {pa: 0x40000000, guest: vm, gfn: 0, nr_pages: 3}
              - pkvm_host_share_guest: {pa: 0x40001000, guest: vm, gfn: 0, nr_pages: 512}

            """, file: "t.yaml")
        let run = try Runner.run(s, options: RunOptions(checkInvariants: true))
        expectEqual(run.records.map(\.result), ["-EPERM", "-EPERM", "-EINVAL", "-EINVAL", "-EINVAL"])
    }
}
