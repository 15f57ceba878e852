/// A veth pair inside a test namespace: `name` plays the host interface (a macvtap's lower),
/// `peer` the wire on the far side, where a `PacketSocket` watches.
public struct VethPair: Hashable, Sendable {
    public var name: String
    public var peer: String
}

extension NetworkNamespace {
    /// `ip link add NAME type veth peer name PEER`, both brought up unless told otherwise.
    @discardableResult
    public func addVethPair(_ name: String, peer: String, up: Bool = true) async throws -> VethPair {
        try await ip("link", "add", name, "type", "veth", "peer", "name", peer)
        if up {
            try await ip("link", "set", name, "up")
            try await ip("link", "set", peer, "up")
        }
        return VethPair(name: name, peer: peer)
    }
}
