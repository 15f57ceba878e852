import MacvtapdCore
import MacvtapdTestSupport
import Testing

extension GuestVMTests {
    /// What a real Linux guest sees while `macvtapd run` keeps its NICs connected through host
    /// interfaces that vanish, lose carrier, return and move (issue 9). The far side is a bridge in
    /// the test namespace (`GuestSandbox`), which pings the guest the way a peer on the switch would.
    /// Nested in `GuestVMTests`, whose `.serialized` covers nested suites: one TCG guest at a time.
    @Suite("Guest-visible continuity through macvtapd")
    struct ContinuityTests {
        static let nic0 = GuestNIC(id: "nic0", hub: 10, mac: MACAddress("52:54:00:9c:00:10")!)
        static let nic1 = GuestNIC(id: "nic1", hub: 11, mac: MACAddress("52:54:00:9c:00:11")!)

        static func configuration(nics: [GuestNIC] = [nic0]) -> GuestConfiguration {
            var configuration = GuestConfiguration(nics: nics)
            configuration.addresses = ["eth0": "10.99.0.2/24"]
            return configuration
        }

        /// The guest answers an echo from the bridge within `bound`; returns how long it took.
        @discardableResult
        static func answers(_ pinger: ICMPPinger, within bound: Duration = .seconds(2), _ what: String) async throws
            -> Duration
        {
            let latency = await pinger.firstReplyInBackground(interval: .milliseconds(5), timeout: bound)
            let answered = try #require(latency, "the guest does not answer pings \(what)")
            print("continuity: guest answered \(what) after \(LatencySummary.milliseconds(answered))")
            return answered
        }

        /// Same NIC (ifindex and MAC), no hot-unplug, one identity line, no guest errors.
        static func expectSameNIC(_ vm: GuestVM, as before: GuestNICIdentity?, nic: GuestNIC) {
            #expect(vm.nicIdentity(nic) == before)
            #expect(before?.mac == nic.mac)
            let events = vm.events
            #expect(!events.contains { if case .gone = $0 { true } else { false } }, "\(vm.lines)")
            #expect(!events.contains { if case .error = $0 { true } else { false } }, "\(vm.lines)")
            #expect(events.count { if case .nic(let identity) = $0 { identity.mac == nic.mac } else { false } } == 1)
        }

        @Test func guestKeepsItsNICThroughRemovalCarrierLossReturnAndMove() async throws {
            try await GuestSandbox.with(Self.configuration(), lowers: ["up0", "up1"]) { sandbox in
                let vm = sandbox.vm
                let before = vm.nicIdentity(Self.nic0)
                try sandbox.writeConfig(bindings: [("nic0", "up0")])
                let daemon = try await sandbox.launchDaemon()
                defer { Task { await daemon.stop() } }
                try await sandbox.waitForPhase(.attached, bindings: 1)
                let pinger = try await sandbox.makePinger()
                defer { pinger.close() }
                try await Self.answers(pinger, within: .seconds(5), "once attached")

                // Carrier loss without removal: the lower stays, its far side goes down.
                try await sandbox.setCarrier(of: "up0", up: false)
                try await vm.waitForCarrier(nic: Self.nic0, up: false)
                try await sandbox.waitForPhase(.noCarrier, bindings: 1)
                try await sandbox.setCarrier(of: "up0", up: true)
                try await vm.waitForCarrier(nic: Self.nic0, up: true)
                try await Self.answers(pinger, "after the host interface regained carrier")

                // Removal and return.
                try await sandbox.deleteLower("up0")
                try await vm.waitForCarrier(nic: Self.nic0, up: false)
                try await sandbox.waitForPhase(.hostMissing, bindings: 1)
                let returned = ContinuousClock.now
                try await sandbox.addLower("up0")
                // Echoes start once the guest has its carrier back, as after the carrier's return
                // above. An echo request that reaches the guest before its kernel has re-activated
                // the NIC's queue (the carrier is set at once, the queue by linkwatch moments later)
                // makes it ARP for the reply into a queue that drops, and the ARP is retried after
                // the guest's 1 s retransmit time: 1.03-1.04 s in two loaded runs, 6-17 ms otherwise.
                try await vm.waitForCarrier(nic: Self.nic0, up: true)
                try await Self.answers(pinger, "after the host interface returned")
                let back = ContinuousClock.now - returned
                print("continuity: host interface returned → guest answered after \(back)")
                #expect(back < .seconds(1))

                // A move to another host interface: the bridge must learn the new port at once.
                #expect(try await sandbox.learnedPort(of: Self.nic0.mac) == "up0p")
                let mark = vm.lines.count
                try sandbox.writeConfig(bindings: [("nic0", "up1")])
                let moved = ContinuousClock.now
                var port: String?
                while ContinuousClock.now - moved < .seconds(5) {
                    port = try await sandbox.learnedPort(of: Self.nic0.mac)
                    if port == "up1p" { break }
                    try await Task.sleep(for: .milliseconds(5))
                }
                #expect(port == "up1p", "\(daemon.log())")
                print(
                    "continuity: bridge learned the guest on up1p \(ContinuousClock.now - moved) after the config change"
                )
                try await Self.answers(pinger, within: .milliseconds(500), "right after the move")
                // A move swaps backends under a carrier that stays up: the guest sees nothing.
                #expect(!vm.lines.dropFirst(mark).contains { $0.hasPrefix("GUEST CARRIER") }, "\(vm.lines)")
                Self.expectSameNIC(vm, as: before, nic: Self.nic0)
            }
        }

        /// announce-self after a move: QEMU's RARPs and the guest's gratuitous ARPs leave through the
        /// new host interface at once, and the switch learns the guest's new port from them. Without
        /// announce the switch learns it only when the guest happens to send something.
        @Test(arguments: [true, false])
        func announceTellsTheSwitchTheGuestsNewPortAtOnce(announce: Bool) async throws {
            try await GuestSandbox.with(Self.configuration(), lowers: ["up0", "up1"]) { sandbox in
                let extra = ["announce: \(announce)"]
                try sandbox.writeConfig(bindings: [("nic0", "up0")], extra: extra)
                let daemon = try await sandbox.launchDaemon()
                defer { Task { await daemon.stop() } }
                try await sandbox.waitForPhase(.attached, bindings: 1)
                let pinger = try await sandbox.makePinger()
                defer { pinger.close() }
                try await Self.answers(pinger, within: .seconds(5), "once attached")
                #expect(try await sandbox.learnedPort(of: Self.nic0.mac) == "up0p")

                let wire = try await PacketSocket.open(interface: "up1p", in: sandbox.namespace)
                defer { wire.close() }
                try sandbox.writeConfig(bindings: [("nic0", "up1")], extra: extra)
                let moved = ContinuousClock.now
                let announcement = try await wire.receive(timeout: .seconds(1)) {
                    Self.isAnnouncement($0, of: Self.nic0.mac)
                }
                if announce {
                    let frame = try #require(announcement, "no RARP or gratuitous ARP on up1p: \(daemon.log())")
                    let kind = frame[12] == 0x80 ? "RARP" : "gratuitous ARP"
                    print(
                        "continuity: \(kind) from the guest's MAC on up1p \(ContinuousClock.now - moved) after the move"
                    )
                    #expect(try await sandbox.learnedPort(of: Self.nic0.mac) == "up1p")
                } else {
                    #expect(announcement == nil, "an announcement although announce is false: \(daemon.log())")
                }
                try await sandbox.waitForPhase(.attached, bindings: 1)
            }
        }

        /// A RARP (QEMU's announce) or a gratuitous ARP (the guest's: sender IP = target IP) from `mac`.
        static func isAnnouncement(_ frame: [UInt8], of mac: MACAddress) -> Bool {
            guard frame.count >= 42, Array(frame[6..<12]) == mac.bytes else { return false }
            if frame[12] == 0x80 && frame[13] == 0x35 { return true }
            return frame[12] == 0x08 && frame[13] == 0x06 && frame[28..<32] == frame[38..<42]
        }

        @Test func linkUpKeepsTheGuestCarrierWhileTheLowerHasNone() async throws {
            try await GuestSandbox.with(Self.configuration(), lowers: ["up0"]) { sandbox in
                let vm = sandbox.vm
                try sandbox.writeConfig(bindings: [("nic0", "up0")], link: "up")
                let daemon = try await sandbox.launchDaemon()
                defer { Task { await daemon.stop() } }
                try await sandbox.waitForPhase(.attached, bindings: 1)
                let mark = vm.lines.count
                try await sandbox.setCarrier(of: "up0", up: false)
                try await Task.sleep(for: .seconds(1))
                #expect(vm.carrier("eth0") == true)
                #expect(!vm.lines.dropFirst(mark).contains { $0.hasPrefix("GUEST CARRIER") }, "\(vm.lines)")
                #expect(try sandbox.status()?.bindings.first?.phase == .attached)

                // Missing is missing, whatever the policy: no backend, carrier down; back up on return.
                try await sandbox.deleteLower("up0")
                try await vm.waitForCarrier(nic: Self.nic0, up: false)
                try await sandbox.addLower("up0")
                try await vm.waitForCarrier(nic: Self.nic0, up: true)
            }
        }

        @Test func activeBackupBondFailsOverWhenAHostInterfaceGoesAndTakesItBackOnReturn() async throws {
            var configuration = GuestConfiguration(nics: [Self.nic0, Self.nic1])
            configuration.bonds = [GuestBond(name: "bond0", slaves: ["eth0", "eth1"], primary: "eth0")]
            configuration.addresses = ["bond0": "10.99.0.2/24"]
            try await GuestSandbox.with(configuration, lowers: ["up0", "up1"]) { sandbox in
                let vm = sandbox.vm
                // Every slave of an active-backup bond takes the bond's MAC: the macvtaps must follow.
                try sandbox.writeConfig(bindings: [("nic0", "up0"), ("nic1", "up1")], extra: ["mac: guest"])
                let daemon = try await sandbox.launchDaemon()
                defer { Task { await daemon.stop() } }
                try await sandbox.waitForPhase(.attached, bindings: 2)
                let pinger = try await sandbox.makePinger()
                defer { pinger.close() }
                try await Self.answers(pinger, within: .seconds(5), "through bond0 once attached")

                let interval = Duration.milliseconds(10)
                var mark = vm.lines.count
                async let echoes = pinger.streamInBackground(interval: interval, for: .seconds(3))
                try await Task.sleep(for: .milliseconds(500))
                try await sandbox.deleteLower("up0")
                try await vm.waitForEvent(matching: { $0 == .bond("bond0", active: "eth1") }, from: mark)
                let gap = Self.longestGap(await echoes, interval: interval)
                print(
                    "continuity: bond failover gap \(LatencySummary.milliseconds(gap)) (miimon 100 ms, echo every 10 ms)"
                )
                #expect(gap < .seconds(1))

                mark = vm.lines.count
                try await sandbox.addLower("up0")
                try await vm.waitForEvent(matching: { $0 == .bond("bond0", active: "eth0") }, from: mark)
                try await Self.answers(pinger, "after eth0 came back as primary")
                #expect(!vm.events.contains { if case .gone = $0 { true } else { false } }, "\(vm.lines)")
            }
        }

        /// `mac: guest`: each MAC the guest sets reaches the macvtap (QEMU's NIC_RX_FILTER_CHANGED, re-armed
        /// by the query-rx-filter of every observation), and frames to the new MAC reach the guest.
        @Test func macGuestFollowsEachMACTheGuestSets() async throws {
            let first = MACAddress("52:54:00:9c:01:01")!
            let second = MACAddress("52:54:00:9c:01:02")!
            var configuration = Self.configuration()
            configuration.macChanges = [("eth0", first, .seconds(2)), ("eth0", second, .seconds(2))]
            try await GuestSandbox.with(configuration, lowers: ["up0"]) { sandbox in
                let vm = sandbox.vm
                try sandbox.writeConfig(bindings: [("nic0", "up0")], extra: ["mac: guest"])
                let daemon = try await sandbox.launchDaemon()
                defer { Task { await daemon.stop() } }
                try await sandbox.waitForPhase(.attached, bindings: 1)
                #expect(try await sandbox.macvtapMACs() == [Self.nic0.mac])
                let pinger = try await sandbox.makePinger()
                defer { pinger.close() }
                for mac in [first, second] {
                    try await vm.waitForLine("GUEST SETMAC eth0 mac=\(mac)", timeout: .seconds(20))
                    let changed = ContinuousClock.now
                    while try await sandbox.macvtapMACs() != [mac], ContinuousClock.now - changed < .seconds(3) {
                        try await Task.sleep(for: .milliseconds(5))
                    }
                    #expect(try await sandbox.macvtapMACs() == [mac], "\(daemon.log())")
                    print(
                        "continuity: macvtap took the guest's MAC \(mac) \(ContinuousClock.now - changed) after the change"
                    )
                    // The announce after the replace tells the bridge the guest's new MAC (gratuitous ARP).
                    try await Self.answers(pinger, within: .seconds(2), "at its new MAC \(mac)")
                    #expect(try await sandbox.learnedPort(of: mac) == "up0p")
                }
                #expect(!vm.events.contains { if case .gone = $0 { true } else { false } }, "\(vm.lines)")
            }
        }

        /// The longest run of unanswered echoes, as time.
        static func longestGap(_ echoes: [(sent: ContinuousClock.Instant, answered: Bool)], interval: Duration)
            -> Duration
        {
            var longest = 0
            var run = 0
            for echo in echoes {
                run = echo.answered ? 0 : run + 1
                longest = max(longest, run)
            }
            return interval * longest
        }
    }
}
