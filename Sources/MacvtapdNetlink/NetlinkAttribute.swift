import MacvtapdCore

/// One attribute (TLV) of a netlink message, its payload a view into the received buffer.
package struct NetlinkAttribute: Hashable, Sendable {
    /// The type with NLA_F_NESTED / NLA_F_NET_BYTEORDER masked off.
    package var type: UInt16
    package var payload: ArraySlice<UInt8>

    package var uint8: UInt8? { payload.count >= 1 ? payload[payload.startIndex] : nil }

    package var uint32: UInt32? {
        guard payload.count >= 4 else { return nil }
        return readInteger(UInt32.self, from: payload, at: payload.startIndex)
    }

    /// Up to the first NUL (the kernel terminates strings; tolerate a missing terminator).
    package var string: String {
        let end = payload.firstIndex(of: 0) ?? payload.endIndex
        return String(decoding: payload[payload.startIndex..<end], as: UTF8.self)
    }

    package var macAddress: MACAddress? { MACAddress(bytes: Array(payload)) }

    package func nested() throws -> [NetlinkAttribute] { try NetlinkAttribute.parse(payload) }

    /// Splits `bytes` into attributes, honouring the 4-byte alignment between them. A length that
    /// runs past the end is an error; trailing padding shorter than a header is not.
    package static func parse(_ bytes: ArraySlice<UInt8>) throws -> [NetlinkAttribute] {
        var attributes: [NetlinkAttribute] = []
        var offset = bytes.startIndex
        while bytes.endIndex - offset >= 4 {
            let length = Int(readInteger(UInt16.self, from: bytes, at: offset))
            let type = readInteger(UInt16.self, from: bytes, at: offset + 2) & AttributeFlags.typeMask
            guard length >= 4 else {
                throw NetlinkMessageError("attribute type \(type) has length \(length) < 4", offset: offset)
            }
            guard length <= bytes.endIndex - offset else {
                throw NetlinkMessageError(
                    "attribute type \(type) claims \(length) bytes, \(bytes.endIndex - offset) left", offset: offset)
            }
            attributes.append(NetlinkAttribute(type: type, payload: bytes[(offset + 4)..<(offset + length)]))
            offset += alignedTo4(length)
        }
        return attributes
    }
}

extension Array where Element == NetlinkAttribute {
    /// The last attribute of that type: the kernel sends each once, and last-wins matches its parser.
    package func last(_ type: UInt16) -> NetlinkAttribute? { last { $0.type == type } }
}

package func alignedTo4(_ length: Int) -> Int { (length + 3) & ~3 }

/// Reads a host-order integer at an absolute index of a slice; the caller checked the bounds.
package func readInteger<T: FixedWidthInteger>(_: T.Type, from bytes: ArraySlice<UInt8>, at index: Int) -> T {
    var value = T.zero
    withUnsafeMutableBytes(of: &value) { raw in
        for i in 0..<MemoryLayout<T>.size { raw[i] = bytes[index + i] }
    }
    return value
}
