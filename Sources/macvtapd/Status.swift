import ArgumentParser
import MacvtapdCore
import MacvtapdReconciler

#if canImport(Glibc)
    import Glibc
#endif

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show each binding's phase, reason and last error.",
        discussion:
            "Reads the status document that apply and the daemon write. Exit status: 0, or 1 if it is unreadable."
    )

    @Option(help: "The status document to read.")
    var statusFile: String = StatusStore.defaultPath

    @Flag(help: "Print the status document as JSON.")
    var json = false

    func run() throws {
        let document: StatusDocument
        do {
            guard let read = try StatusStore(path: statusFile).read() else {
                printError("\(statusFile): no status yet (has apply or the daemon run?)")
                throw ExitCode(1)
            }
            document = read
        } catch let error as ExitCode {
            throw error
        } catch {
            printError("\(error)")
            throw ExitCode(1)
        }
        if json {
            print(try JSONText.encode(document))
        } else {
            print(StatusTable.render(document, now: Reconciler.now()))
        }
    }
}

enum StatusTable {
    static func render(_ document: StatusDocument, now: Double) -> String {
        let header = ["BINDING", "PHASE", "REASON", "HOST", "LINK", "SINCE", "ATTEMPTS", "MESSAGE"]
        let rows = document.bindings.map { binding in
            [
                binding.key.description, binding.phase.rawValue, binding.reason, binding.lower ?? "-",
                binding.guestLink.map { $0 ? "up" : "down" } ?? "-", age(now - binding.since),
                String(binding.attempts), binding.message,
            ]
        }
        let widths = header.indices.map { column in
            ([header] + rows).map { $0[column].count }.max() ?? 0
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell + String(repeating: " ", count: widths[index] - cell.count)
            }.joined(separator: "  ")
        }
        var lines = [line(header)] + rows.map(line)
        if let config = document.config, !config.valid {
            lines.append("")
            lines.append("config \(config.path) is invalid; the last good desired state stays in force:")
            lines += config.errors.map { "  " + $0 }
        }
        return lines.joined(separator: "\n")
    }

    /// `42s`, `3m`, `5h`, `2d`: how long ago.
    static func age(_ seconds: Double) -> String {
        let s = Int(max(0, seconds))
        if s < 120 { return "\(s)s" }
        if s < 7200 { return "\(s / 60)m" }
        if s < 172_800 { return "\(s / 3600)h" }
        return "\(s / 86400)d"
    }
}
