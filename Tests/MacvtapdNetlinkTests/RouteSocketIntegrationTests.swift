import Glibc
import MacvtapdCore
import MacvtapdNetlink
import MacvtapdTestSupport
import Testing

@Suite("Route socket against the kernel")
struct RouteSocketIntegrationTests {
    @Test func dumpReportsLoopbackAndBothVethEnds() async throws {
        try await NetlinkTestHost.with { host in
            let links = try await host.route.links()
            #expect(Set(links.map(\.name)) == ["lo", "lower0", "peer0"])
            let loopback = try #require(links.first { $0.name == "lo" })
            #expect(loopback.kind == nil)
            #expect(loopback.index == 1)
            let lower = try #require(links.first { $0.name == "lower0" })
            let peer = try #require(links.first { $0.name == "peer0" })
            #expect(lower.kind == "veth")
            #expect(lower.lowerIndex == peer.index)
            #expect(lower.mtu == 1500)
            #expect(lower.isAdministrativelyUp)
            #expect(lower.address?.isAssignable == true)
            #expect(lower.alias == nil)
            #expect(lower.macvtapMode == nil)
        }
    }

    @Test func getByIndexAndByNameAgree() async throws {
        try await NetlinkTestHost.with { host in
            let byName = try await host.route.link(named: "peer0")
            let byIndex = try await host.route.link(index: byName.index)
            #expect(byName.name == byIndex.name)
            #expect(byName.index == byIndex.index)
            #expect(byName.address == byIndex.address)
        }
    }

    @Test(arguments: MacvtapMode.allCases)
    func createOpenDeleteInEveryMode(mode: MacvtapMode) async throws {
        try await NetlinkTestHost.with { host in
            let created = try await host.route.createMacvtap(host.macvtap(mode: mode))
            #expect(created.name == "mvt0")
            #expect(created.kind == "macvtap")
            #expect(created.macvtapMode == mode)
            #expect(created.lowerIndex == host.lower.index)
            #expect(created.alias == "macvtapd:vm/nic0")
            #expect(created.isAdministrativelyUp)
            // passthru hands the lower to the macvtap and takes the lower's MAC (kernel behaviour).
            #expect(created.address == (mode == .passthru ? host.lower.address : MACAddress("02:00:5e:00:00:01")))
            #expect(try await host.route.link(index: created.index) == created)

            let tap = try await host.device.open(created)
            #expect(host.runtimeDirectoryEntries().isEmpty, "device node unlinked right after open")
            let flags = try await MacvtapDevice.queueFlags(of: tap)
            #expect(flags.isSuperset(of: [.tap, .noPacketInformation, .vnetHeader]))
            #expect(!flags.contains(.multiQueue))
            let headerSize = try await MacvtapDevice.vnetHeaderSize(of: tap)
            #expect(headerSize == 10)
            let status = try tap.withRawValue { fcntl($0, F_GETFL) }
            #expect(status & O_NONBLOCK != 0)
            #expect(try tap.withRawValue { fcntl($0, F_GETFD) } & FD_CLOEXEC != 0)

            try await host.route.deleteLink(index: created.index)
            let gone = await #expect(throws: NetlinkError.self) { try await host.route.link(index: created.index) }
            #expect(gone?.isNoSuchDevice == true)
            // The open queue survives its device; TUNGETIFF is how a dead backend is recognised.
            let dead = await #expect(throws: MacvtapDeviceError.self) { try await MacvtapDevice.queueFlags(of: tap) }
            #expect(dead?.errno == ENOLINK)
            await tap.closeOffPool()
            #expect(!tap.isOpen)
        }
    }

    @Test func passthruAllowsOneMacvtapPerLower() async throws {
        try await NetlinkTestHost.with { host in
            _ = try await host.route.createMacvtap(host.macvtap("mvt0", mode: .passthru))
            let error = await #expect(throws: NetlinkError.self) {
                try await host.route.createMacvtap(
                    host.macvtap("mvt1", mode: .passthru, address: MACAddress("02:00:5e:00:00:02")))
            }
            #expect(error?.operation == "create macvtap")
            #expect(error?.interface == "mvt1 on ifindex \(host.lower.index)")
            #expect(error?.errno == EINVAL)
        }
    }

    @Test func createdDownStaysDown() async throws {
        try await NetlinkTestHost.with { host in
            var configuration = host.macvtap()
            configuration.up = false
            let created = try await host.route.createMacvtap(configuration)
            #expect(!created.isAdministrativelyUp)
        }
    }

    /// The host must never speak from a guest's MAC: a switch would learn the guest at this port
    /// (during a live migration, at the host the guest is leaving). A foreign macvtap made with
    /// iproute2's defaults on the same lower is the control that shows the check can fail.
    @Test func theHostSendsNothingFromAnUpMacvtap() async throws {
        try await NetlinkTestHost.with { host in
            let wire = try await PacketSocket.open(interface: host.veth.peer, in: host.namespace)
            defer { wire.close() }
            let ours = try await host.route.createMacvtap(host.macvtap())
            let foreignMAC = try #require(MACAddress("02:00:5e:00:00:02"))
            try await host.namespace.ip(
                "link", "add", "link", host.veth.name, "name", "foreign0", "address", "\(foreignMAC)", "type", "macvtap"
            )
            try await host.namespace.ip("link", "set", "foreign0", "up")

            let oursMAC = try #require(ours.address)
            let firstFromEither = try await wire.receive(timeout: .seconds(10)) { frame in
                frame.count >= 12
                    && MACAddress(bytes: frame[6..<12]).map { [oursMAC, foreignMAC].contains($0) } == true
            }
            let first = try #require(firstFromEither, "the control macvtap sent nothing within 10 s")
            #expect(MACAddress(bytes: first[6..<12]) == foreignMAC, "the host sent from the macvtap macvtapd made")
            let laterFromOurs = try await wire.receive(timeout: .seconds(1)) { frame in
                frame.count >= 12 && MACAddress(bytes: frame[6..<12]) == oursMAC
            }
            #expect(laterFromOurs == nil, "the host sent from the macvtap macvtapd made")
            #expect(try await host.namespace.ip("-6", "address", "show", "dev", ours.name).isEmpty)
            #expect(try await host.namespace.ip("-6", "address", "show", "dev", "foreign0").contains("fe80::"))
            #expect(try await host.namespace.ip("-details", "link", "show", ours.name).contains("addrgenmode none"))
        }
    }

    @Test func addressAliasAndUpDownAreSetAndReadBack() async throws {
        try await NetlinkTestHost.with { host in
            let created = try await host.route.createMacvtap(host.macvtap(mode: .vepa))
            let mac = try #require(MACAddress("02:00:5e:00:00:aa"))
            try await host.route.setAddress(mac, index: created.index)
            try await host.route.setAlias("macvtapd:other/nic1", index: created.index)
            try await host.route.setUp(false, index: created.index)
            var read = try await host.route.link(index: created.index)
            #expect(read.address == mac)
            #expect(read.alias == "macvtapd:other/nic1")
            #expect(!read.isAdministrativelyUp)
            try await host.route.setUp(true, index: created.index)
            try await host.route.setAlias(nil, index: created.index)
            read = try await host.route.link(index: created.index)
            #expect(read.isAdministrativelyUp)
            #expect(read.alias == nil)
            #expect(read.address == mac, "bringing it up keeps the MAC")
        }
    }

    @Test func existingNameIsEEXISTNamingTheInterface() async throws {
        try await NetlinkTestHost.with { host in
            _ = try await host.route.createMacvtap(host.macvtap("mvt0"))
            let error = await #expect(throws: NetlinkError.self) {
                try await host.route.createMacvtap(host.macvtap("mvt0", address: MACAddress("02:00:5e:00:00:03")))
            }
            #expect(error?.isAlreadyExists == true)
            #expect(error?.description.hasPrefix("create macvtap mvt0 on ifindex \(host.lower.index): EEXIST") == true)
        }
    }

    @Test func missingDevicesAreENODEV() async throws {
        try await NetlinkTestHost.with { host in
            let missingLower = await #expect(throws: NetlinkError.self) {
                try await host.route.createMacvtap(MacvtapConfiguration(name: "mvt0", lowerIndex: 9999, mode: .bridge))
            }
            #expect(missingLower?.isNoSuchDevice == true)
            #expect(missingLower?.interface == "mvt0 on ifindex 9999")
            let missingDelete = await #expect(throws: NetlinkError.self) {
                try await host.route.deleteLink(index: 9999)
            }
            #expect(missingDelete?.isNoSuchDevice == true)
            #expect(missingDelete?.description.hasPrefix("delete link ifindex 9999: ENODEV") == true)
            let missingName = await #expect(throws: NetlinkError.self) { try await host.route.link(named: "nothere") }
            #expect(missingName?.isNoSuchDevice == true)
            #expect(missingName?.interface == "nothere")
            let links = try await host.route.links()
            #expect(links.count == 3, "nothing created by the failed calls")
        }
    }

    @Test(arguments: ["", "mvt0123456789abc", "a/b", "a:b", "a b"])
    func badNamesFailBeforeAnythingIsSent(name: String) async throws {
        try await NetlinkTestHost.with { host in
            await #expect(throws: InterfaceNameError.self) { try await host.route.createMacvtap(host.macvtap(name)) }
            let links = try await host.route.links()
            #expect(links.count == 3)
        }
    }

    @Test func foreignMacvtapIsReportedWithoutAlias() async throws {
        try await NetlinkTestHost.with { host in
            try await host.namespace.ip(
                "link", "add", "link", "lower0", "name", "foreign0", "type", "macvtap", "mode", "private")
            let foreign = try await host.route.link(named: "foreign0")
            #expect(foreign.kind == "macvtap")
            #expect(foreign.macvtapMode == .private)
            #expect(foreign.alias == nil)
            #expect(Ownership.binding(fromAlias: foreign.alias) == nil, "not ours")
            #expect(foreign.lowerIndex == host.lower.index)
        }
    }

    @Test func requestsAfterCloseFailWithEBADF() async throws {
        try await NetlinkTestHost.with { host in
            host.route.close()
            let error = await #expect(throws: NetlinkError.self) { try await host.route.links() }
            #expect(error?.errno == EBADF)
        }
    }

    @Test func tapOfAnotherNamespaceIsNotFoundThroughOurSysfs() async throws {
        try await NetlinkTestHost.with { host in
            let macvtap = try await host.route.createMacvtap(host.macvtap())
            let hostSysfs = MacvtapDevice(sysfsRoot: "/sys", runtimeDirectory: host.runtimeDirectory)
            let error = #expect(throws: MacvtapDeviceError.self) { try hostSysfs.open(macvtap) }
            #expect(error?.errno == ENOENT)
            #expect(
                error?.description.hasPrefix("read device number for macvtap mvt0 (ifindex \(macvtap.index)) at /sys/")
                    == true)
        }
    }

    @Test func nodevRuntimeDirectoryIsExplained() async throws {
        try await NetlinkTestHost.with { host in
            let macvtap = try await host.route.createMacvtap(host.macvtap())
            var template = Array("/tmp/mvtd-nodev-XXXXXX".utf8CString)
            let directory = String(cString: try #require(mkdtemp(&template)))
            defer { rmdir(directory) }
            try #require(mount("tmpfs", directory, "tmpfs", UInt(MS_NODEV), nil) == 0)
            defer { umount2(directory, Int32(MNT_DETACH)) }
            let device = MacvtapDevice(sysfsRoot: host.sysfs.path, runtimeDirectory: directory)
            let error = #expect(throws: MacvtapDeviceError.self) { try device.open(macvtap) }
            #expect(error?.errno == EACCES)
            #expect(error?.detail?.contains("nodev") == true)
        }
    }
}
