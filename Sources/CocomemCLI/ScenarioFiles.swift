import Foundation
import Simulation

/// Reading scenario files for the commands.
enum ScenarioFiles {
    static func read(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else { throw CLIError("\(path): cannot read the file") }
        guard let text = String(data: data, encoding: .utf8) else { throw CLIError("\(path): not UTF-8 text") }
        return text
    }

    static func load(_ path: String, overrides: [(String, String)] = []) throws -> Scenario {
        try Scenario.load(yaml: try read(path), file: path, policyOverrides: overrides)
    }

    static func write(_ text: String, to path: String) throws {
        do { try text.write(toFile: path, atomically: true, encoding: .utf8) } catch {
            throw CLIError("\(path): cannot write the file (\(error.localizedDescription))")
        }
    }
}

/// A progress line on stderr, shown only when stderr is a terminal and the run has lasted
/// more than a second.
final class ProgressLine: @unchecked Sendable {
    let enabled: Bool
    let start = ContinuousClock.now
    var shown = false
    var last = ContinuousClock.now

    init(quiet: Bool) { enabled = !quiet && isatty(2) == 1 }

    func update(_ step: Int, _ total: Int, _ what: String) {
        guard enabled else { return }
        let now = ContinuousClock.now
        guard now - start > .seconds(1), now - last > .milliseconds(100) || !shown else { return }
        last = now
        shown = true
        FileHandle.standardError.write(Data("\r\u{1b}[K[\(step)/\(total)] \(what)".utf8))
    }

    func finish() {
        if shown { FileHandle.standardError.write(Data("\r\u{1b}[K".utf8)) }
    }
}
