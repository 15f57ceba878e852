import ArgumentParser
import MacvtapdCore

struct PlanCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Show what apply would change, without changing anything.",
        discussion: """
            Observes the host over rtnetlink and every VM over QMP, and prints one block per binding
            with the reason and the actions apply would take (+ add, - remove, ~ change, -/+ replace).
            Exit status: 0 success (with --detailed-exitcode: no changes), 1 error,
            2 changes present (only with --detailed-exitcode).
            """
    )

    @OptionGroup var options: WorldOptions

    @Flag(help: "Print the plan as JSON (the format README.md documents).")
    var json = false

    @Flag(help: "Exit 2 when the plan has changes, 0 when it has none.")
    var detailedExitcode = false

    func run() async throws {
        let desired = try options.loadDesired()
        let plan = try await options.reconciler().plan(desired)
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
