import ArgumentParser

struct NetlinkBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "netlink", abstract: "Create + open + delete of a macvtap, beside `ip link`.")
    func run() async throws { throw ExitCode(2) }
}
