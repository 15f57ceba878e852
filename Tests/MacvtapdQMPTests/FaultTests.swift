import MacvtapdQMP
import Synchronization
import Testing

/// Faults a real QEMU does not produce, against `FakeQMPServer`.
@Suite struct FaultTests {
    static let fast = QMPClient.Configuration(connectTimeout: .milliseconds(500), commandTimeout: .seconds(5))

    /// Runs `body` against a fake server and always stops it.
    func withServer(
        _ handler: @escaping @Sendable (FakeQMPPeer, Int) -> Void, _ body: (FakeQMPServer) async throws -> Void
    ) async throws {
        let server = try FakeQMPServer(handler: handler)
        defer { server.stop() }
        try await body(server)
    }

    @Test func handshakeThenCommandReturnsValue() async throws {
        try await withServer({ peer, _ in
            peer.handshake()
            while let command = peer.readCommand() { peer.reply(to: command, return: ["echo": command["execute"]!]) }
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            #expect(client.greeting.version == "7.2.0")
            #expect(client.greeting.capabilities == ["oob"])
            let reply = try await client.execute("query-name")
            #expect(reply == ["echo": "query-name"])
            await client.close()
        }
    }

    /// QEMU reads its monitor a byte per main-loop pass: a command is its name and arguments, no
    /// `"id"` (replies are matched by order).
    @Test func commandsAreWrittenWithoutAnID() async throws {
        try await withServer({ peer, _ in
            peer.handshake()
            while let line = peer.readLine() { peer.send(#"{"return": \#(JSONValue.string(line))}"#) }
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            #expect(
                try await client.execute("set_link", arguments: ["name": "nic0", "up": true])
                    == #"{"arguments":{"name":"nic0","up":true},"execute":"set_link"}"#)
            let pipelined = try await client.executePipelined([.setLink(name: "nic1", up: false)])
            #expect(try pipelined[0].get() == #"{"arguments":{"name":"nic1","up":false},"execute":"set_link"}"#)
            await client.close()
        }
    }

    @Test func missingGreetingTimesOut() async throws {
        // The server holds the connection far longer than the timeout, so only the client's own
        // greeting timeout can end the wait; the bound is loose because CI machines are loaded.
        // The client writes qmp_capabilities without waiting for the greeting: read past it.
        try await withServer({ peer, _ in
            _ = peer.readLine(timeout: .seconds(10))
            _ = peer.readLine(timeout: .seconds(10))
        }) { server in
            let clock = ContinuousClock()
            let start = clock.now
            await #expect(throws: QMPError.greetingTimeout(path: server.path, after: .milliseconds(500))) {
                _ = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            }
            #expect(clock.now - start < .seconds(5))
        }
    }

    @Test func firstMessageThatIsNotAGreetingIsRejected() async throws {
        try await withServer({ peer, _ in
            peer.send(#"{"event": "STOP"}"#)
            _ = peer.readLine(timeout: .seconds(2))
        }) { server in
            do {
                _ = try await QMPClient.connect(to: server.path, configuration: Self.fast)
                Issue.record("connect succeeded without a greeting")
            } catch let error as QMPError {
                guard case .connectionClosed(let command, let reason) = error else {
                    Issue.record("unexpected \(error)")
                    return
                }
                #expect(command == "greeting")
                #expect(reason.contains("not a QMP greeting"))
            }
        }
    }

    @Test func connectToMissingSocketNamesPathAndErrno() async throws {
        let path = "/tmp/macvtapd-no-such-qmp-\(UInt32.random(in: 0...UInt32.max)).sock"
        await #expect(throws: QMPError.connectFailed(path: path, errno: 2)) {
            _ = try await QMPClient.connect(to: path)
        }
    }

    @Test func garbageFromPeerClosesConnectionWithClearError() async throws {
        try await withServer({ peer, _ in
            peer.handshake()
            _ = peer.readCommand()
            peer.send("this is not json")
            _ = peer.readLine(timeout: .seconds(2))
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            do {
                try await client.execute("query-status")
                Issue.record("garbage was accepted as a reply")
            } catch QMPError.connectionClosed(let command, let reason) {
                #expect(command == "query-status")
                #expect(reason.contains("invalid JSON"))
                #expect(reason.contains("this is not json"))
            }
            #expect(client.isConnected == false)
            var events = 0
            for await _ in client.events { events += 1 }
            #expect(events == 0)
            // A dead connection fails new commands at once instead of waiting for a timeout.
            await #expect(throws: QMPError.self) { try await client.execute("query-status") }
        }
    }

    @Test func hungCommandTimesOutAndLateReplyIsDropped() async throws {
        try await withServer({ peer, _ in
            peer.handshake()
            // The second command comes after the first timed out; the late answer to the first,
            // written before the second's, must not be taken for the second.
            guard let hung = peer.readCommand(), let second = peer.readCommand() else { return }
            peer.reply(to: hung, return: "late")
            peer.reply(to: second, return: "second")
            guard let third = peer.readCommand() else { return }
            peer.reply(to: third, return: "third")
            _ = peer.readLine(timeout: .seconds(2))
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            let clock = ContinuousClock()
            let start = clock.now
            await #expect(throws: QMPError.timeout(command: "hang", after: .milliseconds(200))) {
                try await client.execute("hang", timeout: .milliseconds(200))
            }
            #expect(clock.now - start < .seconds(1))
            #expect(try await client.execute("second") == "second")
            #expect(try await client.execute("third") == "third")
            await client.close()
        }
    }

    @Test func shortTimeoutBehindALongOneExpiresOnTime() async throws {
        try await withServer({ peer, _ in
            peer.handshake()
            _ = peer.readLine(timeout: .seconds(3))
            _ = peer.readLine(timeout: .seconds(3))
            _ = peer.waitForClientClose(timeout: .seconds(3))
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            let long = Task { try await client.execute("long", timeout: .seconds(30)) }
            try await Task.sleep(for: .milliseconds(20))
            let clock = ContinuousClock()
            let start = clock.now
            await #expect(throws: QMPError.timeout(command: "short", after: .milliseconds(150))) {
                try await client.execute("short", timeout: .milliseconds(150))
            }
            let elapsed = clock.now - start
            #expect(elapsed >= .milliseconds(150) && elapsed < .seconds(1))
            await client.close()
            await #expect(throws: QMPError.connectionClosed(command: "long", reason: "closed by the client")) {
                try await long.value
            }
        }
    }

    @Test func disconnectMidReplyFailsAllPendingPromptly() async throws {
        let closedAt = Mutex<ContinuousClock.Instant?>(nil)
        try await withServer({ peer, index in
            peer.handshake()
            if index == 0 {
                for _ in 0..<3 { _ = peer.readCommand() }
                peer.sendRaw(Array(#"{"return": {"status": "run"#.utf8))
                // Closing here cuts the socket halfway through the reply.
                peer.close()
                closedAt.withLock { $0 = .now }
            } else {
                while let command = peer.readCommand() { peer.reply(to: command, return: "reconnected") }
            }
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            let failures = await withTaskGroup(of: QMPError?.self) { group in
                for name in ["a", "b", "c"] {
                    group.addTask {
                        do {
                            try await client.execute(name)
                            return nil
                        } catch { return error as? QMPError }
                    }
                }
                return await group.reduce(into: [QMPError?]()) { $0.append($1) }
            }
            // Measured from the close, so that a loaded CI machine's slow start does not count.
            let closed = try #require(closedAt.withLock { $0 })
            #expect(ContinuousClock.now - closed < .seconds(1))
            #expect(failures.count == 3)
            for failure in failures {
                guard case .connectionClosed(_, let reason) = failure else {
                    Issue.record("expected connectionClosed, got \(String(describing: failure))")
                    continue
                }
                #expect(reason == "peer closed the connection")
            }
            #expect(client.closeReason == "peer closed the connection")
            // A new connection works: the client is single-use, connecting again is the recovery.
            let again = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            #expect(try await again.execute("query-status") == "reconnected")
            await again.close()
        }
    }

    @Test func endlessLineIsCutOff() async throws {
        try await withServer({ peer, _ in
            peer.handshake()
            _ = peer.readCommand()
            let megabyte = [UInt8](repeating: UInt8(ascii: "x"), count: 1 << 20)
            for _ in 0..<3 { peer.sendRaw(megabyte) }
            _ = peer.readLine(timeout: .seconds(2))
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            do {
                try await client.execute("query-status")
                Issue.record("an endless line did not end the connection")
            } catch QMPError.connectionClosed(_, let reason) {
                #expect(reason == "peer sent a line longer than 1048576 bytes")
            }
        }
    }

    @Test func deeplyNestedGarbageIsRejectedWithoutCrashing() async throws {
        try await withServer({ peer, _ in
            peer.handshake()
            _ = peer.readCommand()
            peer.send(String(repeating: "[", count: 100_000))
            _ = peer.readLine(timeout: .seconds(2))
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            do {
                try await client.execute("query-status")
                Issue.record("nesting bomb accepted")
            } catch QMPError.connectionClosed(_, let reason) {
                #expect(reason.contains("nesting deeper than"))
            }
        }
    }

    @Test func interleavedEventsAndRepliesAreSeparated() async throws {
        try await withServer({ peer, _ in
            peer.handshake()
            while let command = peer.readCommand() {
                peer.send(
                    #"{"event": "NIC_RX_FILTER_CHANGED", "data": {"name": "nic0", "path": "/x"}, "#
                        + #""timestamp": {"seconds": 1, "microseconds": 2}}"#)
                peer.reply(to: command, return: command["arguments"]?["n"] ?? .null)
                peer.send(
                    #"{"event": "DEVICE_DELETED", "data": {"device": "nic1"}, "timestamp": {"seconds": 1, "microseconds": 3}}"#
                )
            }
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            for n in 0..<5 {
                #expect(try await client.execute("echo", arguments: ["n": .int(Int64(n))]) == .int(Int64(n)))
            }
            var received: [QMPEvent] = []
            for await event in client.events {
                received.append(event)
                if received.count == 10 { break }
            }
            #expect(
                received.map(\.name)
                    == Array(repeating: ["NIC_RX_FILTER_CHANGED", "DEVICE_DELETED"], count: 5).flatMap { $0 })
            #expect(received[0].data["name"] == "nic0")
            #expect(received[0].timestampMicroseconds == 1_000_002)
            #expect(received[1].data["device"] == "nic1")
            #expect(received.prefix(2).map(\.deviceID) == ["nic0", "nic1"])
            await client.close()
        }
    }

    @Test func errorReplyBecomesCommandFailed() async throws {
        try await withServer({ peer, _ in
            peer.handshake()
            while let command = peer.readCommand() {
                peer.replyError(to: command, class: "DeviceNotFound", description: "Device 'nope' not found")
            }
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            await #expect(
                throws: QMPError.commandFailed(
                    command: "netdev_del", class: "DeviceNotFound", description: "Device 'nope' not found")
            ) { try await client.deleteNetdev(id: "nope") }
            #expect(client.isConnected)
            await client.close()
        }
    }

    @Test func concurrentCallersGetTheirOwnReplies() async throws {
        let callers = 200
        try await withServer({ peer, _ in
            peer.handshake()
            // Collect every command before answering, then answer in order, as QEMU does.
            var commands: [JSONValue] = []
            while commands.count < callers, let command = peer.readCommand() { commands.append(command) }
            for command in commands { peer.reply(to: command, return: command["arguments"]?["n"] ?? .null) }
            _ = peer.readLine(timeout: .seconds(2))
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            let mismatches = await withTaskGroup(of: Bool.self) { group in
                for n in 0..<callers {
                    group.addTask {
                        let reply = try? await client.execute("echo", arguments: ["n": .int(Int64(n))])
                        return reply != .int(Int64(n))
                    }
                }
                return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
            }
            #expect(mismatches == 0)
            await client.close()
        }
    }

    @Test func cancellingACallerFreesItPromptly() async throws {
        try await withServer({ peer, _ in
            peer.handshake()
            _ = peer.readCommand()
            _ = peer.readLine(timeout: .seconds(3))
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            let clock = ContinuousClock()
            let start = clock.now
            let task = Task { try await client.execute("hang", timeout: .seconds(30)) }
            try await Task.sleep(for: .milliseconds(50))
            task.cancel()
            await #expect(throws: CancellationError.self) { try await task.value }
            #expect(clock.now - start < .seconds(2))
            #expect(client.isConnected)
            await client.close()
        }
    }

    /// A cancelled command stays queued as written: its late reply is dropped, not given to the next.
    @Test func aCancelledCommandsLateReplyIsDropped() async throws {
        try await withServer({ peer, _ in
            peer.handshake()
            guard let hung = peer.readCommand(), let next = peer.readCommand() else { return }
            peer.reply(to: hung, return: "late")
            peer.reply(to: next, return: "next")
            _ = peer.readLine(timeout: .seconds(2))
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            let task = Task { try await client.execute("hang", timeout: .seconds(30)) }
            try await Task.sleep(for: .milliseconds(50))
            task.cancel()
            await #expect(throws: CancellationError.self) { try await task.value }
            #expect(try await client.execute("next") == "next")
            await client.close()
        }
    }

    /// Every step of a pipeline that timed out stays queued: the late replies to all of them are
    /// dropped, and the next command gets its own.
    @Test func aTimedOutPipelinesLateRepliesAreDropped() async throws {
        try await withServer({ peer, _ in
            peer.handshake()
            guard let first = peer.readCommand(), let second = peer.readCommand(), let next = peer.readCommand()
            else { return }
            peer.reply(to: first, return: "late 1")
            peer.replyError(to: second, class: "GenericError", description: "late 2")
            peer.reply(to: next, return: "next")
            guard let after = peer.readCommand() else { return }
            peer.reply(to: after, return: "after")
            _ = peer.readLine(timeout: .seconds(2))
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            let results = try await client.executePipelined(
                [QMPCommand("one"), QMPCommand("two")], timeout: .milliseconds(200))
            for (result, command) in zip(results, ["one", "two"]) {
                #expect(throws: QMPError.timeout(command: command, after: .milliseconds(200))) { try result.get() }
            }
            #expect(try await client.execute("next") == "next")
            #expect(try await client.execute("after") == "after")
            await client.close()
        }
    }

    @Test func closeEndsEventsFailsPendingAndReleasesSocket() async throws {
        let sawClientClose = Mutex(false)
        try await withServer({ peer, _ in
            peer.handshake()
            _ = peer.readCommand()
            sawClientClose.withLock { $0 = peer.waitForClientClose(timeout: .seconds(3)) }
        }) { server in
            let client = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            let pending = Task { try await client.execute("hang") }
            let events = Task {
                var count = 0
                for await _ in client.events { count += 1 }
                return count
            }
            try await Task.sleep(for: .milliseconds(50))
            await client.close()
            await #expect(throws: QMPError.connectionClosed(command: "hang", reason: "closed by the client")) {
                try await pending.value
            }
            #expect(await events.value == 0)
            #expect(client.closeReason == "closed by the client")
            // The server thread sees EOF once the descriptor is really closed.
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(3)
            while !sawClientClose.withLock({ $0 }), clock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(sawClientClose.withLock { $0 })
        }
    }

    @Test func unconsumedEventsAreBoundedKeepingTheNewest() async throws {
        try await withServer({ peer, _ in
            peer.handshake()
            guard let command = peer.readCommand() else { return }
            for n in 0..<3000 { peer.send(#"{"event": "TICK", "data": {"n": \#(n)}}"#) }
            peer.reply(to: command, return: .object([:]))
            _ = peer.waitForClientClose(timeout: .seconds(3))
        }) { server in
            var configuration = Self.fast
            configuration.eventBufferLimit = 100
            let client = try await QMPClient.connect(to: server.path, configuration: configuration)
            // The reply follows every event on the wire, so all 3000 were read when it returns.
            try await client.execute("flood")
            await client.close()
            var received: [Int64] = []
            for await event in client.events { received.append(event.data["n"]?.intValue ?? -1) }
            #expect(received.count == 100)
            #expect(received.last == 2999)
        }
    }

    @Test func droppingTheClientClosesTheSocket() async throws {
        let sawClientClose = Mutex(false)
        try await withServer({ peer, _ in
            peer.handshake()
            sawClientClose.withLock { $0 = peer.waitForClientClose(timeout: .seconds(3)) }
        }) { server in
            var client: QMPClient? = try await QMPClient.connect(to: server.path, configuration: Self.fast)
            #expect(client?.isConnected == true)
            client = nil
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(3)
            while !sawClientClose.withLock({ $0 }), clock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(sawClientClose.withLock { $0 })
        }
    }
}
