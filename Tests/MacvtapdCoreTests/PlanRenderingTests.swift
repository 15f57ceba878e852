import Testing

@testable import MacvtapdCore

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

@Suite struct PlanRenderingTests {
    @Test func humanPlanShowsSymbolsReasonsAndSummary() {
        var moved = World.converged
        moved.binding.host = .name("eth1")
        let text = PlanRenderer.human(moved.plan())
        #expect(text.contains("-/+ web1/nic0  host changed from eth0 to eth1"))
        #expect(text.contains("- detach backend mvtd.nic0.p42 + mvtd.nic0.t42"))
        #expect(text.contains("+ create macvtap \(Ownership.macvtapName(for: World.key)) on eth1"))
        #expect(text.contains("~ announce NIC nic0 (guest gratuitous ARP, QEMU RARP)"))
        #expect(text.hasSuffix("Plan: 0 to create, 0 to update, 1 to replace, 0 to destroy; 0 unchanged, 0 waiting."))
    }

    @Test func humanPlanWithoutChanges() {
        let text = PlanRenderer.human(World.converged.plan())
        #expect(text.contains("web1/nic0  Attached: attached to eth0"))
        #expect(text.hasSuffix("No changes: 1 unchanged, 0 waiting."))
    }

    @Test func waitingAndUnknownBindingsAreNotUnchanged() {
        var notRunning = World()
        notRunning.vm = .absent("web1", "no such file")
        #expect(PlanRenderer.summaryLine(notRunning.plan()) == "No changes: 0 unchanged, 1 waiting.")

        var silent = World.converged
        silent.vm = ObservedVM(name: "web1", reachability: .unresponsive("no greeting"))
        let plan = silent.plan()
        #expect(plan.hasUnknowns)
        #expect(
            PlanRenderer.summaryLine(plan) == "No changes known: 0 unchanged, 0 waiting, 1 unknown (VM not answering).")
        let document = PlanDocument(plan)
        #expect(document.summary.unknown == 1 && document.summary.unchanged == 0 && document.summary.waiting == 0)
    }

    @Test func migrationActionsRender() throws {
        var incoming = World()
        incoming.vm.runState = .inmigrate
        let text = PlanRenderer.human(incoming.plan())
        #expect(text.contains("+ create macvtap \(Ownership.macvtapName(for: World.key)) on eth0"))
        var departing = World.converged
        departing.vm.runState = .postmigrate
        let departingText = PlanRenderer.human(departing.plan())
        #expect(departingText.contains("~ take macvtap \(Ownership.macvtapName(for: World.key)) down"))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = String(decoding: try encoder.encode(PlanDocument(departing.plan())), as: UTF8.self)
        #expect(json.contains(#""type":"set_macvtap_down""#))
        #expect(json.contains(#""phase":"MigratedAway""#))
    }

    @Test func jsonPlanIsStable() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = try encoder.encode(PlanDocument(World().plan()))
        let json = String(decoding: data, as: UTF8.self)
        #expect(json.hasPrefix(#"{"bindings":[{"actions":[{"alias":"macvtapd:web1\/nic0","lower":"eth0""#))
        #expect(json.contains(#""type":"attach_backend""#))
        #expect(
            json.contains(
                #"{"nic":"nic0","summary":"announce NIC nic0 (guest gratuitous ARP, QEMU RARP)","type":"announce","vm":"web1"}"#
            ))
        #expect(
            json.contains(
                #""summary":{"create":1,"destroy":0,"replace":0,"unchanged":0,"unknown":0,"update":0,"waiting":0}"#))
        #expect(json.contains(#""format_version":1"#))
        #expect(json.contains(#""reason":{"code":"HostPresent""#))
    }
}
