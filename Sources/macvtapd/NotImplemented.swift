import ArgumentParser

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan", abstract: "Show what apply would change (dry run).")
    @OptionGroup var options: ConfigOptions
    func run() throws { throw notImplemented("plan") }
}

struct Apply: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Converge the host and VMs to the desired state once.")
    @OptionGroup var options: ConfigOptions
    func run() throws { throw notImplemented("apply") }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the daemon: reconcile on events and periodically.")
    @OptionGroup var options: ConfigOptions
    func run() throws { throw notImplemented("run") }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show each binding's phase, reason and last error.")
    func run() throws { throw notImplemented("status") }
}

func notImplemented(_ command: String) -> ExitCode {
    printError("macvtapd \(command): not implemented yet")
    return ExitCode(2)
}
