import MacvtapdQMP

/// libFuzzer entry: a byte stream from a QMP monitor → the reader's framing and decoding, as
/// QMPConnection's reader thread runs them. The first byte picks how the stream is cut into
/// reads (the socket may hand over any chunking); the line limit is small so the oversized-line
/// path is reached. Every line is decoded as the reader would, greeting first; a greeting, an
/// event, a reply and an error are looked at as their consumers do.
///
/// The reader uses read(2), not recvmsg(2): file descriptors a peer attaches (SCM_RIGHTS) are
/// never installed in our process (the kernel discards them), so the fd-passing framing has no
/// parser to fuzz; FaultTests covers a peer that sends fds.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzQMP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size > 0, let data else { return 0 }
    let chunkSize = Int(data[0]) + 1
    let stream = UnsafeBufferPointer(start: data + 1, count: size - 1)
    var lines = QMPLineSplitter(maximumLineLength: 4096)
    var greeted = false
    var offset = 0
    while offset < stream.count {
        let end = min(offset + chunkSize, stream.count)
        let fatal = lines.append(stream[offset..<end]) { line in
            precondition(!line.isEmpty && line.last != 0x0A, "a line is non-empty and has no newline")
            switch QMPInbound.decode(line, greeted: greeted) {
            case .fatal(let reason): return reason
            case .greeting(let message):
                greeted = true
                if let greeting = QMPGreeting(message: message) { _ = (greeting.version, greeting.capabilities) }
            case .event(let event): _ = (event.deviceID, event.description)
            case .reply(let value): _ = "\(value)"
            case .failure(let errorClass, let description): _ = (errorClass, description)
            case .ignored: break
            }
            return nil
        }
        if fatal != nil { return 0 }
        offset = end
    }
    return 0
}
