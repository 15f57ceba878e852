import Foundation
import MacvtapdCore
import MacvtapdQMP
import MacvtapdTestSupport
import Testing

/// `macvtapd plan` and `apply` end to end: the real binary in a network namespace with veth host
/// interfaces, a real QEMU with NICs on hubs, frames checked through the hub probes.
@Suite(.serialized) struct EndToEndTests {
    static let nic0 = QEMUNIC(id: "nic0", mac: "52:54:00:e2:e0:00", hubID: 10)
    static let nic1 = QEMUNIC(id: "nic1", mac: "52:54:00:e2:e0:01", hubID: 11)

    static func planJSON(_ sandbox: Sandbox) async throws -> [String: Any] {
        let run = try await sandbox.macvtapd("plan", ["--json"])
        #expect(run.status == 0, "plan failed: \(run.stderr)")
        return try JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as! [String: Any]
    }

    static func binding(_ plan: [String: Any], _ nic: String) -> [String: Any]? {
        (plan["bindings"] as? [[String: Any]])?.first { $0["nic"] as? String == nic }
    }

    static func actionTypes(_ binding: [String: Any]?) -> [String] {
        (binding?["actions"] as? [[String: Any]] ?? []).compactMap { $0["type"] as? String }
    }

    /// Our netdevs in QEMU for a NIC: `mvtd.<nic>.*` ports on hubs and taps behind them or alone.
    static func backendIDs(_ network: NetworkInfo, nic: String) -> [String] {
        return network.netdevIDs.filter { $0.hasPrefix("mvtd.\(nic).") }.sorted()
    }

    @Test func applyAttachesAndFramesFlowBothWays() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])

            let apply = try await sandbox.macvtapd("apply")
            #expect(apply.status == 0, "\(apply.stdout)\n\(apply.stderr)")
            #expect(apply.stdout.contains("+   web1/nic0  host up0 is present and NIC nic0 has no backend"))
            #expect(try await sandbox.frameReachesHub(from: "up0", nic: "nic0"), "lower → probe")
            #expect(try await sandbox.frameLeavesThrough("up0", nic: "nic0"), "probe → lower")

            let owned = try await sandbox.macvtaps()
            #expect(owned.map(\.alias) == ["macvtapd:web1/nic0"])
            #expect(Self.backendIDs(try await sandbox.network(), nic: "nic0").count == 2)

            let again = try await sandbox.macvtapd("apply")
            #expect(again.status == 0)
            #expect(again.stdout.contains("No changes:"), "a second apply changes nothing: \(again.stdout)")
            let plan = try await sandbox.macvtapd("plan", ["--detailed-exitcode"])
            #expect(plan.status == 0, "no changes: exit 0")

            let status = try await sandbox.macvtapd("status")
            #expect(status.stdout.contains("web1/nic0  Attached"), "\(status.stdout)")
        }
    }

    @Test func lowerLossDetachesDeadBackendAndReturnReattaches() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])
            #expect(try await sandbox.macvtapd("apply").status == 0)
            let attachedIDs = Self.backendIDs(try await sandbox.network(), nic: "nic0")

            try await sandbox.deleteLower("up0")
            let spinning = try await sandbox.qemuCPU()
            let plan = try await Self.planJSON(sandbox)
            let binding = Self.binding(plan, "nic0")
            #expect(binding?["change"] as? String == "destroy")
            #expect(Self.actionTypes(binding) == ["detach_backend", "set_guest_link"])
            let reason = (binding?["reason"] as? [String: Any])?["message"] as? String ?? ""
            #expect(reason.contains("backend bound to deleted macvtap"), "\(reason)")
            let detailed = try await sandbox.macvtapd("plan", ["--detailed-exitcode"])
            #expect(detailed.status == 2, "changes: exit 2")

            #expect(try await sandbox.macvtapd("apply").status == 0)
            #expect(
                Self.backendIDs(try await sandbox.network(), nic: "nic0").isEmpty, "QEMU no longer holds the dead fd")
            let idle = try await sandbox.qemuCPU()
            #expect(idle < 0.5, "QEMU stops spinning once the dead backend is gone (\(spinning) → \(idle) of a core)")
            #expect(try sandbox.status()?.bindings.first?.phase == .hostMissing)
            #expect(try sandbox.status()?.bindings.first?.guestLink == false)

            try await sandbox.addLower("up0")
            let back = try await Self.planJSON(sandbox)
            #expect(
                Self.actionTypes(Self.binding(back, "nic0")) == [
                    "create_macvtap", "attach_backend", "set_guest_link", "announce",
                ])
            #expect(try await sandbox.macvtapd("apply").status == 0)
            #expect(try await sandbox.frameReachesHub(from: "up0", nic: "nic0"))
            #expect(try await sandbox.frameLeavesThrough("up0", nic: "nic0"))

            let network = try await sandbox.network()
            let nic = try #require(network.nic("nic0"), "the guest NIC was never removed")
            #expect(nic.mac == MACAddress(Self.nic0.mac))
            #expect(network.hubID(ofNIC: "nic0") == 10)
            #expect(Self.backendIDs(network, nic: "nic0") != attachedIDs, "a fresh backend on the new macvtap")
        }
    }

    @Test func movingTheBindingToAnotherLowerReplacesTheBackend() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0", "up1"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])
            #expect(try await sandbox.macvtapd("apply").status == 0)

            try sandbox.writeConfig(bindings: [("nic0", "up1")])
            let plan = try await sandbox.macvtapd("plan")
            #expect(plan.stdout.contains("-/+ web1/nic0  host changed from up0 to up1"), "\(plan.stdout)")
            #expect(plan.stdout.contains("Plan: 0 to create, 0 to update, 1 to replace, 0 to destroy"))
            #expect(try await sandbox.macvtapd("apply").status == 0)

            #expect(try await sandbox.frameReachesHub(from: "up1", nic: "nic0"))
            #expect(try await sandbox.frameLeavesThrough("up1", nic: "nic0"))
            #expect(!(try await sandbox.frameReachesHub(from: "up0", nic: "nic0", within: .milliseconds(600))))
            #expect(!(try await sandbox.frameLeavesThrough("up0", nic: "nic0", within: .milliseconds(600))))
            #expect(try await sandbox.macvtaps().count == 1)
        }
    }

    @Test func removingABindingTearsDownOnlyThatBackend() async throws {
        try await Sandbox.with(nics: [Self.nic0, Self.nic1], lowers: ["up0", "up1"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0"), ("nic1", "up1")])
            #expect(try await sandbox.macvtapd("apply").status == 0)
            #expect(try await sandbox.macvtaps().count == 2)

            try sandbox.writeConfig(bindings: [("nic0", "up0")])
            let apply = try await sandbox.macvtapd("apply")
            #expect(apply.status == 0)
            #expect(
                apply.stdout.contains("-   web1/nic1  binding is no longer in the desired state"), "\(apply.stdout)")

            let network = try await sandbox.network()
            #expect(Self.backendIDs(network, nic: "nic1").isEmpty)
            #expect(network.nic("nic1") != nil, "the guest NIC stays")
            #expect(try await sandbox.macvtaps().map(\.alias) == ["macvtapd:web1/nic0"])
            #expect(try await sandbox.frameReachesHub(from: "up0", nic: "nic0"), "the other binding keeps flowing")
            #expect(try sandbox.status()?.bindings.map(\.nic) == ["nic0"])
        }
    }

    @Test func killedApplyIsRepairedNeverDuplicated() async throws {
        try await Sandbox.with(nics: [Self.nic0, Self.nic1], lowers: ["up0", "up1"]) { sandbox in
            // Kill apply at different points while the bindings swap lowers, then let one apply finish.
            for (round, delay) in [0, 3, 6, 10, 15, 25, 40, 60].enumerated() {
                let swap = round % 2 == 0
                try sandbox.writeConfig(bindings: [("nic0", swap ? "up1" : "up0"), ("nic1", swap ? "up0" : "up1")])
                let apply = try await sandbox.launch("apply", log: "apply.log")
                try await Task.sleep(for: .milliseconds(delay))
                await apply.stop(signal: SIGKILL)
            }
            try sandbox.writeConfig(bindings: [("nic0", "up1"), ("nic1", "up0")])
            let final = try await sandbox.macvtapd("apply")
            #expect(final.status == 0, "\(final.stdout)\n\(final.stderr)")
            #expect(try await sandbox.macvtapd("plan", ["--detailed-exitcode"]).status == 0)

            let aliases = try await sandbox.macvtaps().compactMap(\.alias).sorted()
            #expect(aliases == ["macvtapd:web1/nic0", "macvtapd:web1/nic1"], "one macvtap per binding")
            let network = try await sandbox.network()
            #expect(Self.backendIDs(network, nic: "nic0").count == 2)
            #expect(Self.backendIDs(network, nic: "nic1").count == 2)
            #expect(try await sandbox.frameReachesHub(from: "up0", nic: "nic1"))
            #expect(try await sandbox.frameReachesHub(from: "up1", nic: "nic0"))
        }
    }

    @Test func unreachableVMWaitsAndOthersAreApplied() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(
                """
                version: 1
                vms:
                  web1:
                    qmp: \(sandbox.qemu.qmpSocketPath)
                    nics:
                      nic0: {host: up0}
                  ghost:
                    qmp: \(sandbox.directory.path)/ghost.qmp
                    nics:
                      nic0: {host: up0}
                """)
            let apply = try await sandbox.macvtapd("apply")
            #expect(apply.status == 0, "waiting is not failing: \(apply.stderr)")
            let status = try #require(try sandbox.status())
            #expect(status.binding(BindingKey(vm: "ghost", nic: "nic0"))?.phase == .vmNotRunning)
            #expect(apply.stdout.contains("1 waiting"), "a VM not running here waits: \(apply.stdout)")
            #expect(status.binding(BindingKey(vm: "web1", nic: "nic0"))?.phase == .attached)
            #expect(try await sandbox.frameReachesHub(from: "up0", nic: "nic0"))
        }
    }

    @Test func applyFailsWhenAMonitorDoesNotAnswerAndPlanSaysUnknown() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            // Accepts, never greets: what is behind it cannot be planned, so it is not "unchanged".
            let hung = try ListeningSocket(path: sandbox.directory.path + "/hung.qmp")
            defer { hung.close() }
            try sandbox.writeConfig(
                """
                version: 1
                vms:
                  web1:
                    qmp: \(sandbox.qemu.qmpSocketPath)
                    nics:
                      nic0: {host: up0}
                  wedged:
                    qmp: \(hung.path)
                    nics:
                      nic0: {host: up0}
                """)
            let apply = try await sandbox.macvtapd("apply", ["--qmp-timeout", "1"])
            #expect(apply.status == 1, "\(apply.stdout)")
            #expect(apply.stdout.contains("wedged/nic0: NOT APPLIED"), "\(apply.stdout)")
            let status = try #require(try sandbox.status())
            #expect(status.binding(BindingKey(vm: "web1", nic: "nic0"))?.phase == .attached)
            let plan = try await sandbox.macvtapd("plan", ["--qmp-timeout", "1"])
            #expect(plan.stdout.contains("No changes known: 1 unchanged, 0 waiting, 1 unknown"), "\(plan.stdout)")
        }
    }

    @Test func invalidConfigChangesNothing() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])
            #expect(try await sandbox.macvtapd("apply").status == 0)
            try sandbox.writeConfig("version: 1\nvms:\n  web1:\n    qmp: not/absolute\n    nics: {}\n")
            let apply = try await sandbox.macvtapd("apply")
            #expect(apply.status == 1)
            #expect(apply.stderr.contains("macvtapd.yaml:4:10: error:"), "\(apply.stderr)")
            #expect(try await sandbox.macvtaps().count == 1)
            #expect(Self.backendIDs(try await sandbox.network(), nic: "nic0").count == 2)
        }
    }
}
