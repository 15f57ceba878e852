import MacvtapdNetlink

/// libFuzzer entry: one received rtnetlink datagram → the decoder, as the link monitor (every
/// message as a notification) and the request path (NLMSG_ERROR, NLMSG_DONE, a link reply) run
/// it. The kernel is the only sender, but a decoder that traps on a message it did not expect
/// takes the daemon down: errors and resyncs, never a crash.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNetlink(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let buffer = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    guard let messages = try? NetlinkMessage.split(buffer[...]) else { return 0 }
    for message in messages {
        _ = LinkEvent(notification: message)
        _ = try? NetlinkStatus.decodeError(message)
        _ = try? NetlinkStatus.decodeDone(message)
        if let decoded = try? LinkMessage.decode(message) {
            _ = (decoded.link.name, decoded.link.kind, decoded.link.macvtapMode, decoded.link.address)
        }
    }
    return 0
}
