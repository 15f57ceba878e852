import ArgumentParser
import MacvtapdControl
import MacvtapdCore
import MacvtapdReconciler

#if canImport(Glibc)
    import Glibc
#endif

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show each binding's phase, reason and last error.",
        usage: "macvtapd status [-c <path>] [--json] [<options>]",
        discussion: """
            Asks the daemon on --control-socket when one answers: its live status and what it is doing now. \
            Otherwise reads the status document that apply and the daemon write, and says when it was \
            written: no daemon keeps it current. With -c, the table also lists the bindings of that \
            configuration that have no status yet (added since the last apply or reconcile).

            Exit status: 0, or 1 when there is no status document yet, it cannot be read, or the \
            configuration given with -c is invalid.
            """
    )

    @Option(
        name: [.short, .long],
        help: ArgumentHelp(
            "Also list the bindings of this configuration (a YAML file or a directory) that have no status yet.",
            valueName: "path"))
    var config: String?

    @Option(help: ArgumentHelp("The status document to read.", valueName: "path"))
    var statusFile: String = StatusStore.defaultPath

    @OptionGroup var control: ControlOptions

    @Flag(help: "Print the status document as JSON.")
    var json = false

    func run() async throws {
        var failed = false
        var desired: DesiredState?
        if let config {
            desired = ConfigOptions(config: config).load().desired
            if desired == nil {
                printError("\(config): invalid configuration; bindings without status are not listed")
                failed = true
            }
        }
        let live: StatusReply?
        do {
            live = try await DaemonLink(socket: control.controlSocket).status()
        } catch let error as ControlError {
            printError("macvtapd: the daemon refused the status request: \(error)")
            throw ExitCode(1)
        }
        let document: StatusDocument?
        let origin: String
        if let live {
            document = live.status
            origin = "Live from \(DaemonLink.describe(live.daemon)); \(Self.describe(live.activity))."
        } else {
            do {
                document = try StatusStore(path: statusFile).read()
            } catch {
                printError("\(error)")
                throw ExitCode(1)
            }
            if document == nil {
                printError("\(statusFile): no status yet (has apply or the daemon run?)")
                failed = true
            }
            origin =
                "From \(statusFile), written \(Self.timestamp(document?.updated ?? 0)); no daemon is running "
                + "(nothing answers on \(control.controlSocket)), so nothing has kept it current since."
        }
        if json {
            if document != nil { printError(origin) }
            if let document { print(try JSONText.encode(document)) }
        } else if document != nil || desired != nil {
            if document != nil { print(origin) }
            let empty = StatusDocument(updated: 0, config: nil, bindings: [])
            print(StatusTable.render(document ?? empty, now: Reconciler.now(), desired: desired))
        }
        if failed { throw ExitCode(1) }
    }

    /// "reconciling web1; 2 VM(s) queued", or "idle".
    static func describe(_ activity: DaemonActivity) -> String {
        var parts: [String] = []
        if activity.resyncing { parts.append("resyncing") }
        if !activity.reconciling.isEmpty { parts.append("reconciling " + activity.reconciling.joined(separator: ", ")) }
        if !activity.queued.isEmpty { parts.append("queued " + activity.queued.joined(separator: ", ")) }
        return parts.isEmpty ? "idle" : parts.joined(separator: "; ")
    }

    /// `2026-12-06 16:02:10 UTC (3d ago)`.
    static func timestamp(_ seconds: Double) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        var buffer = [CChar](repeating: 0, count: 64)
        let length = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M:%S UTC", &parts)
        let text = String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return "\(text) (\(StatusTable.age(Reconciler.now() - seconds)) ago)"
    }
}

extension ConfigOptions {
    init(config: String) {
        self.init()
        self.config = config
    }
}
