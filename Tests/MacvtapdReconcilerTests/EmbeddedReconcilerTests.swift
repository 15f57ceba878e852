import Logging
import MacvtapdCore
import MacvtapdTestSupport
import Testing

@testable import MacvtapdReconciler

#if canImport(Glibc)
    import Glibc
#endif

/// The reconciler against the in-memory host and VMs: every rule that does not need a real kernel.
@Suite struct EmbeddedReconcilerTests {
    struct Fixture {
        let host = EmbeddedHost(lowers: ["eth0", "eth1"])
        let web1 = EmbeddedVM(name: "web1", nics: ["nic0": 10, "nic1": 11])
        let db1 = EmbeddedVM(name: "db1", nics: ["nic0": 20])
        let statusPath = "/tmp/macvtapd-embedded-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).json"

        var desired = DesiredState(vms: [
            "web1": VMSpec(
                name: "web1", qmp: "/run/web1.sock",
                nics: [
                    "nic0": NICBinding(key: .init(vm: "web1", nic: "nic0"), host: .name("eth0")),
                    "nic1": NICBinding(key: .init(vm: "web1", nic: "nic1"), host: .name("eth1"), mode: .vepa),
                ]),
            "db1": VMSpec(
                name: "db1", qmp: "/run/db1.sock",
                nics: ["nic0": NICBinding(key: .init(vm: "db1", nic: "nic0"), host: .name("eth0"))]),
        ])

        var reconciler: Reconciler {
            Reconciler(
                host: host, connector: EmbeddedConnector(vms: ["web1": web1, "db1": db1]),
                store: StatusStore(path: statusPath),
                logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        }

        func cleanup() { unlink(statusPath) }
    }

    @Test func applyConvergesAndSecondApplyIsANoOp() async throws {
        let world = Fixture()
        defer { world.cleanup() }
        let first = try await world.reconciler.apply(world.desired, config: nil)
        #expect(first.plan.count(.create) == 3)
        #expect(first.failures.isEmpty)
        #expect(world.host.macvtaps.count == 3)
        #expect(world.web1.netdevIDs.count == 4)
        #expect(world.web1.link("nic0") == true)

        let second = try await world.reconciler.apply(world.desired, config: nil)
        #expect(!second.plan.hasChanges, "\(PlanRenderer.human(second.plan))")
        #expect(second.status?.bindings.map(\.phase) == [.attached, .attached, .attached])
    }

    @Test func everyAttachAnnouncesTheNICAfterRaisingItsLinkUnlessTurnedOff() async throws {
        var world = Fixture()
        defer { world.cleanup() }
        world.desired.vms["web1"]?.nics["nic1"]?.announce = false
        _ = try await world.reconciler.apply(world.desired, config: nil)
        let calls = world.web1.calls
        #expect(calls.filter { $0.hasPrefix("announce") } == ["announce nic0"])
        let link = try #require(calls.firstIndex(of: "link nic0 true"))
        #expect(calls.firstIndex(of: "announce nic0").map { $0 > link } == true, "\(calls)")
        #expect(world.db1.calls.contains("announce nic0"))

        // Converged: nothing moved, nothing to announce.
        _ = try await world.reconciler.apply(world.desired, config: nil)
        #expect(world.web1.calls.filter { $0.hasPrefix("announce") }.count == 1)
    }

    @Test func lowerLossDetachesAndReturnReattaches() async throws {
        let world = Fixture()
        defer { world.cleanup() }
        _ = try await world.reconciler.apply(world.desired, config: nil)
        world.host.removeLower("eth0")
        let loss = try await world.reconciler.apply(world.desired, config: nil)
        #expect(loss.plan.count(.destroy) == 2)
        #expect(world.web1.netdevIDs.allSatisfy { !$0.hasPrefix("mvtd.nic0.") })
        #expect(world.web1.link("nic0") == false)
        #expect(world.web1.netdevIDs.contains { $0.hasPrefix("mvtd.nic1.") }, "eth1's binding is untouched")

        world.host.addLower("eth0")
        let back = try await world.reconciler.apply(world.desired, config: nil)
        #expect(back.plan.count(.create) == 2)
        #expect(world.web1.link("nic0") == true)
        #expect(world.host.macvtaps.count == 3)
        #expect(!(try await world.reconciler.plan(world.desired)).hasChanges)
    }

    @Test func oneFailingVMDoesNotStopTheOthers() async throws {
        let world = Fixture()
        defer { world.cleanup() }
        world.db1.state.withLock { $0.failAttach = true }
        let result = try await world.reconciler.apply(world.desired, config: nil)
        #expect(result.failures.map(\.key) == [BindingKey(vm: "db1", nic: "nic0")])
        #expect(result.failures.first?.failure?.error == "injected QMP failure")
        #expect(world.web1.netdevIDs.count == 4)
        let failed = try #require(result.status?.binding(BindingKey(vm: "db1", nic: "nic0")))
        #expect(failed.phase == .failed)
        #expect(failed.attempts == 1)
        #expect(failed.lastError?.contains("attach") == true)

        let again = try await world.reconciler.apply(world.desired, config: nil)
        #expect(again.status?.binding(BindingKey(vm: "db1", nic: "nic0"))?.attempts == 2)

        world.db1.state.withLock { $0.failAttach = false }
        let fixed = try await world.reconciler.apply(world.desired, config: nil)
        #expect(fixed.failures.isEmpty)
        let healed = try #require(fixed.status?.binding(BindingKey(vm: "db1", nic: "nic0")))
        #expect(healed.phase == .attached)
        #expect(healed.attempts == 0)
        #expect(!(try await world.reconciler.plan(world.desired)).hasChanges)
    }

    @Test func unreachableVMKeepsItsBackendsAndOthersConverge() async throws {
        let world = Fixture()
        defer { world.cleanup() }
        _ = try await world.reconciler.apply(world.desired, config: nil)
        world.web1.state.withLock { $0.reachable = .unresponsive("timed out") }
        var desired = world.desired
        desired.vms["db1"]?.nics["nic0"]?.host = .name("eth1")
        let result = try await world.reconciler.apply(desired, config: nil)
        #expect(result.plan.count(.replace) == 1)
        #expect(world.host.macvtaps.count == 3, "web1's macvtaps are kept while it does not answer")
        let status = try #require(result.status)
        #expect(status.binding(BindingKey(vm: "web1", nic: "nic0"))?.phase == .vmUnreachable)
        #expect(status.binding(BindingKey(vm: "db1", nic: "nic0"))?.lower == "eth1")
    }

    @Test func removedBindingIsTornDownAndForgotten() async throws {
        let world = Fixture()
        defer { world.cleanup() }
        _ = try await world.reconciler.apply(world.desired, config: nil)
        var desired = world.desired
        desired.vms["web1"]?.nics["nic1"] = nil
        let result = try await world.reconciler.apply(desired, config: nil)
        #expect(result.plan.count(.destroy) == 1)
        #expect(world.web1.netdevIDs.allSatisfy { $0.hasPrefix("mvtd.nic0.") })
        #expect(world.host.macvtaps.count == 2)
        #expect(result.status?.bindings.count == 2)
    }

    @Test func removedVMIsTornDownThroughItsRecordedSocket() async throws {
        let world = Fixture()
        defer { world.cleanup() }
        _ = try await world.reconciler.apply(world.desired, config: nil)
        var desired = world.desired
        desired.vms["db1"] = nil
        _ = try await world.reconciler.apply(desired, config: nil)
        #expect(world.db1.netdevIDs.isEmpty, "detached through the QMP path the status remembered")
        #expect(world.host.macvtaps.count == 2)
    }

    @Test func freshReconcilerAdoptsConvergedWorld() async throws {
        let world = Fixture()
        defer { world.cleanup() }
        _ = try await world.reconciler.apply(world.desired, config: nil)
        let operations = world.host.operations.count
        let restarted = world.reconciler
        let plan = try await restarted.plan(world.desired)
        #expect(!plan.hasChanges)
        #expect(world.host.operations.count == operations)
    }
}
