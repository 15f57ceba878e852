import ArgumentParser
import MacvtapdCore
import MacvtapdReconciler

struct Apply: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Converge the host and VMs to the desired state once.",
        usage: "macvtapd apply [-c <path>] [--dry-run] [--json] [<options>]",
        discussion: """
            Carries out the plan `macvtapd plan` shows. Every step is idempotent: a second apply right \
            after the first changes nothing. A failing binding is reported with the step and the error \
            while the others are still applied. Writes the status document (see --status-file).

            Exit status: 0 every binding applied or waiting for something outside macvtapd (a VM not \
            running on this host, a missing host interface); 1 a step failed, a VM's monitor did not \
            answer (its bindings could not be planned), or the configuration is invalid; 2 usage error.
            """
    )

    @OptionGroup var config: ConfigOptions
    @OptionGroup var security: InsecureConfigOptions

    @Option(help: ArgumentHelp("Where the JSON status document is read and written.", valueName: "path"))
    var statusFile: String = StatusStore.defaultPath

    @OptionGroup var device: DeviceOptions
    @OptionGroup var options: ObserveOptions

    @Flag(help: "Print the plan and stop, exactly as `macvtapd plan` does.")
    var dryRun = false

    @Flag(help: "Print the plan as JSON.")
    var json = false

    func run() async throws {
        try security.check(config)
        let desired = try config.loadDesired(outcome: "nothing was changed")
        let reconciler = try options.reconciler(statusFile: statusFile, deviceDirectory: device.deviceDir)
        if dryRun {
            try PlanOutput.print(try await reconciler.plan(desired), json: json)
            return
        }
        let result = try await reconciler.apply(desired, config: .init(path: config.path, valid: true))
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
        let unknown = result.plan.bindings.filter { $0.standing == .unknown }
        for binding in unknown {
            print("\(binding.key): NOT APPLIED: \(binding.reason.message)")
        }
        print(
            "Apply complete: \(changed - result.failures.count) binding(s) changed, \(result.failures.count) failed, "
                + "\(result.plan.count(.waiting)) waiting, \(unknown.count) not applied (VM not answering).")
        if !result.failures.isEmpty || !unknown.isEmpty { throw ExitCode(1) }
    }
}
