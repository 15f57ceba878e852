import ArgumentParser
import MacvtapdControl
import MacvtapdCore
import MacvtapdDaemon
import MacvtapdReconciler

struct Apply: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "apply",
        abstract: "Converge the host and VMs to the desired state once.",
        usage: "macvtapd apply [-c <path>] [--dry-run] [--json] [<options>]",
        discussion: """
            Carries out the plan `macvtapd plan` shows. Every step is idempotent: a second apply right \
            after the first changes nothing. A failing binding is reported with the step and the error \
            while the others are still applied. Writes the status document (see --status-file).

            When a daemon answers on --control-socket, it owns the desired state: if -c names its \
            configuration, the daemon reloads it now (an invalid one is reported as here and changes nothing) and \
            apply waits (at most --timeout) until every VM whose bindings changed, or that had work left, was \
            reconciled against it, then prints the outcomes; any other configuration is refused, naming the \
            daemon's (two sources of truth would fight). Without a daemon, apply works on its own.

            Exit status: 0 every binding applied or waiting for something outside macvtapd (a VM not \
            running on this host, a missing host interface); 1 a step failed, a VM's monitor did not \
            answer (its bindings could not be planned), the daemon did not finish within --timeout, \
            the daemon runs with another configuration, or the configuration is invalid; 2 usage error.
            """
    )

    @OptionGroup var config: ConfigOptions
    @OptionGroup var security: InsecureConfigOptions

    @Option(help: ArgumentHelp("Where the JSON status document is read and written.", valueName: "path"))
    var statusFile: String = StatusStore.defaultPath

    @OptionGroup var device: DeviceOptions
    @OptionGroup var control: ControlOptions
    @OptionGroup var options: ObserveOptions

    @Option(
        help: DurationOption.help(
            "With a daemon: how long to wait for every binding to be reconciled.", default: .seconds(30)),
        transform: DurationOption.parser(within: DurationOption.applyTimeout))
    var timeout: Duration = .seconds(30)

    @Flag(help: "Print the plan and stop, exactly as `macvtapd plan` does.")
    var dryRun = false

    @Flag(help: "Print the plan as JSON.")
    var json = false

    func run() async throws {
        try security.check(config)
        if dryRun {
            let (desired, files) = try config.loadDesiredAndFiles(outcome: "nothing was changed")
            let shown = try await PlanOutput.make(
                desired: desired, files: files, control: control, options: options, statusFile: statusFile)
            try shown.print(json: json)
            return
        }
        let report: ApplyReport
        do {
            // A running daemon validates the file itself as it reloads it (it trusts no client's
            // validation), and answers an invalid one with the same file:line:column diagnostics
            // before changing anything: validating it here first would parse it twice.
            if let reply = try await DaemonLink(socket: control.controlSocket).apply(
                config: config.path, timeout: timeout)
            {
                print("Applied by \(DaemonLink.describe(reply.daemon)).\n")
                report = reply.report
            } else {
                let desired = try config.loadDesired(outcome: "nothing was changed")
                let reconciler = try options.reconciler(statusFile: statusFile, deviceDirectory: device.deviceDir)
                let result = try await reconciler.apply(desired, config: .init(path: config.path, valid: true))
                report = ApplyReport(result.plan, outcomes: result.outcomes)
            }
        } catch let error as ControlError {
            refused(error)
        }
        try show(report)
    }

    private func refused(_ error: ControlError) -> Never {
        if error.error == "io.macvtapd.OtherConfig" {
            let own = error.parameters.config ?? "?"
            printError(
                "macvtapd apply: the running daemon (pid \(error.parameters.pid.map(String.init) ?? "?")) owns the "
                    + "desired state and reads \(own); refusing to apply \(config.path), which two sources of truth "
                    + "would fight over. Change \(own) and run `macvtapd apply -c \(own)`, or stop the daemon.")
        } else if error.error == "io.macvtapd.ConfigInvalid" {
            config.reportInvalid(errors: error.parameters.errors ?? [], outcome: "nothing was changed")
        } else {
            printError("macvtapd apply: the daemon refused: \(error)")
        }
        Self.exit(withError: ExitCode(1))
    }

    private func show(_ report: ApplyReport) throws {
        if json {
            Swift.print(try JSONText.encode(report.plan))
        } else {
            Swift.print(report.text)
        }
        Swift.print("")
        for outcome in report.outcomes {
            if let failure = outcome.failure {
                Swift.print("\(outcome.key): FAILED to \(failure)")
            } else {
                Swift.print("\(outcome.key): \(outcome.phase.rawValue)")
            }
        }
        for binding in report.notApplied {
            Swift.print("\(binding.key): NOT APPLIED: \(binding.message)")
        }
        if let untouched = report.untouched, untouched > 0 {
            Swift.print(
                "Left alone: \(untouched) binding(s) of VMs whose bindings did not change and that had nothing left "
                    + "to do (not re-planned; `macvtapd status` shows them).")
        }
        if !report.settled {
            Swift.print(
                "NOT SETTLED: the daemon was still reconciling \(report.pending.joined(separator: ", ")) when the "
                    + "wait ended; `macvtapd status` shows where they stand.")
        }
        let failures = report.failures.count
        Swift.print(
            "Apply complete: \(report.outcomes.count - failures) binding(s) changed, \(failures) failed, "
                + "\(report.waiting) waiting, \(report.notApplied.count) not applied (VM not answering).")
        if failures > 0 || !report.notApplied.isEmpty || !report.settled { throw ExitCode(1) }
    }
}
