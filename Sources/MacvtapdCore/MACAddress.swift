/// A 48-bit Ethernet address.
public struct MACAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    /// Six bytes, most significant first; anything else is not a MAC address.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 6 else { return nil }
        self.bytes = bytes
    }

    /// Parses the colon-separated form `52:54:00:12:34:56` (case-insensitive; '-' also accepted).
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        let groups = parts.count == 6 ? parts : text.split(separator: "-", omittingEmptySubsequences: false)
        guard groups.count == 6 else { return nil }
        var bytes: [UInt8] = []
        for group in groups {
            guard group.count == 2, let byte = UInt8(group, radix: 16) else { return nil }
            bytes.append(byte)
        }
        self.bytes = bytes
    }

    /// Lower-case, colon-separated: the form the kernel and QEMU print.
    public var description: String {
        bytes.map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined(separator: ":")
    }

    /// Group addresses have the least significant bit of the first byte set.
    public var isMulticast: Bool { bytes[0] & 0x01 != 0 }
    public var isZero: Bool { bytes.allSatisfy { $0 == 0 } }
    /// A MAC a NIC may own: unicast and not all-zero.
    public var isAssignable: Bool { !isMulticast && !isZero }

    public static func < (lhs: MACAddress, rhs: MACAddress) -> Bool { lhs.bytes.lexicographicallyPrecedes(rhs.bytes) }
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
