import MacvtapdCore

/// Decoding of RTM_NEWLINK / RTM_DELLINK and encoding of the link requests macvtapd sends.
package enum LinkMessage {
    /// struct ifinfomsg.
    package static let interfaceInfoSize = 16

    /// ifi_change of the first notification of a link (rtnl_configure_link / register_netdevice
    /// announce a new device with every flag "changed").
    package static let newLinkChangeMask = UInt32.max

    package struct Decoded: Hashable, Sendable {
        package var link: Link
        package var change: UInt32
    }

    package static func decode(_ message: NetlinkMessage) throws -> Decoded {
        let payload = message.payload
        guard payload.count >= interfaceInfoSize else {
            throw NetlinkMessageError(
                "link message body has \(payload.count) bytes, ifinfomsg needs 16", offset: payload.startIndex)
        }
        let base = payload.startIndex
        let index = readInteger(Int32.self, from: payload, at: base + 4)
        let flags = readInteger(UInt32.self, from: payload, at: base + 8)
        let change = readInteger(UInt32.self, from: payload, at: base + 12)
        let attributes = try NetlinkAttribute.parse(payload[(base + interfaceInfoSize)...])

        var link = Link(index: index, name: attributes.last(LinkAttribute.name)?.string ?? "", flags: flags)
        link.address = attributes.last(LinkAttribute.address)?.macAddress
        link.permanentAddress = attributes.last(LinkAttribute.permanentAddress)?.macAddress
        if let state = attributes.last(LinkAttribute.operationalState)?.uint8 {
            link.operationalState = OperationalState(rawValue: state) ?? .unknown
        }
        link.hasCarrier = attributes.last(LinkAttribute.carrier)?.uint8.map { $0 != 0 }
        link.mtu = attributes.last(LinkAttribute.mtu)?.uint32
        link.lowerIndex = attributes.last(LinkAttribute.link)?.uint32.map { Int32(bitPattern: $0) }
        link.lowerNetnsID = attributes.last(LinkAttribute.linkNetnsID)?.uint32.map { Int32(bitPattern: $0) }
        if let alias = attributes.last(LinkAttribute.alias)?.string, !alias.isEmpty {
            link.alias = alias
        }
        if let info = try attributes.last(LinkAttribute.linkInfo)?.nested() {
            link.kind = info.last(LinkInfoAttribute.kind)?.string
            if link.kind == "macvtap" || link.kind == "macvlan",
                let data = try info.last(LinkInfoAttribute.data)?.nested(),
                let mode = data.last(MacvlanAttribute.mode)?.uint32
            {
                link.macvtapMode = MacvtapMode(kernelValue: mode)
            }
        }
        return Decoded(link: link, change: change)
    }

    package static func dumpRequest(sequence: UInt32) -> [UInt8] {
        var builder = NetlinkMessageBuilder(
            type: MessageType.getLink, flags: MessageFlags.request | MessageFlags.dump, sequence: sequence)
        builder.appendInterfaceInfo()
        builder.appendAttribute(type: LinkAttribute.extendedMask, uint32: extendedMaskSkipStats)
        return builder.finish()
    }

    package static func getRequest(index: Int32, sequence: UInt32) -> [UInt8] {
        var builder = NetlinkMessageBuilder(type: MessageType.getLink, flags: MessageFlags.request, sequence: sequence)
        builder.appendInterfaceInfo(index: index)
        builder.appendAttribute(type: LinkAttribute.extendedMask, uint32: extendedMaskSkipStats)
        return builder.finish()
    }

    package static func getRequest(name: String, sequence: UInt32) -> [UInt8] {
        var builder = NetlinkMessageBuilder(type: MessageType.getLink, flags: MessageFlags.request, sequence: sequence)
        builder.appendInterfaceInfo()
        builder.appendAttribute(type: LinkAttribute.extendedMask, uint32: extendedMaskSkipStats)
        builder.appendAttribute(type: LinkAttribute.name, string: name)
        return builder.finish()
    }

    /// RTM_NEWLINK creating a macvtap in one message: the MAC goes in here because udev's
    /// MACAddressPolicy may overwrite one set afterwards. NLM_F_ECHO: the kernel (6.3 and later)
    /// sends the new link back before its ack, which spares a GET.
    package static func createMacvtapRequest(_ configuration: MacvtapConfiguration, sequence: UInt32) -> [UInt8] {
        var builder = NetlinkMessageBuilder(
            type: MessageType.newLink,
            flags: MessageFlags.request | MessageFlags.ack | MessageFlags.echo | MessageFlags.create
                | MessageFlags.exclusive,
            sequence: sequence)
        // Always created down: IPv6 address generation must be off before the first up (see
        // RouteSocket.createMacvtap), and the kernel refuses IFLA_AF_SPEC in a creating request.
        builder.appendInterfaceInfo(flags: 0, change: interfaceUpFlag)
        builder.appendAttribute(type: LinkAttribute.name, string: configuration.name)
        builder.appendAttribute(type: LinkAttribute.link, uint32: UInt32(bitPattern: configuration.lowerIndex))
        if let address = configuration.address {
            builder.appendAttribute(type: LinkAttribute.address, address: address)
        }
        if let alias = configuration.alias {
            builder.appendAttribute(type: LinkAttribute.alias, string: alias)
        }
        builder.appendNested(type: LinkAttribute.linkInfo) { info in
            info.appendAttribute(type: LinkInfoAttribute.kind, string: "macvtap")
            info.appendNested(type: LinkInfoAttribute.data) { data in
                data.appendAttribute(type: MacvlanAttribute.mode, uint32: configuration.mode.kernelValue)
            }
        }
        return builder.finish()
    }

    package static func deleteRequest(index: Int32, sequence: UInt32) -> [UInt8] {
        var builder = NetlinkMessageBuilder(
            type: MessageType.deleteLink, flags: MessageFlags.request | MessageFlags.ack, sequence: sequence)
        builder.appendInterfaceInfo(index: index)
        return builder.finish()
    }

    /// RTM_SETLINK on an existing link. `up` nil leaves IFF_UP alone; an empty alias clears it.
    package static func setRequest(
        index: Int32, address: MACAddress? = nil, alias: String? = nil, up: Bool? = nil, sequence: UInt32
    ) -> [UInt8] {
        var builder = NetlinkMessageBuilder(
            type: MessageType.setLink, flags: MessageFlags.request | MessageFlags.ack, sequence: sequence)
        builder.appendInterfaceInfo(
            index: index, flags: up == true ? interfaceUpFlag : 0, change: up == nil ? 0 : interfaceUpFlag)
        if let address {
            builder.appendAttribute(type: LinkAttribute.address, address: address)
        }
        if let alias {
            builder.appendAttribute(type: LinkAttribute.alias, string: alias)
        }
        return builder.finish()
    }

    /// RTM_SETLINK with IFLA_AF_SPEC { AF_INET6 { IFLA_INET6_ADDR_GEN_MODE = NONE } }, and
    /// IFLA_IFALIAS when `alias` is given: the kernel takes both in one request (it validates the
    /// address-family part before it changes anything, so a refusal leaves the alias unset too).
    package static func disableIPv6AddressGenerationRequest(
        index: Int32, alias: String? = nil, sequence: UInt32
    ) -> [UInt8] {
        var builder = NetlinkMessageBuilder(
            type: MessageType.setLink, flags: MessageFlags.request | MessageFlags.ack, sequence: sequence)
        builder.appendInterfaceInfo(index: index)
        if let alias {
            builder.appendAttribute(type: LinkAttribute.alias, string: alias)
        }
        builder.appendNested(type: LinkAttribute.addressFamilySpecific) { families in
            families.appendNested(type: IPv6LinkAttribute.family) { ipv6 in
                ipv6.appendAttribute(
                    type: IPv6LinkAttribute.addressGenerationMode, payload: [IPv6LinkAttribute.addressGenerationNone])
            }
        }
        return builder.finish()
    }
}
