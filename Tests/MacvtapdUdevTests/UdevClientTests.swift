import MacvtapdTestSupport
import MacvtapdUdev
import Testing

/// Real libudev against the real sysfs of veth interfaces in a test namespace, with a hand-written
/// udev database (the format udevd writes) at a thread-private `/run/udev`: each test decides
/// exactly what udev knows.
@Suite struct UdevClientTests {
    static func ifindex(_ name: String, in namespace: NetworkNamespace) async throws -> Int32 {
        let line = try await namespace.ip("-o", "link", "show", "dev", name)
        return Int32(line.prefix { $0 != ":" })!
    }

    @Test func lookupReadsTheNamespaceSysfsAndIsNotInitialisedWithoutADatabaseEntry() async throws {
        let namespace = try await NetworkNamespace(prefix: "mvtudev")
        defer { namespace.discard() }
        let run = try TemporaryDirectory()
        defer { run.remove() }
        try await namespace.ip("link", "add", "udv0", "type", "veth", "peer", "name", "udv0p")
        let index = try await Self.ifindex("udv0", in: namespace)

        let (byName, byIndex, missing, gone) = try await UdevView.run(in: namespace, runDirectory: run.path) {
            let client = try UdevClient()
            return (
                client.device(named: "udv0"), client.device(ifindex: index), client.device(named: "nope0"),
                client.device(ifindex: 999_999)
            )
        }
        let device = try #require(byName)
        #expect(device.name == "udv0")
        #expect(device.ifindex == index)
        #expect(device.properties["INTERFACE"] == "udv0")
        #expect(device.properties["SUBSYSTEM"] == "net")
        #expect(!device.isInitialized, "no database entry: udev has not processed it")
        #expect(device.properties["ID_PATH"] == nil)
        #expect(byIndex == device)
        #expect(missing == nil)
        #expect(gone == nil)
    }

    @Test func databaseEntryMakesTheLinkInitialisedWithItsProperties() async throws {
        let namespace = try await NetworkNamespace(prefix: "mvtudev")
        defer { namespace.discard() }
        let run = try TemporaryDirectory()
        defer { run.remove() }
        try await namespace.ip("link", "add", "udv1", "type", "veth", "peer", "name", "udv1p")
        let index = try await Self.ifindex("udv1", in: namespace)
        let peerIndex = try await Self.ifindex("udv1p", in: namespace)
        try UdevView.writeDatabaseEntry(
            in: run.path, ifindex: index,
            properties: ["ID_PATH": "pci-0000:03:00.0", "ID_NET_NAME_PATH": "enp3s0", "ID_VENDOR_ID": "0x8086"])

        let (device, peer) = try await UdevView.run(in: namespace, runDirectory: run.path) {
            let client = try UdevClient()
            return (client.device(ifindex: index), client.device(ifindex: peerIndex))
        }
        let initialised = try #require(device)
        #expect(initialised.isInitialized)
        #expect(initialised.properties["ID_PATH"] == "pci-0000:03:00.0")
        #expect(initialised.properties["ID_NET_NAME_PATH"] == "enp3s0")
        #expect(initialised.properties["ID_VENDOR_ID"] == "0x8086")
        #expect(initialised.properties["INTERFACE"] == "udv1", "kernel properties are kept")
        #expect(peer?.isInitialized == false, "an entry names one ifindex only")
    }

    @Test func renamedLinkIsFoundUnderItsNewName() async throws {
        let namespace = try await NetworkNamespace(prefix: "mvtudev")
        defer { namespace.discard() }
        let run = try TemporaryDirectory()
        defer { run.remove() }
        try await namespace.ip("link", "add", "eth0", "type", "veth", "peer", "name", "udv2p")
        let index = try await Self.ifindex("eth0", in: namespace)
        try await namespace.ip("link", "set", "eth0", "name", "enp3s0")

        let (device, old) = try await UdevView.run(in: namespace, runDirectory: run.path) {
            let client = try UdevClient()
            return (client.device(ifindex: index), client.device(named: "eth0"))
        }
        #expect(device?.name == "enp3s0")
        #expect(device?.properties["INTERFACE"] == "enp3s0")
        #expect(old == nil)
    }
}
