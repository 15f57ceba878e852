import MacvtapdCore
import MacvtapdQMP
import MacvtapdTestSupport
import Testing

/// Several commands written back to back on one monitor (QMP pipelining) against a real QEMU:
/// answered in order, each fd carried by its own getfd, each command's error its own.
@Suite struct PipelineTests {
    @Test func pipelinedAttachesPassEachFdWithItsOwnGetfd() async throws {
        // Creating a tap takes RTNL: off the cooperative pool, where a busy lock would stall others.
        let probes = [try Probe(), try Probe()]
        defer { for probe in probes { probe.close() } }
        let taps = [try await ProbeTap.make(), try await ProbeTap.make()]
        defer { for tap in taps { tap.close() } }
        try await withQEMU(QEMUOptions(probes: [(probes[0], 10), (probes[1], 20)])) { _, client in
            var commands: [QMPCommand] = []
            for (index, tap) in taps.enumerated() {
                let hub = (index + 1) * 10
                commands += [
                    QMPCommand("getfd", arguments: ["fdname": .string("F\(index)")], passing: tap.fd),
                    QMPCommand(
                        "netdev_add",
                        arguments: [
                            "type": "tap", "id": .string("T\(index)"), "fd": .string("F\(index)"), "vhost": false,
                        ]
                    ),
                    QMPCommand(
                        "netdev_add",
                        arguments: [
                            "type": "hubport", "id": .string("P\(index)"), "hubid": .int(Int64(hub)),
                            "netdev": .string("T\(index)"),
                        ]),
                ]
            }
            commands.append(QMPCommand("query-status"))
            let replies = try await client.executePipelined(commands)
            #expect(replies.count == commands.count)
            for (command, reply) in zip(commands, replies) {
                if case .failure(let error) = reply { Issue.record("\(command.name) failed: \(error)") }
            }
            // Answered in order: the last reply is query-status's.
            if case .success(let status) = replies.last { #expect(status["status"]?.stringValue != nil) }

            let info = try await client.networkInfo()
            #expect(info.hub(10)?.port("P0")?.peer?.id == "T0")
            #expect(info.hub(20)?.port("P1")?.peer?.id == "T1")
            // Each hub reaches its own tap: every fd went with its own getfd.
            for (index, tap) in taps.enumerated() {
                let marker = EthernetFrame.uniqueMarker()
                try probes[index].send(EthernetFrame.make(payload: marker))
                #expect(
                    await tap.receive(timeout: .seconds(5), matching: FrameFilter(marker: marker)) != nil,
                    "hub \((index + 1) * 10) does not reach tap \(index)")
            }
        }
    }

    @Test func aRefusedCommandFailsAloneAndTheOthersAnswer() async throws {
        let tap = try await ProbeTap.make()
        defer { tap.close() }
        try await withQEMU { _, client in
            let replies = try await client.executePipelined([
                QMPCommand("netdev_add", arguments: ["type": "hubport", "id": "taken", "hubid": 30]),
                QMPCommand("getfd", arguments: ["fdname": "F"], passing: tap.fd),
                QMPCommand("netdev_add", arguments: ["type": "tap", "id": "taken", "fd": "F", "vhost": false]),
                QMPCommand("query-status"),
            ])
            #expect(replies.count == 4)
            guard replies.count == 4 else { return }
            if case .failure(let error) = replies[0] { Issue.record("hubport: \(error)") }
            if case .failure(let error) = replies[1] { Issue.record("getfd: \(error)") }
            guard case .failure(let refused) = replies[2] else {
                Issue.record("duplicate netdev id accepted")
                return
            }
            #expect(refused.qemuErrorClass == "GenericError")
            #expect(refused.description.contains("Duplicate ID 'taken'"))
            if case .failure(let error) = replies[3] { Issue.record("query-status after a refusal: \(error)") }
            // The refused netdev did not consume the named fd: it is still QEMU's to close.
            try await client.closefd(name: "F")
            // And the connection carries on with single commands.
            #expect(try await client.queryStatus().status.isEmpty == false)
        }
    }
}
