import ArgumentParser

@main
struct Macvtapd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "macvtapd",
        abstract: "Keeps QEMU VM NICs connected to host interfaces through macvtap, declaratively.",
        discussion: """
            macvtapd reads a desired-state YAML file (or a conf.d directory of them) that binds each
            VM NIC to a host interface, observes the host over rtnetlink and each VM over QMP, and
            creates, replaces and tears down macvtap backends so that the two agree.
            """,
        subcommands: [Validate.self, PlanCommand.self, Apply.self, Run.self, Status.self]
    )
}

/// The `-c/--config` option every command that reads the desired state shares.
struct ConfigOptions: ParsableArguments {
    @Option(
        name: [.short, .long],
        help: "A YAML file, or a directory whose *.yaml and *.yml files are merged in name order.")
    var config: String = "/etc/macvtapd"
}
