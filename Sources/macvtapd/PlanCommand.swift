import ArgumentParser
import MacvtapdCore
import MacvtapdReconciler

struct PlanCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Show what apply would change, without changing anything.",
        usage: "macvtapd plan [-c <path>] [--json] [--detailed-exitcode] [<options>]",
        discussion: """
            Observes the host over rtnetlink and every VM over QMP, and prints one block per binding with \
            the reason and the actions apply would take: + create, ~ update in place, -/+ replace, \
            - destroy. It reads the status document to find bindings that left the configuration and the \
            guest carrier last set, and writes nothing.

            Exit status: 0 success (with --detailed-exitcode: no changes), 1 error or invalid \
            configuration, 2 changes present (only with --detailed-exitcode) or usage error.
            """
    )

    @OptionGroup var config: ConfigOptions

    @Option(
        help: ArgumentHelp(
            "The status document apply and the daemon write; plan only reads it.", valueName: "path"))
    var statusFile: String = StatusStore.defaultPath

    @OptionGroup var options: ObserveOptions

    @Flag(help: "Print the plan as JSON (the format README.md documents).")
    var json = false

    @Flag(help: "Exit 2 when the plan has changes, 0 when it has none.")
    var detailedExitcode = false

    func run() async throws {
        try config.checkPermissions(.warn)
        let desired = try config.loadDesired(outcome: "no plan was made")
        let plan = try await options.reconciler(statusFile: statusFile).plan(desired)
        try PlanOutput.print(plan, json: json)
        if detailedExitcode && plan.hasChanges { throw ExitCode(2) }
    }
}

enum PlanOutput {
    static func print(_ plan: Plan, json: Bool) throws {
        if json {
            Swift.print(try JSONText.encode(PlanDocument(plan)))
        } else {
            Swift.print(PlanRenderer.human(plan))
        }
    }
}
