import ArgumentParser
import MacvtapdConfig
import MacvtapdControl
import MacvtapdCore
import MacvtapdReconciler

struct PlanCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Show what apply would change, without changing anything.",
        usage: "macvtapd plan [-c <path>] [--json] [--detailed-exitcode] [<options>]",
        discussion: """
            Prints one block per binding with the reason and the actions apply would take: + create, \
            ~ update in place, -/+ replace, - destroy. Changes nothing.

            When a daemon answers on --control-socket, the configuration is validated here, then planned by \
            the daemon against its live observations (it holds every VM's QMP monitor); the output says \
            so. The configuration need not be the daemon's own: the plan says what would change if it \
            were deployed. Without a daemon, plan observes the host over rtnetlink and every VM over QMP \
            itself, and reads the status document for bindings that left the configuration and the guest \
            carrier last set.

            Exit status: 0 success (with --detailed-exitcode: no changes), 1 error, invalid configuration, \
            or (with --detailed-exitcode) bindings whose VM did not answer and no changes otherwise, 2 changes \
            present (only with --detailed-exitcode) or usage error.
            """
    )

    @OptionGroup var config: ConfigOptions

    @Option(
        help: ArgumentHelp(
            "The status document apply and the daemon write; plan only reads it.", valueName: "path"))
    var statusFile: String = StatusStore.defaultPath

    @OptionGroup var control: ControlOptions
    @OptionGroup var options: ObserveOptions

    @Flag(help: "Print the plan as JSON (the format README.md documents).")
    var json = false

    @Flag(help: "Exit 2 when the plan has changes, 0 when it has none.")
    var detailedExitcode = false

    func run() async throws {
        try config.checkPermissions(.warn)
        let (desired, files) = try config.loadDesiredAndFiles(outcome: "no plan was made")
        let shown = try await PlanOutput.make(
            desired: desired, files: files, control: control, options: options, statusFile: statusFile)
        try shown.print(json: json)
        if detailedExitcode { try shown.exitForDetailedCode() }
    }
}

/// A plan as the CLI shows it: from the daemon, or made here.
struct PlanOutput {
    var document: PlanDocument
    var text: String
    /// The daemon that made it; nil when it was made here.
    var daemon: DaemonInfo?

    init(_ plan: Plan) {
        document = PlanDocument(plan)
        text = PlanRenderer.human(plan)
    }

    init(_ reply: PlanReply) {
        document = reply.plan
        text = reply.text
        daemon = reply.daemon
    }

    /// Asks the daemon when one answers, else observes here.
    static func make(
        desired: DesiredState, files: [ConfigSource], control: ControlOptions, options: ObserveOptions,
        statusFile: String
    ) async throws -> PlanOutput {
        do {
            if let reply = try await DaemonLink(socket: control.controlSocket).plan(files) { return PlanOutput(reply) }
        } catch let error as ControlError {
            printError("macvtapd: the daemon refused the plan: \(error)")
            throw ExitCode(1)
        }
        return PlanOutput(try await options.reconciler(statusFile: statusFile).plan(desired))
    }

    func print(json: Bool) throws {
        let origin = daemon.map { "Plan made by \(DaemonLink.describe($0)) from its live observations." }
        if json {
            // Standard output stays one JSON document; where it came from goes to standard error.
            if let origin { printError(origin) }
            Swift.print(try JSONText.encode(document))
        } else {
            if let origin { Swift.print(origin + "\n") }
            Swift.print(text)
        }
    }

    /// 2 with changes; 1 when bindings could not be planned (their VM did not answer) and nothing
    /// else changes: "no changes" would be a claim about bindings nobody could observe.
    func exitForDetailedCode() throws {
        if document.changes { throw ExitCode(2) }
        if document.summary.unknown > 0 {
            printError(
                "\(document.summary.unknown) binding(s) could not be planned: their VM did not answer; "
                    + "no changes cannot be claimed")
            throw ExitCode(1)
        }
    }
}
