/// A 48-bit Ethernet address, stored inline: a host with a thousand links keeps two per link, and
/// an array each would be a heap allocation each.
public struct MACAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// The six bytes in the low 48 bits, the first byte most significant.
    private let value: UInt64

    /// Six bytes, most significant first.
    public var bytes: [UInt8] { (0..<6).map { UInt8(truncatingIfNeeded: value >> (8 * (5 - $0))) } }

    /// Six bytes, most significant first; anything else is not a MAC address.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 6 else { return nil }
        value = bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Parses the colon-separated form `52:54:00:12:34:56` (case-insensitive; '-' also accepted).
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        let groups = parts.count == 6 ? parts : text.split(separator: "-", omittingEmptySubsequences: false)
        guard groups.count == 6 else { return nil }
        var value: UInt64 = 0
        for group in groups {
            guard group.count == 2, let byte = UInt8(group, radix: 16) else { return nil }
            value = value << 8 | UInt64(byte)
        }
        self.value = value
    }

    /// Lower-case, colon-separated: the form the kernel and QEMU print.
    public var description: String {
        bytes.map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined(separator: ":")
    }

    /// Group addresses have the least significant bit of the first byte set.
    public var isMulticast: Bool { (value >> 40) & 0x01 != 0 }
    public var isZero: Bool { value == 0 }
    /// A MAC a NIC may own: unicast and not all-zero.
    public var isAssignable: Bool { !isMulticast && !isZero }

    public static func < (lhs: MACAddress, rhs: MACAddress) -> Bool { lhs.value < rhs.value }
}

extension MACAddress: Codable {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let mac = MACAddress(text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a MAC address: \(text)")
        }
        self = mac
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
