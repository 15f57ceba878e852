import Glibc
import MacvtapdCore

extension RouteSocket {
    /// Every link of the namespace (RTM_GETLINK dump).
    public func links() throws -> [Link] {
        // The kernel flags a dump that raced with a change; a fresh one is consistent.
        for _ in 0..<4 {
            var links: [Link] = []
            do {
                try exchange(
                    operation: "dump links", interface: nil, reply: .dump,
                    request: { LinkMessage.dumpRequest(sequence: $0) },
                    receive: { message in
                        if message.header.type == MessageType.newLink {
                            links.append(try decodeLink(message, operation: "dump links", interface: nil))
                        }
                    })
                return links
            } catch is DumpInterrupted {
                continue
            }
        }
        throw NetlinkError(
            operation: "dump links", interface: nil, errno: EINTR, message: "dump kept being interrupted")
    }

    /// The link with that ifindex; NetlinkError ENODEV when there is none.
    public func link(index: Int32) throws -> Link {
        try getLink(interface: "ifindex \(index)") { LinkMessage.getRequest(index: index, sequence: $0) }
    }

    /// The link with that name; NetlinkError ENODEV when there is none.
    public func link(named name: String) throws -> Link {
        try InterfaceName.validate(name)
        return try getLink(interface: name) { LinkMessage.getRequest(name: name, sequence: $0) }
    }

    private func getLink(interface: String, request: (UInt32) -> [UInt8]) throws -> Link {
        var found: Link?
        try exchange(
            operation: "get link", interface: interface, reply: .single, request: request,
            receive: { message in
                guard message.header.type == MessageType.newLink else {
                    throw NetlinkError(
                        operation: "get link", interface: interface, errno: EPROTO,
                        message: "reply of type \(message.header.type) to RTM_GETLINK")
                }
                found = try decodeLink(message, operation: "get link", interface: interface)
            })
        guard let found else { throw NetlinkError(operation: "get link", interface: interface, errno: ENODEV) }
        return found
    }

    /// Creates a macvtap and returns it as the kernel reports it afterwards. RTM_NEWLINK (name,
    /// lower, MAC, mode) creates it down; IPv6 address generation is turned off before it is ever
    /// up, then it is brought up if asked. With address generation on, an up macvtap makes the
    /// host itself send from the guest's MAC (duplicate-address detection, multicast listener
    /// reports), which a switch learns as the guest: during a live migration, at the wrong host.
    ///
    /// Three kernel round trips where the kernel allows no fewer (verified on 6.18): the creation,
    /// echoed back (NLM_F_ECHO; a kernel before 6.3 does not echo and is asked with a GET); one
    /// RTM_SETLINK for the address-generation mode and the alias (the kernel ignores IFLA_IFALIAS
    /// and refuses IFLA_AF_SPEC in a creating request); one to bring it up (a request that brings
    /// a link up and sets its address-generation mode brings it up first, and the link-local
    /// address is made). A GET after the up reads the flags and state it changed. If a follow-up
    /// fails the new macvtap is deleted again, so nothing half-made or unmarked is left behind. A
    /// link monitor may see the new macvtap down, or without its alias, for that instant.
    public func createMacvtap(_ configuration: MacvtapConfiguration) throws -> Link {
        try InterfaceName.validate(configuration.name)
        let interface = "\(configuration.name) on ifindex \(configuration.lowerIndex)"
        var echoed: NetlinkMessage?
        try exchange(
            operation: "create macvtap", interface: interface, reply: .ack,
            request: { LinkMessage.createMacvtapRequest(configuration, sequence: $0) },
            receive: { message in
                if message.header.type == MessageType.newLink { echoed = message }
            })
        var created: Link
        if let echoed, let link = try? LinkMessage.decode(echoed).link, link.name == configuration.name {
            created = link
        } else {
            created = try link(named: configuration.name)
        }
        do {
            let alias = configuration.alias.flatMap { $0 == created.alias ? nil : $0 }
            try disableIPv6AddressGeneration(index: created.index, alias: alias)
            if alias != nil { created.alias = alias }
            guard configuration.up else { return created }
            try setUp(true, index: created.index)
            return try link(index: created.index)
        } catch {
            try? deleteLink(index: created.index)
            throw error
        }
    }

    /// Turns IPv6 address generation off (IFLA_INET6_ADDR_GEN_MODE none): no link-local address, no
    /// autoconf, so nothing of the host's own is sent from the link's MAC; sets `alias` in the same
    /// request when given. A kernel without IPv6 (ipv6.disable=1) has nothing to turn off and
    /// answers EAFNOSUPPORT, which is success here (the alias then goes alone).
    public func disableIPv6AddressGeneration(index: Int32, alias: String? = nil) throws {
        do {
            try exchange(
                operation: "turn off IPv6 address generation of", interface: "ifindex \(index)", reply: .ack,
                request: { LinkMessage.disableIPv6AddressGenerationRequest(index: index, alias: alias, sequence: $0) })
        } catch let error as NetlinkError where error.errno == EAFNOSUPPORT {
            if let alias { try setAlias(alias, index: index) }
        }
    }

    /// RTM_DELLINK. Deleting a lower deletes its macvtaps with it.
    public func deleteLink(index: Int32) throws {
        try exchange(
            operation: "delete link", interface: "ifindex \(index)", reply: .ack,
            request: { LinkMessage.deleteRequest(index: index, sequence: $0) })
    }

    public func setAddress(_ address: MACAddress, index: Int32) throws {
        try exchange(
            operation: "set address \(address) of", interface: "ifindex \(index)", reply: .ack,
            request: { LinkMessage.setRequest(index: index, address: address, sequence: $0) })
    }

    /// nil clears the alias.
    public func setAlias(_ alias: String?, index: Int32) throws {
        try exchange(
            operation: "set alias of", interface: "ifindex \(index)", reply: .ack,
            request: { LinkMessage.setRequest(index: index, alias: alias ?? "", sequence: $0) })
    }

    /// Sets or clears IFF_UP.
    public func setUp(_ up: Bool, index: Int32) throws {
        try exchange(
            operation: up ? "bring up" : "bring down", interface: "ifindex \(index)", reply: .ack,
            request: { LinkMessage.setRequest(index: index, up: up, sequence: $0) })
    }
}

/// A link message that does not parse fails the operation that asked for it, named as such.
private func decodeLink(_ message: NetlinkMessage, operation: String, interface: String?) throws -> Link {
    do {
        return try LinkMessage.decode(message).link
    } catch {
        throw NetlinkError(operation: operation, interface: interface, errno: EPROTO, message: "\(error)")
    }
}
