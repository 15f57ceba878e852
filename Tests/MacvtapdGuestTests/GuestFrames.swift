import MacvtapdCore

/// Just enough Ethernet, ARP, IPv4 and ICMP to talk to the guest through a hub probe.
enum GuestFrames {
    static let broadcast: [UInt8] = Array(repeating: 0xff, count: 6)

    struct ARP: Equatable {
        var isRequest: Bool
        var senderMAC: [UInt8]
        var senderIP: [UInt8]
        var targetIP: [UInt8]
    }

    struct Echo: Equatable {
        var isRequest: Bool
        var sourceMAC: [UInt8]
        var sourceIP: [UInt8]
        var destinationIP: [UInt8]
        var identifier: UInt16
        var sequence: UInt16
        var payload: [UInt8]
    }

    static func ipv4(_ text: String) -> [UInt8] { text.split(separator: ".").map { UInt8($0)! } }

    static func arp(_ frame: [UInt8]) -> ARP? {
        guard frame.count >= 42, frame[12] == 0x08, frame[13] == 0x06, frame[20] == 0 else { return nil }
        guard frame[21] == 1 || frame[21] == 2 else { return nil }
        return ARP(
            isRequest: frame[21] == 1, senderMAC: Array(frame[22..<28]), senderIP: Array(frame[28..<32]),
            targetIP: Array(frame[38..<42]))
    }

    static func arpRequest(from mac: MACAddress, ip: [UInt8], asking target: [UInt8]) -> [UInt8] {
        broadcast + mac.bytes + [0x08, 0x06] + [0, 1, 0x08, 0x00, 6, 4, 0, 1] + mac.bytes + ip
            + [UInt8](repeating: 0, count: 6) + target
    }

    static func arpReply(from mac: MACAddress, ip: [UInt8], to destination: [UInt8], ip destinationIP: [UInt8])
        -> [UInt8]
    {
        destination + mac.bytes + [0x08, 0x06] + [0, 1, 0x08, 0x00, 6, 4, 0, 2] + mac.bytes + ip + destination
            + destinationIP
    }

    static func echo(_ frame: [UInt8]) -> Echo? {
        guard frame.count >= 42, frame[12] == 0x08, frame[13] == 0x00, frame[14] == 0x45, frame[23] == 1 else {
            return nil
        }
        let totalLength = Int(frame[16]) << 8 | Int(frame[17])
        guard frame.count >= 14 + totalLength, totalLength >= 28, frame[34] == 8 || frame[34] == 0 else { return nil }
        return Echo(
            isRequest: frame[34] == 8, sourceMAC: Array(frame[6..<12]), sourceIP: Array(frame[26..<30]),
            destinationIP: Array(frame[30..<34]), identifier: UInt16(frame[38]) << 8 | UInt16(frame[39]),
            sequence: UInt16(frame[40]) << 8 | UInt16(frame[41]), payload: Array(frame[42..<(14 + totalLength)]))
    }

    /// An ICMP echo request or reply from (`mac`, `source`) to (`destinationMAC`, `destination`).
    static func echo(
        request: Bool, from mac: MACAddress, _ source: [UInt8], to destinationMAC: [UInt8], _ destination: [UInt8],
        identifier: UInt16, sequence: UInt16, payload: [UInt8]
    ) -> [UInt8] {
        var icmp: [UInt8] = [request ? 8 : 0, 0, 0, 0] + bigEndian(identifier) + bigEndian(sequence) + payload
        icmp.replaceSubrange(2..<4, with: bigEndian(checksum(icmp)))
        var ip: [UInt8] = [0x45, 0] + bigEndian(UInt16(20 + icmp.count)) + [0, 0, 0x40, 0, 64, 1, 0, 0]
        ip += source + destination
        ip.replaceSubrange(10..<12, with: bigEndian(checksum(ip)))
        return destinationMAC + mac.bytes + [0x08, 0x00] + ip + icmp
    }

    /// The Internet checksum (RFC 1071).
    static func checksum(_ bytes: [UInt8]) -> UInt16 {
        var sum: UInt32 = 0
        for index in stride(from: 0, to: bytes.count, by: 2) {
            sum += UInt32(bytes[index]) << 8 | (index + 1 < bytes.count ? UInt32(bytes[index + 1]) : 0)
        }
        while sum > 0xffff { sum = (sum & 0xffff) + (sum >> 16) }
        return ~UInt16(sum)
    }

    private static func bigEndian(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xff)] }
}
