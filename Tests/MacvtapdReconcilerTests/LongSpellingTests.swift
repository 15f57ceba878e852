import MacvtapdCore
import MacvtapdNetlink
import MacvtapdQMP
import MacvtapdTestSupport
import Testing

/// A host upgraded from a macvtapd that spelt its QEMU ids long (`mvtd.<nic>.tap<ifindex>`,
/// `mvtd.<nic>.port<ifindex>`, fd name `mvtd.<nic>.fd`): the new binary, which adds backends with
/// the short spelling, still recognises those backends as its own, with the real kernel and QEMU.
@Suite(.serialized) struct LongSpellingTests {
    static let nic0 = QEMUNIC(id: "nic0", mac: "52:54:00:e2:e0:10", hubID: 10)

    /// Adopted as they are (a second apply changes nothing, frames flow), then replaced when the
    /// binding moves: netdev_del of their own long ids, a short-spelled backend on the new lower,
    /// and the guest NIC never unplugged.
    @Test func backendsAnOlderReleaseAddedAreAdoptedThenReplaced() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0", "up1"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])
            #expect(try await sandbox.macvtapd("apply").status == 0)
            let attached = try #require(
                try await sandbox.network().netdevIDs.compactMap(Ownership.parseBackendID).first?.ids)
            #expect(attached.spelling == .short)

            let old = Ownership.BackendIDs(nic: "nic0", ifindex: attached.ifindex, spelling: .long)
            try await Self.respell(attached, as: old, hub: Self.nic0.hubID, in: sandbox)
            #expect(EndToEndTests.backendIDs(try await sandbox.network(), nic: "nic0") == [old.port, old.tap])

            let again = try await sandbox.macvtapd("apply")
            #expect(again.stdout.contains("No changes:"), "the long-spelled backend is adopted: \(again.stdout)")
            #expect(try await sandbox.frameReachesHub(from: "up0", nic: "nic0"))

            try sandbox.writeConfig(bindings: [("nic0", "up1")])
            let move = try await sandbox.macvtapd("apply")
            #expect(move.status == 0, "\(move.stdout)\n\(move.stderr)")
            let ids = EndToEndTests.backendIDs(try await sandbox.network(), nic: "nic0")
            #expect(ids.count == 2 && !ids.contains(old.port) && !ids.contains(old.tap), "\(ids)")
            #expect(ids.compactMap(Ownership.parseBackendID).allSatisfy { $0.ids.spelling == .short }, "\(ids)")
            #expect(try await sandbox.frameReachesHub(from: "up1", nic: "nic0"))
            #expect(try await sandbox.macvtaps().count == 1)
            let network = try await sandbox.network()
            #expect(network.nics.map(\.id) == ["nic0"], "the guest NIC stays")
            #expect(network.hubID(ofNIC: "nic0") == Self.nic0.hubID, "on its own hub")
        }
    }

    /// Swaps a backend for one on the same macvtap spelt as an older release added it, through
    /// the test's own monitor (getfd names belong to the monitor that received them).
    static func respell(
        _ current: Ownership.BackendIDs, as old: Ownership.BackendIDs, hub: Int, in sandbox: Sandbox
    ) async throws {
        let sysfs = try NetworkNamespaceSysfs(of: sandbox.namespace)
        defer { sysfs.unmount() }
        let name = Ownership.macvtapName(for: BindingKey(vm: "web1", nic: current.nic))
        let tap = try MacvtapDevice(sysfsRoot: sysfs.path, runtimeDirectory: sandbox.deviceDirectory)
            .open(name: name, index: current.ifindex)
        defer { tap.close() }
        let client = try await QMPClient.connect(to: sandbox.testMonitorPath)
        do {
            try await client.deleteNetdev(id: current.port)
            try await client.deleteNetdev(id: current.tap)
            try await client.addTapNetdev(id: old.tap, fd: try tap.withRawValue { $0 }, fdName: "mvtd.\(old.nic).fd")
            try await client.addHubPort(id: old.port, hubID: hub, netdev: old.tap)
        } catch {
            await client.close()
            throw error
        }
        await client.close()
    }
}
