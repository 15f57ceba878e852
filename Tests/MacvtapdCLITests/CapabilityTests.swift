import Foundation
import MacvtapdTestSupport
import Testing

/// The capabilities packaging/macvtapd.service grants are the ones macvtapd needs: `apply` with only
/// CAP_NET_ADMIN and CAP_MKNOD (as root, without CAP_DAC_OVERRIDE, under no_new_privs) attaches a
/// backend that carries frames, and without CAP_MKNOD it cannot open the tap device. Every system
/// call that attach makes passes the unit's SystemCallFilter=.
@Suite("capabilities")
struct CapabilityTests {
    static let nic0 = QEMUNIC(id: "nic0", mac: "52:54:00:ca:90:00", hubID: 10)

    /// `ip netns exec` with the sandbox's namespace, then `setpriv` bounding macvtapd to `capabilities`.
    static func apply(_ sandbox: Sandbox, capabilities: [String]) async throws -> ChildResult {
        let bounding = "--bounding-set=-all" + capabilities.map { ",+" + $0 }.joined()
        return try await ChildProcess.run(
            "/usr/sbin/ip",
            [
                "netns", "exec", sandbox.namespace.name, "/usr/bin/setpriv", bounding, "--inh-caps=-all",
                "--no-new-privs", sandbox.binary, "apply", "-c", sandbox.configPath, "--qmp-timeout", "3",
                "--device-dir", sandbox.deviceDirectory, "--status-file", sandbox.statusPath,
            ])
    }

    /// The system calls an attaching `apply` makes (strace) all pass the unit's SystemCallFilter=
    /// lines, expanded with `systemd-analyze syscall-filter`.
    @Test func everySystemCallOfAnAttachPassesTheUnitsFilter() async throws {
        let groups = try await Self.syscallGroups()
        let unit = try String(contentsOfFile: repositoryRoot + "/packaging/macvtapd.service.in", encoding: .utf8)
        var allowed: Set<String> = []
        var denied: Set<String> = []
        for line in unit.split(separator: "\n") where line.hasPrefix("SystemCallFilter=") {
            var value = line.dropFirst("SystemCallFilter=".count)
            let deny = value.hasPrefix("~")
            if deny { value = value.dropFirst() }
            let names = value.split(separator: " ").flatMap { Self.expand(String($0), groups) }
            if deny { denied.formUnion(names) } else { allowed.formUnion(names) }
        }
        #expect(allowed.contains("mknodat") && allowed.contains("ioctl") && !allowed.isEmpty)
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])
            let trace = sandbox.directory.path + "/strace.out"
            let apply = try await ChildProcess.run(
                "/usr/sbin/ip",
                [
                    "netns", "exec", sandbox.namespace.name, "/usr/bin/strace", "-f", "-qq", "-o", trace,
                    sandbox.binary, "apply", "-c", sandbox.configPath, "--qmp-timeout", "3",
                    "--device-dir", sandbox.deviceDirectory, "--status-file", sandbox.statusPath,
                ])
            #expect(apply.status == 0, "\(apply.stdout)\n\(apply.stderr)")
            #expect(try await sandbox.macvtaps().count == 1)
            var used: Set<String> = []
            for line in try String(contentsOfFile: trace, encoding: .utf8).split(separator: "\n") {
                // "1234 name(args) = result", "1234 <... name resumed>", "1234 +++ exited"
                let call = line.drop { $0.isNumber }.drop { $0 == " " }
                let name = call.prefix { $0.isLetter || $0.isNumber || $0 == "_" }
                if !name.isEmpty, call.dropFirst(name.count).first == "(" { used.insert(String(name)) }
            }
            #expect(used.contains("mknodat") || used.contains("mknod"), "the trace saw the tap node made: \(used)")
            for name in used.sorted() {
                #expect(allowed.contains(name) && !denied.contains(name), "the unit's filter refuses \(name)")
            }
        }
    }

    /// `systemd-analyze syscall-filter`: every group's members (system calls and other groups).
    static func syscallGroups() async throws -> [String: [String]] {
        let listing = try await ChildProcess.run("/usr/bin/systemd-analyze", ["syscall-filter", "--no-pager"])
        #expect(listing.status == 0, "\(listing.stderr)")
        var groups: [String: [String]] = [:]
        var current: String?
        for line in listing.stdout.split(separator: "\n") {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("@") {
                current = String(line)
            } else if let group = current, !trimmed.isEmpty, !trimmed.hasPrefix("#") {
                groups[group, default: []].append(trimmed)
            }
        }
        return groups
    }

    static func expand(_ name: String, _ groups: [String: [String]]) -> [String] {
        guard name.hasPrefix("@") else { return [name] }
        return (groups[name] ?? []).flatMap { expand($0, groups) }
    }

    @Test func applyNeedsOnlyNetAdminAndMknod() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])

            let withoutMknod = try await Self.apply(sandbox, capabilities: ["net_admin"])
            #expect(withoutMknod.status == 1, "\(withoutMknod.stdout)\n\(withoutMknod.stderr)")
            #expect(withoutMknod.stdout.contains("FAILED"), "\(withoutMknod.stdout)")

            let apply = try await Self.apply(sandbox, capabilities: ["net_admin", "mknod"])
            #expect(apply.status == 0, "\(apply.stdout)\n\(apply.stderr)")
            #expect(try await sandbox.macvtaps().map(\.alias) == ["macvtapd:web1/nic0"])
            #expect(try await sandbox.frameReachesHub(from: "up0", nic: "nic0"), "lower → probe")
        }
    }
}
