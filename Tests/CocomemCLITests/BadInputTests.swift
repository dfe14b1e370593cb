import Foundation
import Testing
@testable import CocomemCLI
@testable import Reports
import Expectations

/// Bad input never crashes, hangs or is silently accepted: one test per class of the issue
/// (address arithmetic, output paths, output injection, work that cannot progress, unclear
/// errors), through the real binary where the class is the command line's.
struct BadInputTests {
    typealias CLI = CommandLineTests

    static let snp = """
        name: t
        machine: {arch: x86-snp, memory: 4G}
        guests:
          - {name: vm0, asid: 1, memory: 8M, placement: {pa: 0x40000000}}

        """

    func runScenario(_ text: String, _ extra: [String] = []) throws -> (status: Int32, out: String, err: String) {
        try CLI.run(["run", try CLI.writeTemp(text)] + extra)
    }

    @Test(arguments: [
        // A guest placement that wraps past 2^64 (it trapped).
        (snp.replacingOccurrences(of: "0x40000000", with: "0xffffffffffe00000") + "steps: []\n",
         "placement.pa: 0xffffffffffe00000 + 0x800000 bytes wraps past the top of the 64-bit address space"),
        // vmap of pages that wrap.
        ("name: t\nmachine: {memory: 4G}\nsteps:\n  - vmap: {pa: 0xfffffffffffff000, numpages: 2}\n",
         "steps[1].vmap.pa: 0xfffffffffffff000 + 0x2000 bytes wraps past the top of the 64-bit address space"),
        // A GPA past the RMP entry's field is refused, not truncated to 0.
        (snp + "steps:\n  - rmpupdate: {spa: 0x40000000, assigned: true, asid: 1, gpa: 0x10000000000000}\n",
         "steps[1].rmpupdate.gpa: gpa 0x10000000000000 is past the 51-bit width of an RMP entry's GPA field"),
        // A workload's from: that is not a page address.
        ("name: t\nmachine: {memory: 4G}\nsteps:\n  - workload: {kind: host-writes, from: 0x100001}\n",
         "from 0x100001 is not page-aligned"),
        ("name: t\nmachine: {memory: 4G}\nsteps: []\ncheck:\n  - no-errors: {x: 1}\n",
         "check 'no-errors' takes no arguments; write it as '- no-errors'"),
        // Deep block nesting: libyaml's limit, said without its C API.
        ("name: t\nmachine: {memory: 1G}\nsteps: []\nx:\n" + (0..<1100).map { String(repeating: " ", count: $0 + 1) + "a:\n" }.joined(),
         ":1003:1000: YAML: the document nests deeper than libyaml's limit of 1000 levels; flatten it"),
    ] as [(String, String)])
    func addressArithmeticAndArgumentsAreScenarioErrors(_ text: String, _ message: String) throws {
        let r = try runScenario(text)
        expectEqual(r.status, 1)
        expectTrue(r.err.contains(message), "stderr was: \(r.err)")
    }

    /// host-writes when every page above `from` belongs to a guest: an error naming why, not
    /// an endless redraw.
    @Test func aWorkloadThatCannotProgressEnds() throws {
        let text = """
            name: t
            machine: {arch: x86-snp, memory: 64M}
            guests:
              - {name: vm0, asid: 1, memory: 32M, placement: {pa: 0x2000000}}
            steps:
              - workload: {kind: guest-boot, guest: vm0}
              - workload: {kind: host-writes, from: 0x2000000, operations: 10}

            """
        let r = try runScenario(text)
        expectEqual(r.status, 1)
        expectTrue(r.err.contains("no usable RAM page at or above 0x2000000: every one of its 8192 pages belongs to a guest or the firmware"), "stderr was: \(r.err)")
    }

    /// --trace, --svg and --html follow a symlink and write through a FIFO or a device; only
    /// a regular file is replaced.
    @Test func outputPathsAreNeverReplacedUnlessRegular() throws {
        let dir = NSTemporaryDirectory() + "cocomem-out-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let target = dir + "/target.json", link = dir + "/link.json", fifo = dir + "/fifo"
        try "old".write(toFile: target, atomically: true, encoding: .utf8)
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        expectEqual(mkfifo(fifo, 0o644), 0)
        let scenario = try CLI.writeTemp("name: t\nmachine: {memory: 1G}\nsteps: []\n")
        // A reader for the FIFO, so the writer does not block.
        let reader = Process()
        reader.executableURL = URL(fileURLWithPath: "/bin/cat")
        reader.arguments = [fifo]
        let pipe = Pipe()
        reader.standardOutput = pipe
        try reader.run()
        let r = try CLI.run(["run", scenario, "--trace", link, "--svg", fifo, "--html", "/dev/null"])
        let fromFifo = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        reader.waitUntilExit()
        expectEqual(r.status, 0, "stderr was: \(r.err)")
        try expectEqual(FileManager.default.destinationOfSymbolicLink(atPath: link), target)
        try expectTrue(String(contentsOfFile: target, encoding: .utf8).hasPrefix("{\"traceEvents\""))
        expectTrue(fromFifo.hasPrefix("<svg"))
        var st = stat()
        expectEqual(lstat(fifo, &st), 0)
        expectEqual(st.st_mode & S_IFMT, S_IFIFO)
        expectEqual(stat("/dev/null", &st), 0)
        expectEqual(st.st_mode & S_IFMT, S_IFCHR)
        let toDir = try CLI.run(["run", scenario, "--svg", dir])
        expectEqual(toDir.status, 1)
        expectTrue(toDir.err.contains("is a directory; give a file name"))
    }

    /// User text cannot forge TAP test points or directives, nor break SVG/HTML.
    @Test func userTextIsEscapedInEveryFormat() throws {
        let forged = "name: t\nmachine: {memory: 1G}\nsteps:\n  - host-read: {pa: 0x100000}\n    expect: \"ok\\nnot ok 2 - forged # SKIP\"\n"
        let r = try CLI.run(["check", try CLI.writeTemp(forged)])
        expectEqual(r.out.split(separator: "\n").filter { $0.hasPrefix("ok") || $0.hasPrefix("not ok") }.count, 1)
        expectTrue(r.out.contains("host-read = ok\\nnot ok 2 - forged \\# SKIP"))
        expectEqual(RunReport.tapDescription("a\tb\u{7}c\\"), "a\\tb\\u{7}c\\\\")
        expectEqual(MemoryMap.escape("<a\u{1}&'\"\n>"), "&lt;a\u{fffd}&amp;&apos;&quot;\n&gt;")
    }

    @Test(arguments: [
        (["runn", "x.yaml"], "unknown command 'runn'; did you mean 'run'?"),
        (["meminfo", "--memory", "-4G"], "--memory '-4G': not a size"),
    ])
    func commandLineMistakesAreSaidPlainly(_ args: [String], _ message: String) throws {
        let r = try CLI.run(args)
        expectEqual(r.status, 1)
        expectTrue(r.err.contains(message), "stderr was: \(r.err)")
    }

    @Test func crlfE820FilesAndPipesAreRead() throws {
        let path = try CLI.writeTemp(CLI.e820.replacingOccurrences(of: "\n", with: "\r\n") + "\r\n")
        let r = try CLI.run(["meminfo", "--e820", path])
        expectEqual(r.status, 0, "stderr was: \(r.err)")
        expectTrue(r.out.hasPrefix("DirectMap4k:"))
        // A scenario on a pipe (/dev/stdin) is read too.
        let p = Process()
        p.executableURL = try CLI.binary()
        p.arguments = ["run", "/dev/stdin"]
        let input = Pipe(), out = Pipe()
        p.standardInput = input
        p.standardOutput = out
        try p.run()
        input.fileHandleForWriting.write(Data("name: piped\nmachine: {memory: 1G}\nsteps: []\n".utf8))
        try input.fileHandleForWriting.close()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        expectEqual(p.terminationStatus, 0)
        expectTrue(text.hasPrefix("scenario  piped  (/dev/stdin"))
    }

    @Test func anOversizedScenarioIsRefusedBeforeItIsRead() throws {
        let path = NSTemporaryDirectory() + "cocomem-big-\(UUID().uuidString).yaml"
        expectTrue(FileManager.default.createFile(atPath: path, contents: nil))
        let h = try #require(FileHandle(forWritingAtPath: path))
        try h.truncate(atOffset: 3 << 30)  // a sparse 3 GB file: nothing to read, only its size
        try h.close()
        defer { try? FileManager.default.removeItem(atPath: path) }
        let r = try CLI.run(["run", path])
        expectEqual(r.status, 1)
        expectTrue(r.err.contains("3221225472 bytes, past the 4 MiB a scenario file may have"), "stderr was: \(r.err)")
    }
}
