import Foundation
import Simulation

/// Reading scenario files and writing reports for the commands, safely: inputs are size
/// checked before they are read (pipes included), and outputs never replace anything but a
/// regular file.
enum ScenarioFiles {
    /// Reads a text file of at most `limit` bytes: a regular file's size is checked before a
    /// byte is read; a pipe or device (`/dev/stdin`, `<(…)`) is read up to the limit.
    static func read(_ path: String, limit: Int = Scenario.maxBytes, what: String = "scenario") throws -> String {
        // Errors name the file, and the option it came with (`--e820 FILE: …`).
        let name = what.hasPrefix("--") ? "\(what) \(path)" : path
        var st = stat()
        guard stat(path, &st) == 0 else { throw CLIError("\(name): cannot read the file (\(String(cString: strerror(errno))))") }
        if st.st_mode & S_IFMT == S_IFDIR { throw CLIError("\(name): is a directory, not a \(what) file") }
        if st.st_mode & S_IFMT == S_IFREG && Int(st.st_size) > limit {
            throw CLIError("\(name): \(st.st_size) bytes, past the \(limit >> 20) MiB a \(what) file may have")
        }
        guard let handle = FileHandle(forReadingAtPath: path) else { throw CLIError("\(name): cannot read the file") }
        defer { try? handle.close() }
        var data = Data()
        while data.count <= limit {
            guard let chunk = try? handle.read(upToCount: 1 << 16), !chunk.isEmpty else { break }
            data.append(chunk)
        }
        if data.count > limit { throw CLIError("\(name): more than the \(limit >> 20) MiB a \(what) file may have") }
        guard let text = String(data: data, encoding: .utf8) else { throw CLIError("\(name): not UTF-8 text") }
        return text
    }

    static func load(_ path: String, overrides: [(String, String)] = []) throws -> Scenario {
        try Scenario.load(yaml: try read(path), file: path, policyOverrides: overrides)
    }

    /// Makes a directory for reports (and its parents) unless it exists; a file in its place
    /// is an error naming the option.
    static func makeDirectory(_ path: String, what: String) throws {
        var st = stat()
        if stat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFDIR else { throw CLIError("\(what) \(path): exists and is not a directory") }
            return
        }
        do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
            throw CLIError("\(what) \(path): cannot make the directory (\(error.localizedDescription))")
        }
    }

    /// Writes a report. A symbolic link is followed; an existing file that is not regular (a
    /// device such as /dev/null or /dev/stdout, a FIFO) is written through, never replaced;
    /// a regular file, or a new one, is replaced atomically (a temporary file renamed over it).
    static func write(_ text: String, to path: String) throws {
        let target = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        var st = stat()
        if stat(target, &st) == 0 && st.st_mode & S_IFMT != S_IFREG {
            if st.st_mode & S_IFMT == S_IFDIR { throw CLIError("\(path): is a directory; give a file name") }
            guard let handle = FileHandle(forWritingAtPath: target) else { throw CLIError("\(path): cannot write to it") }
            defer { try? handle.close() }
            do { try handle.write(contentsOf: Data(text.utf8)) } catch {
                throw CLIError("\(path): cannot write to it (\(error.localizedDescription))")
            }
            return
        }
        do { try text.write(toFile: target, atomically: true, encoding: .utf8) } catch {
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
