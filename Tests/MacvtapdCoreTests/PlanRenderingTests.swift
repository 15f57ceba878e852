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
        #expect(text.contains("- detach backend mvtd.nic0.port42 + mvtd.nic0.tap42"))
        #expect(text.contains("+ create macvtap \(Ownership.macvtapName(for: World.key)) on eth1"))
        #expect(text.contains("~ announce NIC nic0 (guest gratuitous ARP, QEMU RARP)"))
        #expect(text.hasSuffix("Plan: 0 to create, 0 to update, 1 to replace, 0 to destroy; 0 unchanged."))
    }

    @Test func humanPlanWithoutChanges() {
        let text = PlanRenderer.human(World.converged.plan())
        #expect(text.contains("web1/nic0  Attached: attached to eth0"))
        #expect(text.hasSuffix("No changes. 1 binding(s) as desired or waiting."))
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
        #expect(json.contains(#""summary":{"create":1,"destroy":0,"replace":0,"unchanged":0,"update":0}"#))
        #expect(json.contains(#""format_version":1"#))
        #expect(json.contains(#""reason":{"code":"HostPresent""#))
    }
}
