import MacvtapdCore
import MacvtapdQMP
import MacvtapdTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Runs `body` against a freshly started QEMU with a connected client; always closes the client
/// and terminates QEMU.
func withQEMU(
    _ options: QEMUOptions = QEMUOptions(), _ body: (QEMUProcess, QMPClient) async throws -> Void
) async throws {
    let qemu = try await QEMUProcess.launch(options)
    do {
        let client = try await QMPClient.connect(to: qemu.qmpSocketPath)
        do {
            try await body(qemu, client)
        } catch {
            await client.close()
            throw error
        }
        await client.close()
    } catch {
        await qemu.terminate()
        throw error
    }
    await qemu.terminate()
}

@Suite struct QEMUIntegrationTests {
    let mac0 = MACAddress("52:54:00:12:34:56")!

    @Test func greetingStatusDevicesAndNIC() async throws {
        try await withQEMU { _, client in
            #expect(client.greeting.major >= 7)
            #expect(client.greeting.capabilities.contains("oob"))
            #expect(try await client.queryStatus() == VMStatus(running: true, status: "running"))
            #expect(try await client.peripheralDevices() == [PeripheralDevice(id: "nic0", type: "virtio-net-pci")])
            #expect(try await client.nicMAC(id: "nic0") == mac0)
            #expect(try await client.deviceMACs() == ["nic0": mac0])
            #expect(try await client.nicNetdev(id: "nic0") == "nic0.port")
            let filter = try await client.queryRxFilter(name: "nic0")
            #expect(filter.name == "nic0")
            #expect(filter.mainMAC == mac0)
            try await client.announceSelf()
            try await client.announceSelf(AnnounceParameters(initial: .milliseconds(10), rounds: 1))
            try await client.setLink(name: "nic0", up: false)
            try await client.setLink(name: "nic0", up: true)
        }
    }

    @Test func qemuErrorsBecomeTypedErrors() async throws {
        try await withQEMU { _, client in
            await #expect(
                throws: QMPError.commandFailed(
                    command: "netdev_del", class: "DeviceNotFound", description: "Device 'nope' not found")
            ) { try await client.deleteNetdev(id: "nope") }
            await #expect(
                throws: QMPError.commandFailed(
                    command: "closefd", class: "GenericError", description: "File descriptor named 'nope' not found")
            ) { try await client.closefd(name: "nope") }
            do {
                try await client.execute("no-such-command")
                Issue.record("unknown command accepted")
            } catch let error as QMPError {
                #expect(error.qemuErrorClass == "CommandNotFound")
            }
            do {
                _ = try await client.nicMAC(id: "nicX")
                Issue.record("missing NIC accepted")
            } catch let error as QMPError {
                #expect(error.qemuErrorClass == "DeviceNotFound")
            }
            // getfd without SCM_RIGHTS is refused by QEMU, and the connection stays usable.
            await #expect(throws: QMPError.self) { try await client.execute("getfd", arguments: ["fdname": "x"]) }
            #expect(try await client.queryStatus().running)
        }
    }

    @Test func infoNetworkFollowsNetdevAddAndDel() async throws {
        try await withQEMU { _, client in
            let before = try await client.networkInfo()
            #expect(before.hub(10)?.ports.map(\.id) == ["nic0.port"])
            #expect(before.nic("nic0")?.peer == .hubPort(hubID: 10, portID: "nic0.port"))
            #expect(before.nic("nic0")?.mac == mac0)

            try await client.addHubPort(id: "spare", hubID: 10, netdev: nil)
            try await client.addHubPort(id: "other", hubID: 20, netdev: nil)
            let added = try await client.networkInfo()
            #expect(Set(added.hub(10)?.ports.map(\.id) ?? []) == ["nic0.port", "spare"])
            #expect(added.hub(20)?.ports == [.init(id: "other", peer: nil)])

            await #expect(throws: QMPError.self) { try await client.addHubPort(id: "spare", hubID: 10, netdev: nil) }
            try await client.deleteNetdev(id: "spare")
            try await client.deleteNetdev(id: "other")
            let after = try await client.networkInfo()
            #expect(after.hub(10) == before.hub(10))
            // QEMU never frees a hub: an emptied hub stays listed with no ports.
            #expect(after.hub(20) == NetworkInfo.Hub(id: 20, ports: []))
        }
    }

    @Test func tapFdPassedWithGetfdCarriesFramesBothWays() async throws {
        let probe = try Probe()
        defer { probe.close() }
        let tap = try await ProbeTap.make()
        defer { tap.close() }
        let options = QEMUOptions(probes: [(probe, 10)])
        try await withQEMU(options) { _, client in
            try await client.addTapNetdev(id: "T1", fd: tap.fd, fdName: "F1")
            try await client.addHubPort(id: "P1", hubID: 10, netdev: "T1")
            let info = try await client.networkInfo()
            let port = try #require(info.hub(10)?.port("P1"))
            #expect(port.peer?.id == "T1")
            #expect(port.peer?.type == "tap")
            // netdev_add consumed the named fd: QEMU no longer knows "F1".
            await #expect(throws: QMPError.self) { try await client.closefd(name: "F1") }

            // Hub -> tap fd -> interface.
            let inbound = EthernetFrame.uniqueMarker()
            try probe.send(EthernetFrame.make(payload: inbound))
            let atTap = await tap.receive(timeout: .seconds(5), matching: FrameFilter(marker: inbound))
            #expect(atTap != nil, "frame sent into the hub never came out of the tap interface")

            // Interface -> tap fd -> hub.
            let outbound = EthernetFrame.uniqueMarker()
            try tap.send(EthernetFrame.make(payload: outbound))
            let atProbe = await probe.receive(timeout: .seconds(5), matching: FrameFilter(marker: outbound))
            #expect(atProbe != nil, "frame sent on the tap interface never reached the hub")

            // Detach: the hub no longer reaches the tap.
            try await client.deleteNetdev(id: "P1")
            try await client.deleteNetdev(id: "T1")
            #expect(try await client.networkInfo().hub(10)?.port("P1") == nil)
            let afterDetach = EthernetFrame.uniqueMarker()
            try probe.send(EthernetFrame.make(payload: afterDetach))
            #expect(await tap.receive(timeout: .milliseconds(300), matching: FrameFilter(marker: afterDetach)) == nil)
        }
    }

    @Test func refusedTapNetdevDoesNotLeaveTheFdInQEMU() async throws {
        let tap = try await ProbeTap.make()
        defer { tap.close() }
        try await withQEMU { _, client in
            try await client.addHubPort(id: "taken", hubID: 30, netdev: nil)
            do {
                try await client.addTapNetdev(id: "taken", fd: tap.fd, fdName: "F2")
                Issue.record("duplicate netdev id accepted")
            } catch let error as QMPError {
                #expect(error.qemuErrorClass == "GenericError")
                #expect(error.description.contains("Duplicate ID 'taken'"))
            }
            // addTapNetdev closed "F2" in QEMU after the refusal.
            await #expect(
                throws: QMPError.commandFailed(
                    command: "closefd", class: "GenericError", description: "File descriptor named 'F2' not found")
            ) { try await client.closefd(name: "F2") }
            // And an explicit getfd/closefd pair works.
            try await client.getfd(name: "F3", fd: tap.fd)
            try await client.closefd(name: "F3")
        }
    }

    @Test func stopContAndQuitProduceEvents() async throws {
        try await withQEMU { qemu, client in
            var events = client.events.makeAsyncIterator()
            try await client.execute("stop")
            #expect(await events.next()?.name == "STOP")
            #expect(try await client.queryStatus() == VMStatus(running: false, status: "paused"))
            try await client.execute("cont")
            #expect(await events.next()?.name == "RESUME")
            try await client.execute("quit")
            let shutdown = await events.next()
            #expect(shutdown?.name == "SHUTDOWN")
            #expect(shutdown?.data["reason"] == "host-qmp-quit")
            #expect(await events.next() == nil, "event stream must end when QEMU closes the monitor")
            #expect(await qemu.waitForExit(timeout: .seconds(5)))
            await #expect(throws: QMPError.self) { try await client.queryStatus() }
        }
    }

    @Test func pausedVMReportsPrelaunch() async throws {
        try await withQEMU(QEMUOptions(paused: true)) { _, client in
            let status = try await client.queryStatus()
            #expect(status == VMStatus(running: false, status: "prelaunch"))
        }
    }

    @Test func killedQEMUFailsTheConnectionAndConnectNamesTheSocket() async throws {
        try await withQEMU { qemu, client in
            let events = Task {
                var count = 0
                for await _ in client.events { count += 1 }
                return count
            }
            await offPool { qemu.kill() }
            _ = await events.value
            #expect(client.closeReason == "peer closed the connection")
            do {
                _ = try await client.queryStatus()
                Issue.record("command on a dead connection succeeded")
            } catch QMPError.connectionClosed(let command, _) {
                #expect(command == "query-status")
            }
            do {
                _ = try await QMPClient.connect(to: qemu.qmpSocketPath)
                Issue.record("connected to a killed QEMU")
            } catch QMPError.connectFailed(let path, let code) {
                #expect(path == qemu.qmpSocketPath)
                #expect(code == ECONNREFUSED)
            }
        }
    }

    @Test func monitorServesOneClientAndAcceptsAReconnect() async throws {
        try await withQEMU { qemu, client in
            let quick = QMPClient.Configuration(connectTimeout: .milliseconds(300))
            await #expect(throws: QMPError.greetingTimeout(path: qemu.qmpSocketPath, after: .milliseconds(300))) {
                _ = try await QMPClient.connect(to: qemu.qmpSocketPath, configuration: quick)
            }
            await client.close()
            let again = try await QMPClient.connect(to: qemu.qmpSocketPath)
            #expect(try await again.queryStatus().running)
            await again.close()
        }
    }

    /// Replies are matched by order: a command that timed out while QEMU was stopped, with the
    /// next command written behind it, is answered once QEMU runs again, and that late reply is
    /// dropped rather than taken for the next command.
    @Test func aLateReplyFromAStoppedQEMUIsDropped() async throws {
        try await withQEMU { qemu, client in
            #expect(kill(qemu.pid, SIGSTOP) == 0)
            let timedOut = Task { try await client.execute("query-status", timeout: .milliseconds(300)) }
            try await Task.sleep(for: .milliseconds(50))
            let next = Task { try await client.nicMAC(id: "nic0") }
            await #expect(throws: QMPError.timeout(command: "query-status", after: .milliseconds(300))) {
                try await timedOut.value
            }
            #expect(kill(qemu.pid, SIGCONT) == 0)
            let mac = try await next.value
            #expect(mac == mac0)
            let status = try await client.queryStatus()
            #expect(status == VMStatus(running: true, status: "running"))
        }
    }

    @Test func concurrentCallersOnOneRealConnection() async throws {
        try await withQEMU { _, client in
            let results = try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<100 {
                    group.addTask {
                        if index.isMultiple(of: 2) {
                            return try await client.queryStatus().running
                        }
                        return try await client.nicMAC(id: "nic0") == MACAddress("52:54:00:12:34:56")
                    }
                }
                return try await group.reduce(into: [Bool]()) { $0.append($1) }
            }
            #expect(results.count == 100)
            #expect(results.allSatisfy { $0 })
        }
    }
}
