/// The byte stream a QMP monitor sends, cut into lines: the reader thread's framing, kept apart
/// from the socket so that it can be fuzzed (fuzz/) with any stream in any chunking.
package struct QMPLineSplitter {
    package let maximumLineLength: Int
    private var buffer: [UInt8] = []
    /// Where the search for the next newline resumes: bytes before it hold none.
    private var scanFrom = 0

    /// What the buffer holds room for now: nothing once every line in it was handed on.
    package var bufferCapacity: Int { buffer.capacity }

    package init(maximumLineLength: Int) {
        self.maximumLineLength = maximumLineLength
    }

    /// Adds a chunk as read from the socket and hands each complete, non-empty line to `line`
    /// (without its CR LF or LF). Returns a reason to drop the connection: the one `line` gave, or
    /// a partial line past the limit (a peer must not make us buffer without bound).
    package mutating func append(_ chunk: some Collection<UInt8>, _ line: (ArraySlice<UInt8>) -> String?) -> String? {
        buffer.append(contentsOf: chunk)
        var lineStart = 0
        while let newline = buffer[scanFrom...].firstIndex(of: 0x0A) {
            var lineEnd = newline
            if lineEnd > lineStart, buffer[lineEnd - 1] == 0x0D { lineEnd -= 1 }
            if lineEnd > lineStart, let fatal = line(buffer[lineStart..<lineEnd]) { return fatal }
            lineStart = newline + 1
            scanFrom = lineStart
        }
        if lineStart == buffer.count {
            // Drained: the room goes back to the allocator instead of staying with this connection
            // for its life (a daemon keeps a reader per VM, idle between replies; kept room was up
            // to 16 KiB each, the length of a long reply's last read).
            buffer.removeAll()
        } else if lineStart > 0 {
            buffer.removeFirst(lineStart)
        }
        scanFrom = buffer.count
        if buffer.count > maximumLineLength { return "peer sent a line longer than \(maximumLineLength) bytes" }
        return nil
    }
}

/// One line from a QMP monitor, decoded: what the reader does with it depends only on this.
package enum QMPInbound: Equatable {
    case greeting(JSONValue)
    case event(QMPEvent)
    /// The answer to the oldest command written and not yet answered.
    case reply(JSONValue)
    case failure(class: String, description: String)
    /// A message that answers none of our commands: one with an `"id"` (we send none, and QEMU
    /// echoes only the id a command carries), or neither `return` nor `error`.
    case ignored
    /// A reason to drop the connection.
    case fatal(String)

    /// `greeted`: whether the greeting came already (the first message must be one).
    package static func decode(_ line: ArraySlice<UInt8>, greeted: Bool) -> QMPInbound {
        let message: JSONValue
        do {
            message = try JSONReader.parse(line)
        } catch {
            return .fatal("peer sent \(error): \(String(decoding: line.prefix(120), as: UTF8.self))")
        }
        guard message.objectValue != nil else { return .fatal("peer sent a non-object message: \(message)") }
        if !greeted {
            guard message["QMP"] != nil else { return .fatal("first message is not a QMP greeting: \(message)") }
            return .greeting(message)
        }
        if let event = QMPEvent(message: message) { return .event(event) }
        guard message["id"] == nil else { return .ignored }
        if let value = message["return"] { return .reply(value) }
        if let error = message["error"] {
            return .failure(
                class: error["class"]?.stringValue ?? "GenericError",
                description: error["desc"]?.stringValue ?? "\(error)")
        }
        return .ignored
    }
}
