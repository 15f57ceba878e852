import MacvtapdCore

/// What `RouteSocket.createMacvtap` creates.
public struct MacvtapConfiguration: Hashable, Sendable {
    /// 1...15 bytes; see `InterfaceName.validate`.
    public var name: String
    /// The host interface the macvtap is bound to for life.
    public var lowerIndex: Int32
    public var mode: MacvtapMode
    /// Set in the creating message; nil lets the kernel pick a random one. A passthru macvtap
    /// takes its lower's MAC whatever is asked here (kernel behaviour).
    public var address: MACAddress?
    /// IFLA_IFALIAS: macvtapd's ownership mark.
    public var alias: String?
    /// Bring it up (IFF_UP) as part of the creation.
    public var up: Bool

    public init(
        name: String, lowerIndex: Int32, mode: MacvtapMode, address: MACAddress? = nil, alias: String? = nil,
        up: Bool = true
    ) {
        self.name = name
        self.lowerIndex = lowerIndex
        self.mode = mode
        self.address = address
        self.alias = alias
        self.up = up
    }
}
