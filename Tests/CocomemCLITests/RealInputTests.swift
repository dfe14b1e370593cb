import Foundation
import Testing
@testable import CocomemCLI
import Expectations

/// Inputs as users have them: a whole boot log for --e820, a bare address in --apply, a
/// missing file among those `check` is given, and `list operations`.
struct RealInputTests {
    typealias CLI = CommandLineTests

    /// A whole `dmesg`: timestamps, other lines, and every type e820_print_type prints.
    @Test func e820TakesAWholeBootLog() throws {
        let log = """
            [    0.000000] Linux version 6.1.0-27-amd64 (debian-kernel@lists.debian.org)
            [    0.000000] Command line: BOOT_IMAGE=/boot/vmlinuz root=UUID=1234 ro quiet
            [    0.000000] BIOS-provided physical RAM map:
            [    0.000000] BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable
            [    0.000000] BIOS-e820: [mem 0x000000000009fc00-0x000000000009ffff] reserved
            [    0.000000] BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable
            [    0.000000] BIOS-e820: [mem 0x00000000c0000000-0x00000000c0ffffff] persistent (type 12)
            [    0.000000] BIOS-e820: [mem 0x00000000c1000000-0x00000000c1ffffff] soft reserved
            [    0.000000] BIOS-e820: [mem 0x00000000c2000000-0x00000000c2ffffff] persistent (type 7)
            [    0.000000] BIOS-e820: [mem 0x00000000c3000000-0x00000000c3ffffff] type 13
            [    0.000000] BIOS-e820: [mem 0x00000000c4000000-0x00000000c4ffffff] unusable
            [    0.000000] BIOS-e820: [mem 0x0000000100000000-0x000000043fffffff] usable
            [    0.000000] NX (Execute Disable) protection: active
            [    0.000000] e820: update [mem 0x00000000-0x00000fff] usable ==> reserved

            """
        let r = try CLI.run(["meminfo", "--e820", try CLI.writeTemp(log)])
        expectEqual(r.status, 0, "stderr: \(r.err)")
        // Only the usable lines are RAM: [0, 3G) mapped as the kernel maps it (the first 2M in
        // 4K pages, the rest of the first 1G in 2M, then 1G pages) and [4G, 17G); the
        // persistent, soft reserved, type 13 and unusable ranges at 3G are not mapped.
        expectEqual(r.out, "DirectMap4k:        2048 kB\nDirectMap2M:     1046528 kB\nDirectMap1G:    15728640 kB\n")
        let bad = try CLI.run(["meminfo", "--e820", try CLI.writeTemp("[    0.000000] BIOS-e820: [mem 0x0-0xfff] weird\n")])
        expectEqual(bad.status, 1)
        expectTrue(bad.err.contains("unknown type 'weird': valid types are 'usable', 'reserved', 'soft reserved'"))
        let none = try CLI.run(["meminfo", "--e820", try CLI.writeTemp("[    1.000000] usb 1-1: new device\n")])
        expectEqual(none.status, 1)
        expectTrue(none.err.contains("no 'BIOS-e820:' lines found (the log must start at boot"))
    }

    @Test func aBareAddressInApplyIsNamedAsPhysical() throws {
        let r = try CLI.run(["meminfo", "--memory", "4G", "--apply", "set_memory_decrypted 0x40000000 1"])
        expectEqual(r.status, 1)
        expectTrue(r.err.contains("is not inside the direct map"))
        expectTrue(r.err.contains("; to name a physical page write pa:0x40000000"))
        let empty = try CLI.run(["meminfo", "--memory", "4G", "--apply", ""])
        expectEqual(empty.status, 1)
        expectTrue(empty.err.contains("unknown operation ''"))
    }

    @Test func checkReportsAFileItCannotRunAndGoesOn() throws {
        let good = ScenarioCommandTests.example("tlb-noflush.yaml")
        let r = try CLI.run(["check", "/nonexistent.yaml", good])
        expectEqual(r.status, 1)
        expectTrue(r.out.contains("not ok 1 - /nonexistent.yaml could not be run\n  ---\n  message: \"/nonexistent.yaml: cannot read the file (No such file or directory)\""))
        expectTrue(r.out.contains("ok 2 - \(good)"))
        expectTrue(!r.out.contains("\nnot ok 2"))
    }

    /// --count kernel: DirectMap lines as the running kernel counts them (its boot count is
    /// not a walk); the walk stays the default.
    @Test func meminfoCountsAsTheKernelDoes() throws {
        let walk = try CLI.run(["meminfo", "--memory", "4G"]), kernel = try CLI.run(["meminfo", "--memory", "4G", "--count", "kernel"])
        expectEqual(walk.out, "DirectMap4k:        2048 kB\nDirectMap2M:     1046528 kB\nDirectMap1G:     3145728 kB\n")
        expectEqual(kernel.out, "DirectMap4k:        2048 kB\nDirectMap2M:     1046528 kB\nDirectMap1G:     5242880 kB\n")
        let run = try CLI.run(["run", ScenarioCommandTests.example("cpa-basics.yaml"), "--meminfo", "--count", "kernel"])
        expectEqual(run.status, 0)
        expectTrue(run.out.contains("/proc/meminfo at the end:\nDirectMap4k:"))
        let bad = try CLI.run(["meminfo", "--memory", "4G", "--count", "guess"])
        expectNotEqual(bad.status, 0)
        expectTrue(bad.err.contains("guess"))
    }

    @Test func listOperationsIsListOperations() throws {
        let a = try CLI.run(["list", "operations"]), b = try CLI.run(["list-operations"])
        expectEqual(a.status, 0)
        expectEqual(a.out, b.out)
        expectTrue(a.out.hasPrefix("set_memory_4k ADDR NUMPAGES "))
    }

    /// `compare --svg DIR`: one map per policy, all at the same scale, titled with the policy.
    @Test func compareWritesOneMapPerPolicyAtOneScale() throws {
        let dir = NSTemporaryDirectory() + "cocomem-maps-\(UUID().uuidString)/sub"
        let r = try CLI.run(["compare", ScenarioCommandTests.example("snp-directmap-policies.yaml"), "--policy", "none",
                             "--policy", "split-on-assign", "--svg", dir, "--color", "ownership", "--allow-fail"])
        expectEqual(r.status, 0, "stderr: \(r.err)")
        let none = try String(contentsOfFile: dir + "/none.svg", encoding: .utf8)
        let split = try String(contentsOfFile: dir + "/split-on-assign.svg", encoding: .utf8)
        expectTrue(none.contains("snp-directmap-policies, host.directmap-policy = none — physical memory, one cell per 2M, one row per 1G (ownership)"))
        expectTrue(split.contains("snp-directmap-policies, host.directmap-policy = split-on-assign — physical memory, one cell per 2M, one row per 1G (ownership)"))
        let file = try CLI.writeTemp("x")
        let bad = try CLI.run(["compare", ScenarioCommandTests.example("snp-directmap-policies.yaml"), "--policy", "none", "--svg", file])
        expectNotEqual(bad.status, 0)
        expectTrue(bad.err.contains("--svg \(file): exists and is not a directory"))
        let color = try CLI.run(["compare", ScenarioCommandTests.example("snp-directmap-policies.yaml"), "--policy", "none", "--color", "pink"])
        expectNotEqual(color.status, 0)
        expectTrue(color.err.contains("--color 'pink': valid: leaf-size, ownership"))
    }

    /// `ptdump` prints the whole layout with the kernel's markers; `--system-map` takes the
    /// image's symbols from a System.map, whose alias then shows in the direct map.
    @Test func ptdumpPrintsTheWholeLayoutWithYourImage() throws {
        let plain = try CLI.run(["ptdump", "--memory", "4G"])
        expectEqual(plain.status, 0)
        expectTrue(plain.out.hasPrefix("---[ User Space ]---\n0x0000000000000000-0xffff880000000000    16777096T"))
        expectTrue(plain.out.contains("\n0xffffffff81000000-0xffffffff81e00000          14M     ro         PSE     GLB x  pmd\n"))
        let map = try CLI.writeTemp("""
            ffffffff81000000 T _text
            ffffffff81a5b000 T _etext
            ffffffff81c00000 D __start_rodata
            ffffffff82000000 D __end_rodata
            ffffffff82400000 D __init_begin
            ffffffff82600000 D __init_end
            ffffffff82c00000 B _brk_end

            """)
        let mine = try CLI.run(["ptdump", "--memory", "4G", "--system-map", map])
        expectEqual(mine.status, 0, "stderr: \(mine.err)")
        // _etext at 0x...a5b000: 10M of text in 2M pages, 364K of 4K pages, the freed gap;
        // __end_rodata 2M-aligned: no split there.
        #expect(mine.out.contains("""
            0xffffffff81000000-0xffffffff81a00000          10M     ro         PSE     GLB x  pmd
            0xffffffff81a00000-0xffffffff81a5b000         364K     ro                 GLB x  pte
            0xffffffff81a5b000-0xffffffff81c00000        1684K     RW                 GLB NX pte
            0xffffffff81c00000-0xffffffff82000000           4M     ro         PSE     GLB NX pmd
            0xffffffff82000000-0xffffffff82c00000          12M     RW         PSE     GLB NX pmd

            """))
        expectTrue(mine.out.contains("\n0xffff888001000000-0xffff888001a00000          10M     ro         PSE     GLB NX pmd\n"))
        let none = try CLI.run(["ptdump", "--memory", "4G", "--no-kernel-image"])
        expectTrue(none.out.contains("---[ High Kernel Mapping ]---\n0xffffffff80000000-0xffffffffc0000000           1G                               pmd\n"))
        let bad = try CLI.run(["ptdump", "--memory", "4G", "--system-map", try CLI.writeTemp("ffffffff81000000 T _text\n")])
        expectNotEqual(bad.status, 0)
        expectTrue(bad.err.contains(": System.map: no _etext, __start_rodata, __end_rodata, __init_begin, __init_end, _brk_end; it needs "))
        let both = try CLI.run(["ptdump", "--memory", "4G", "--system-map", map, "--no-kernel-image"])
        expectNotEqual(both.status, 0)
        expectTrue(both.err.contains("give --system-map or --no-kernel-image, not both"))
        let small = try CLI.run(["ptdump", "--memory", "32M"])
        expectNotEqual(small.status, 0)
        expectTrue(small.err.contains("the kernel image at physical [0x1000000, 0x482c000) is not in RAM the direct map maps"))
    }
}
