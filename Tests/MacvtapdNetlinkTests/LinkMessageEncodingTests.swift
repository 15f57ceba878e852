import MacvtapdCore
import MacvtapdNetlink
import Testing

@Suite("Link request encoding")
struct LinkMessageEncodingTests {
    /// Even when the macvtap is wanted up: it is brought up only after IPv6 address generation is
    /// off (RouteSocket.createMacvtap), which the kernel refuses in a creating request.
    @Test func createMacvtapIsOneMessageWithNameLowerAddressAliasAndModeThatCreatesItDown() {
        let configuration = MacvtapConfiguration(
            name: "mvt0", lowerIndex: 3, mode: .bridge, address: MACAddress("02:00:00:00:00:01"),
            alias: "macvtapd:a/b", up: true)
        let expected: [UInt8] = [
            0x70, 0x00, 0x00, 0x00,  // nlmsg_len 112
            0x10, 0x00,  // RTM_NEWLINK
            0x0D, 0x06,  // NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO | NLM_F_EXCL | NLM_F_CREATE
            0x07, 0x00, 0x00, 0x00,  // seq 7
            0x00, 0x00, 0x00, 0x00,  // pid 0
            0x00, 0x00, 0x00, 0x00,  // ifinfomsg: family, pad, type
            0x00, 0x00, 0x00, 0x00,  // index 0
            0x00, 0x00, 0x00, 0x00,  // flags: not IFF_UP
            0x01, 0x00, 0x00, 0x00,  // change IFF_UP
            0x09, 0x00, 0x03, 0x00, 0x6D, 0x76, 0x74, 0x30, 0x00, 0x00, 0x00, 0x00,  // IFLA_IFNAME "mvt0"
            0x08, 0x00, 0x05, 0x00, 0x03, 0x00, 0x00, 0x00,  // IFLA_LINK 3
            0x0A, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,  // IFLA_ADDRESS
            0x11, 0x00, 0x14, 0x00,  // IFLA_IFALIAS, 13 bytes
            0x6D, 0x61, 0x63, 0x76, 0x74, 0x61, 0x70, 0x64, 0x3A, 0x61, 0x2F, 0x62, 0x00, 0x00, 0x00, 0x00,
            0x1C, 0x00, 0x12, 0x80,  // IFLA_LINKINFO | NLA_F_NESTED, 28 bytes
            0x0C, 0x00, 0x01, 0x00, 0x6D, 0x61, 0x63, 0x76, 0x74, 0x61, 0x70, 0x00,  // IFLA_INFO_KIND "macvtap"
            0x0C, 0x00, 0x02, 0x80,  // IFLA_INFO_DATA | NLA_F_NESTED
            0x08, 0x00, 0x01, 0x00, 0x04, 0x00, 0x00, 0x00,  // IFLA_MACVLAN_MODE bridge
        ]
        #expect(LinkMessage.createMacvtapRequest(configuration, sequence: 7) == expected)
    }

    @Test func ipv6AddressGenerationIsTurnedOffThroughTheAddressFamilySpecificNest() {
        let expected: [UInt8] = [
            0x30, 0x00, 0x00, 0x00,  // nlmsg_len 48
            0x13, 0x00,  // RTM_SETLINK
            0x05, 0x00,  // NLM_F_REQUEST | NLM_F_ACK
            0x09, 0x00, 0x00, 0x00,  // seq 9
            0x00, 0x00, 0x00, 0x00,  // pid 0
            0x00, 0x00, 0x00, 0x00,  // ifinfomsg: family, pad, type
            0x2A, 0x00, 0x00, 0x00,  // index 42
            0x00, 0x00, 0x00, 0x00,  // flags
            0x00, 0x00, 0x00, 0x00,  // change: none
            0x10, 0x00, 0x1A, 0x80,  // IFLA_AF_SPEC | NLA_F_NESTED, 16 bytes
            0x0C, 0x00, 0x0A, 0x80,  // AF_INET6 | NLA_F_NESTED, 12 bytes
            0x05, 0x00, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00,  // IFLA_INET6_ADDR_GEN_MODE NONE, padded
        ]
        #expect(LinkMessage.disableIPv6AddressGenerationRequest(index: 42, sequence: 9) == expected)
    }

    /// The kernel ignores the alias in the creating request: it goes with the address-generation
    /// mode, one round trip for both.
    @Test func theAliasRidesOnTheAddressGenerationRequest() {
        let expected: [UInt8] = [
            0x44, 0x00, 0x00, 0x00,  // nlmsg_len 68
            0x13, 0x00,  // RTM_SETLINK
            0x05, 0x00,  // NLM_F_REQUEST | NLM_F_ACK
            0x09, 0x00, 0x00, 0x00,  // seq 9
            0x00, 0x00, 0x00, 0x00,  // pid 0
            0x00, 0x00, 0x00, 0x00,  // ifinfomsg: family, pad, type
            0x2A, 0x00, 0x00, 0x00,  // index 42
            0x00, 0x00, 0x00, 0x00,  // flags
            0x00, 0x00, 0x00, 0x00,  // change: none, so the link stays down
            0x11, 0x00, 0x14, 0x00,  // IFLA_IFALIAS, 13 bytes
            0x6D, 0x61, 0x63, 0x76, 0x74, 0x61, 0x70, 0x64, 0x3A, 0x61, 0x2F, 0x62, 0x00, 0x00, 0x00, 0x00,
            0x10, 0x00, 0x1A, 0x80,  // IFLA_AF_SPEC | NLA_F_NESTED, 16 bytes
            0x0C, 0x00, 0x0A, 0x80,  // AF_INET6 | NLA_F_NESTED, 12 bytes
            0x05, 0x00, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00,  // IFLA_INET6_ADDR_GEN_MODE NONE, padded
        ]
        #expect(
            LinkMessage.disableIPv6AddressGenerationRequest(index: 42, alias: "macvtapd:a/b", sequence: 9) == expected)
    }

    @Test(arguments: [
        (MacvtapMode.private, UInt8(1)), (.vepa, 2), (.bridge, 4), (.passthru, 8),
    ])
    func modeValuesMatchTheKernel(mode: MacvtapMode, value: UInt8) {
        let bytes = LinkMessage.createMacvtapRequest(
            MacvtapConfiguration(name: "m", lowerIndex: 1, mode: mode, up: false), sequence: 1)
        #expect(Array(bytes.suffix(8)) == [0x08, 0x00, 0x01, 0x00, value, 0x00, 0x00, 0x00])
        #expect(bytes[24] == 0, "IFF_UP not requested")
        #expect(bytes[28] == 1, "but IFF_UP is in the change mask so a down macvtap is created down")
    }

    @Test func getByNameCarriesTheNameAndSkipsStatistics() {
        let expected: [UInt8] =
            message(
                type: 18, flags: 0x1, sequence: 9,
                body: interfaceInfo(index: 0, type: 0) + attribute(29, le32(1 << 3)) + attribute(3, cString("lower0")))
        #expect(LinkMessage.getRequest(name: "lower0", sequence: 9) == expected)
    }

    @Test func dumpRequestIsAGetLinkDump() {
        let expected = message(
            type: 18, flags: 0x301, sequence: 1, body: interfaceInfo(index: 0, type: 0) + attribute(29, le32(8)))
        #expect(LinkMessage.dumpRequest(sequence: 1) == expected)
    }

    @Test func deleteIsByIndexWithAck() {
        let expected = message(type: 17, flags: 0x5, sequence: 2, body: interfaceInfo(index: 42, type: 0))
        #expect(LinkMessage.deleteRequest(index: 42, sequence: 2) == expected)
    }

    @Test func setLinkOnlyTouchesWhatIsGiven() {
        let down = message(
            type: 19, flags: 0x5, sequence: 3, body: interfaceInfo(index: 5, flags: 0, change: 1, type: 0))
        #expect(LinkMessage.setRequest(index: 5, up: false, sequence: 3) == down)
        let alias = message(
            type: 19, flags: 0x5, sequence: 4, body: interfaceInfo(index: 5, type: 0) + attribute(20, cString("x")))
        #expect(LinkMessage.setRequest(index: 5, alias: "x", sequence: 4) == alias)
        let mac = message(
            type: 19, flags: 0x5, sequence: 5,
            body: interfaceInfo(index: 5, type: 0) + attribute(1, [0x02, 0, 0, 0, 0, 0x09]))
        #expect(LinkMessage.setRequest(index: 5, address: MACAddress("02:00:00:00:00:09"), sequence: 5) == mac)
    }
}
