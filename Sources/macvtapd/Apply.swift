import ArgumentParser
import MacvtapdCore
import MacvtapdReconciler

struct Apply: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Converge the host and VMs to the desired state once.",
        discussion: """
            Carries out the plan `macvtapd plan` shows. Every step is idempotent: a second apply right
            after the first changes nothing. A failing binding is reported with the step and the error
            while the others are still applied. Writes the status document (see --status-file).
            Exit status: 0 all bindings applied, 1 a binding failed or the config is invalid.
            """
    )

    @OptionGroup var options: WorldOptions

    @Flag(help: "Print the plan and stop, exactly as `macvtapd plan` does.")
    var dryRun = false

    @Flag(help: "Print the plan as JSON.")
    var json = false

    func run() async throws {
        let desired = try options.loadDesired()
        let reconciler = try options.reconciler()
        if dryRun {
            try PlanOutput.print(try await reconciler.plan(desired), json: json)
            return
        }
        let result = try await reconciler.apply(
            desired, config: .init(path: options.config.config, valid: true))
        try PlanOutput.print(result.plan, json: json)
        print("")
        for outcome in result.outcomes where !outcome.plan.actions.isEmpty {
            if let failure = outcome.failure {
                print("\(outcome.key): FAILED to \(failure)")
            } else {
                print("\(outcome.key): \(outcome.plan.phase.rawValue)")
            }
        }
        let changed = result.outcomes.filter { !$0.plan.actions.isEmpty }.count
        print("Apply complete: \(changed - result.failures.count) binding(s) changed, \(result.failures.count) failed.")
        if !result.failures.isEmpty { throw ExitCode(1) }
    }
}
