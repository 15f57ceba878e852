import MacvtapdTestSupport
import Testing

/// The capabilities packaging/macvtapd.service grants are the ones macvtapd needs: `apply` with only
/// CAP_NET_ADMIN and CAP_MKNOD (as root, without CAP_DAC_OVERRIDE, under no_new_privs) attaches a
/// backend that carries frames, and without CAP_MKNOD it cannot open the tap device.
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

    @Test func applyNeedsOnlyNetAdminAndMknod() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])

            let withoutMknod = try await Self.apply(sandbox, capabilities: ["net_admin"])
            #expect(withoutMknod.status == 1, "\(withoutMknod.stdout)\n\(withoutMknod.stderr)")
            #expect(withoutMknod.stdout.contains("FAILED"), "\(withoutMknod.stdout)")

            let apply = try await Self.apply(sandbox, capabilities: ["net_admin", "mknod"])
            #expect(apply.status == 0, "\(apply.stdout)\n\(apply.stderr)")
            #expect(try sandbox.macvtaps().map(\.alias) == ["macvtapd:web1/nic0"])
            #expect(try await sandbox.frameReachesHub(from: "up0", nic: "nic0"), "lower → probe")
        }
    }
}
