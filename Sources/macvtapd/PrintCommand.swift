import ArgumentParser
import MacvtapdCore

/// `macvtapd print qemu-args|libvirt-xml VM`: what a VM's launcher adds so macvtapd can manage it.
struct PrintCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "print",
        abstract: "Print what a VM's launcher adds so macvtapd can manage its NICs.",
        discussion: """
            Derived from the desired state, so the launcher and the daemon cannot disagree: the QMP \
            monitor reserved for macvtapd and, per NIC, the placeholder hubport and the guest device on \
            it, with its model, MAC and PCI placement as configured.
            """,
        subcommands: [QEMUArgs.self, LibvirtXML.self]
    )

    /// The VM named on the command line, from a valid configuration.
    static func launchArguments(config: ConfigOptions, vm name: String) throws -> LaunchArguments {
        let desired = try config.loadDesired(outcome: "nothing was printed")
        guard let vm = desired.vms[name] else {
            let known = desired.vms.keys.sorted().joined(separator: ", ")
            printError("\(config.path): no VM '\(name)' (declared: \(known.isEmpty ? "none" : known))")
            throw ExitCode(1)
        }
        let arguments = LaunchArguments(vm)
        for nic in arguments.nics where nic.mac == nil && !nic.followsGuestMAC {
            printError(
                "macvtapd: warning: NIC '\(nic.key.nic)' of VM '\(name)' has no 'mac', so QEMU gives it a default "
                    + "MAC that other VMs share; set 'mac:' to the VM's own")
        }
        return arguments
    }

    struct QEMUArgs: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "qemu-args",
            abstract: "Print the QEMU arguments that prepare a VM for macvtapd, one per line.",
            discussion: """
                One argument per line, for `qemu-system-x86_64 ... $(macvtapd print qemu-args web1)` \
                (paths without spaces) and for launch scripts that read lines; --shell prints one line \
                quoted for a POSIX shell.

                Exit status: 0 printed, 1 invalid configuration or unknown VM, 2 usage error.
                """
        )

        @OptionGroup var config: ConfigOptions
        @Argument(help: "The VM, as named under 'vms:'.") var vm: String
        @Flag(help: "One line, each argument quoted for a POSIX shell.") var shell = false

        func run() throws {
            let arguments = try PrintCommand.launchArguments(config: config, vm: vm)
            print(shell ? arguments.shellLine : arguments.arguments.joined(separator: "\n"))
        }
    }

    struct LibvirtXML: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "libvirt-xml",
            abstract: "Print a <qemu:commandline> element that prepares a libvirt domain for macvtapd.",
            discussion: """
                The element declares its own xmlns:qemu, so it can be pasted into a domain's XML \
                (virsh edit) as it stands, as the last child of <domain>.

                Exit status: 0 printed, 1 invalid configuration or unknown VM, 2 usage error.
                """
        )

        @OptionGroup var config: ConfigOptions
        @Argument(help: "The VM, as named under 'vms:'.") var vm: String

        func run() throws {
            print(try PrintCommand.launchArguments(config: config, vm: vm).libvirtXML)
        }
    }
}
