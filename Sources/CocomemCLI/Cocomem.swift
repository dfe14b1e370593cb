import ArgumentParser
import Simulation

/// The `cocomem` command: a thin layer over the library, one subcommand per file.
public struct Cocomem: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "cocomem",
        abstract: "An executable model of memory management on confidential-computing hardware.",
        discussion: """
            cocomem models how operating systems and hypervisors keep their page
            tables consistent with what confidential-computing hardware enforces
            (SEV-SNP's RMP on x86-64 today; the arm64 host kernel beside it), and
            reports it in the kernel's own formats.

            Examples:
              cocomem                                   # the built-in demo
              cocomem run examples/cpa-basics.yaml --meminfo
              cocomem check examples/*.yaml             # TAP
              cocomem compare examples/cpa-churn.yaml --policy never --policy always
              cocomem meminfo --memory 64G --apply 'set_memory_4k pa:0x40000000 1'
              cocomem ptdump --e820 dmesg.txt --no-gbpages
              cocomem run examples/arm64-bbml2-split.yaml --ptdump
              cocomem list steps
            """,
        version: "0.1.0",
        subcommands: [Demo.self, Run.self, Check.self, Compare.self, ExploreCommand.self, SweepCommand.self, MergeCommand.self, List.self, MeminfoCommand.self, PtdumpCommand.self, ListOperations.self, Bench.self],
        defaultSubcommand: Demo.self)

    public init() {}

    /// Parses and runs the command line, first catching a mistyped subcommand (which the
    /// parser would report as unexpected arguments to the default `demo`).
    public static func mainWithSuggestions() {
        let args = Array(CommandLine.arguments.dropFirst())
        let names = configuration.subcommands.map { $0._commandName } + ["help"]
        if let first = args.first, !first.hasPrefix("-"), !names.contains(first) {
            let hint = Suggest.hint(first, in: names, listedBy: "'cocomem --help'")
            exit(withError: CLIError("unknown command '\(first)'" + hint))
        }
        main()
    }
}

/// A mistake on the command line, said plainly.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}
