import Glibc

/// struct nlmsghdr.
package struct NetlinkHeader: Hashable, Sendable {
    package static let size = 16

    package var length: UInt32
    package var type: UInt16
    package var flags: UInt16
    package var sequence: UInt32
    package var portID: UInt32
}

/// One message of a received datagram: header plus a view of its payload (family header and
/// attributes, or the error / done body).
package struct NetlinkMessage: Hashable, Sendable {
    package var header: NetlinkHeader
    package var payload: ArraySlice<UInt8>

    /// Splits a datagram into its messages. A datagram may hold several (dumps batch them); each
    /// starts 4-byte aligned after the previous one.
    package static func split(_ buffer: ArraySlice<UInt8>) throws -> [NetlinkMessage] {
        var messages: [NetlinkMessage] = []
        var offset = buffer.startIndex
        while offset < buffer.endIndex {
            let available = buffer.endIndex - offset
            guard available >= NetlinkHeader.size else {
                throw NetlinkMessageError("\(available) bytes left, a header needs 16", offset: offset)
            }
            let header = NetlinkHeader(
                length: readInteger(UInt32.self, from: buffer, at: offset),
                type: readInteger(UInt16.self, from: buffer, at: offset + 4),
                flags: readInteger(UInt16.self, from: buffer, at: offset + 6),
                sequence: readInteger(UInt32.self, from: buffer, at: offset + 8),
                portID: readInteger(UInt32.self, from: buffer, at: offset + 12))
            let length = Int(header.length)
            guard length >= NetlinkHeader.size, length <= available else {
                throw NetlinkMessageError(
                    "message type \(header.type) claims \(length) bytes, \(available) available", offset: offset)
            }
            messages.append(
                NetlinkMessage(header: header, payload: buffer[(offset + NetlinkHeader.size)..<(offset + length)]))
            offset += min(alignedTo4(length), available)
        }
        return messages
    }
}

/// The body of NLMSG_ERROR (an ACK when `errno` is 0) or of NLMSG_DONE.
package struct NetlinkStatus: Hashable, Sendable {
    /// Positive errno; 0 is success.
    package var errno: Int32
    /// The kernel's extended-ack text (NLMSGERR_ATTR_MSG), e.g. "Attribute failed policy validation".
    package var message: String?

    /// Decodes an NLMSG_ERROR payload: the negated errno, the request's header (or the whole
    /// request unless capped), then extended-ack attributes when NLM_F_ACK_TLVS is set.
    package static func decodeError(_ message: NetlinkMessage) throws -> NetlinkStatus {
        let payload = message.payload
        guard payload.count >= 4 + NetlinkHeader.size else {
            throw NetlinkMessageError(
                "NLMSG_ERROR body has \(payload.count) bytes, needs 20", offset: payload.startIndex)
        }
        let code = readInteger(Int32.self, from: payload, at: payload.startIndex)
        var tlvStart = payload.startIndex + 4 + NetlinkHeader.size
        let isCapped = message.header.flags & MessageFlags.capped != 0
        // Without NETLINK_CAP_ACK the kernel echoes the failed request in full; ACKs never echo it.
        if !isCapped && code != 0 {
            let echoed = Int(readInteger(UInt32.self, from: payload, at: payload.startIndex + 4))
            tlvStart = payload.startIndex + 4 + alignedTo4(max(echoed, NetlinkHeader.size))
        }
        return NetlinkStatus(
            errno: negatedCode(code), message: try extendedAckMessage(message, from: min(tlvStart, payload.endIndex)))
    }

    /// Decodes an NLMSG_DONE payload: an int that is negative when the dump failed part-way.
    /// Some families send NLMSG_DONE with no body; that is success.
    package static func decodeDone(_ message: NetlinkMessage) throws -> NetlinkStatus {
        let payload = message.payload
        guard payload.count >= 4 else { return NetlinkStatus(errno: 0, message: nil) }
        let code = readInteger(Int32.self, from: payload, at: payload.startIndex)
        return NetlinkStatus(
            errno: negatedCode(code), message: try extendedAckMessage(message, from: payload.startIndex + 4))
    }

    /// The kernel sends -errno; INT_MIN has no negation, and trapping on it (found by fuzz/netlink)
    /// would take the daemon down on one odd message: it reads as a protocol error instead.
    private static func negatedCode(_ code: Int32) -> Int32 { code == .min ? EPROTO : -code }

    private static func extendedAckMessage(_ message: NetlinkMessage, from start: Int) throws -> String? {
        guard message.header.flags & MessageFlags.ackTLVs != 0 else { return nil }
        let attributes = try NetlinkAttribute.parse(message.payload[start...])
        return attributes.last(ExtendedAckAttribute.message)?.string
    }
}
