import Testing

@testable import MacvtapdCore

@Suite struct OwnershipTests {
    @Test func macvtapNamesFitIFNAMSIZAndAreStable() {
        let key = BindingKey(vm: String(repeating: "v", count: 64), nic: String(repeating: "n", count: 60))
        let name = Ownership.macvtapName(for: key)
        #expect(name.utf8.count == 15)
        #expect(name == Ownership.macvtapName(for: key))
        #expect(name != Ownership.macvtapName(for: BindingKey(vm: "web1", nic: "nic0")))
    }

    @Test func aliasRoundTrips() {
        let key = BindingKey(vm: "web1", nic: "nic0")
        #expect(Ownership.alias(for: key) == "macvtapd:web1/nic0")
        #expect(Ownership.binding(fromAlias: Ownership.alias(for: key)) == key)
        #expect(Ownership.binding(fromAlias: "libvirt:web1/nic0") == nil)
        #expect(Ownership.binding(fromAlias: "macvtapd:web1") == nil)
        #expect(Ownership.binding(fromAlias: nil) == nil)
    }

    @Test(arguments: [
        ("mvtd.nic0.t42", "nic0", Int32(42), Ownership.BackendPart.tap, Ownership.Spelling.short),
        ("mvtd.nic.a-b.p7", "nic.a-b", 7, .port, .short),
        ("mvtd.nic0.tap42", "nic0", 42, .tap, .long),
        ("mvtd.nic.a-b.port7", "nic.a-b", 7, .port, .long),
    ])
    func backendIDsParse(
        _ id: String, _ nic: String, _ ifindex: Int32, _ part: Ownership.BackendPart, _ spelling: Ownership.Spelling
    ) throws {
        let parsed = try #require(Ownership.parseBackendID(id))
        #expect(parsed.ids == Ownership.BackendIDs(nic: nic, ifindex: ifindex, spelling: spelling))
        #expect(parsed.part == part)
        #expect((part == .tap ? parsed.ids.tap : parsed.ids.port) == id, "detached by the id it was found with")
    }

    @Test(arguments: [
        "nic0.port", "mvtd.nic0.fd", "mvtd.nic0", "mvtd.nic0.tap", "mvtd.nic0.tapx", "mvtd..tap1", "mvtd.n.tap-1",
        "mvtd.nic0.t", "mvtd.nic0.p-1", "mvtd.nic0.t+5", "mvtd.nic0.t042", "mvtd.nic0.tap042", "mvtd.nic0.x42",
    ])
    func foreignIDsAreNotOurs(_ id: String) {
        #expect(Ownership.parseBackendID(id) == nil)
    }

    /// New backends get the short spelling: QEMU reads its monitor a byte at a time.
    @Test func idsAreDeterministic() {
        let ids = Ownership.BackendIDs(nic: "nic0", ifindex: 42)
        #expect(ids.tap == "mvtd.nic0.t42")
        #expect(ids.port == "mvtd.nic0.p42")
        #expect(ids.fdName == "mvtd.nic0")
        let long = Ownership.BackendIDs(nic: "nic0", ifindex: 42, spelling: .long)
        #expect(long.tap == "mvtd.nic0.tap42")
        #expect(long.port == "mvtd.nic0.port42")
    }

    @Test(arguments: ["52:54:00:12:34:56", "52-54-00-12-34-56", "52:54:00:12:34:5G", "5:54:00:12:34:56", ""])
    func macParsing(_ text: String) {
        let valid = text.count == 17 && !text.contains("G")
        #expect((MACAddress(text) != nil) == valid)
        if valid { #expect(MACAddress(text)?.description == "52:54:00:12:34:56") }
    }

    @Test func macClasses() {
        #expect(MACAddress("01:00:5e:00:00:01")!.isMulticast)
        #expect(!MACAddress("00:00:00:00:00:00")!.isAssignable)
        #expect(MACAddress("52:54:00:12:34:56")!.isAssignable)
    }
}
