import MacvtapdCore

/// Builds one netlink message in host byte order: header, family header, attributes (TLVs
/// padded to 4 bytes), nested attributes. Pure: no sockets, so tests compare exact bytes.
package struct NetlinkMessageBuilder {
    package private(set) var bytes: [UInt8]

    package init(type: UInt16, flags: UInt16, sequence: UInt32, portID: UInt32 = 0) {
        bytes = []
        bytes.reserveCapacity(256)
        append(UInt32(0))  // nlmsg_len, patched by `finish`
        append(type)
        append(flags)
        append(sequence)
        append(portID)
    }

    package mutating func append<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value) { bytes.append(contentsOf: $0) }
    }

    /// struct ifinfomsg.
    package mutating func appendInterfaceInfo(index: Int32 = 0, flags: UInt32 = 0, change: UInt32 = 0) {
        bytes.append(0)  // ifi_family AF_UNSPEC
        bytes.append(0)  // pad
        append(UInt16(0))  // ifi_type
        append(index)
        append(flags)
        append(change)
    }

    package mutating func appendAttribute(type: UInt16, payload: some Collection<UInt8>) {
        append(UInt16(4 + payload.count))
        append(type)
        bytes.append(contentsOf: payload)
        pad()
    }

    package mutating func appendAttribute(type: UInt16, uint32 value: UInt32) {
        withUnsafeBytes(of: value) { appendAttribute(type: type, payload: $0) }
    }

    /// NUL-terminated, as the kernel's NLA_STRING / NLA_NUL_STRING policies expect.
    package mutating func appendAttribute(type: UInt16, string: String) {
        appendAttribute(type: type, payload: Array(string.utf8) + [0])
    }

    package mutating func appendAttribute(type: UInt16, address: MACAddress) {
        appendAttribute(type: type, payload: address.bytes)
    }

    package mutating func appendNested(type: UInt16, _ body: (inout NetlinkMessageBuilder) -> Void) {
        let start = bytes.count
        append(UInt16(0))
        append(type | AttributeFlags.nested)
        body(&self)
        patch(UInt16(bytes.count - start), at: start)
    }

    /// The finished message with its length filled in.
    package func finish() -> [UInt8] {
        var copy = self
        copy.patch(UInt32(bytes.count), at: 0)
        return copy.bytes
    }

    private mutating func pad() {
        while bytes.count % 4 != 0 { bytes.append(0) }
    }

    private mutating func patch<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        withUnsafeBytes(of: value) { raw in
            for (i, byte) in raw.enumerated() { bytes[offset + i] = byte }
        }
    }
}
