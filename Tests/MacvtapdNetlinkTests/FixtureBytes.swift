// Hand-assembled little-endian fixtures (x86-64 host order), independent of the builder under test.

func le16(_ value: UInt16) -> [UInt8] { [UInt8(value & 0xFF), UInt8(value >> 8)] }
func le32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8((value >> (8 * $0)) & 0xFF) } }

/// nlmsghdr with the length computed from the body.
func message(type: UInt16, flags: UInt16, sequence: UInt32, portID: UInt32 = 0, body: [UInt8]) -> [UInt8] {
    le32(UInt32(16 + body.count)) + le16(type) + le16(flags) + le32(sequence) + le32(portID) + body
}

/// One attribute, padded to 4 bytes.
func attribute(_ type: UInt16, _ payload: [UInt8]) -> [UInt8] {
    let bytes = le16(UInt16(4 + payload.count)) + le16(type) + payload
    return bytes + [UInt8](repeating: 0, count: (4 - bytes.count % 4) % 4)
}

func cString(_ text: String) -> [UInt8] { Array(text.utf8) + [0] }

/// struct ifinfomsg.
func interfaceInfo(index: Int32, flags: UInt32 = 0, change: UInt32 = 0, type: UInt16 = 1) -> [UInt8] {
    [0, 0] + le16(type) + le32(UInt32(bitPattern: index)) + le32(flags) + le32(change)
}

let RTM_NEWLINK: UInt16 = 16
let RTM_DELLINK: UInt16 = 17
let NLMSG_ERROR: UInt16 = 2
let NLMSG_DONE: UInt16 = 3
let NLM_F_MULTI: UInt16 = 0x2
