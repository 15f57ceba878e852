import ArgumentParser
import MacvtapdCore
import MacvtapdReconciler

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show each binding's phase, reason and last error.",
        discussion: """
            Reads the status document that apply and the daemon write. With -c, the table also lists the \
            bindings of that configuration that have no status yet (added since the last apply or \
            reconcile).

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

    @Flag(help: "Print the status document as JSON.")
    var json = false

    func run() throws {
        var failed = false
        var desired: DesiredState?
        if let config {
            desired = ConfigOptions(config: config).load().desired
            if desired == nil {
                printError("\(config): invalid configuration; bindings without status are not listed")
                failed = true
            }
        }
        let document: StatusDocument?
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
        if json {
            if let document { print(try JSONText.encode(document)) }
        } else if document != nil || desired != nil {
            let empty = StatusDocument(updated: 0, config: nil, bindings: [])
            print(StatusTable.render(document ?? empty, now: Reconciler.now(), desired: desired))
        }
        if failed { throw ExitCode(1) }
    }
}

extension ConfigOptions {
    init(config: String) {
        self.init()
        self.config = config
    }
}
