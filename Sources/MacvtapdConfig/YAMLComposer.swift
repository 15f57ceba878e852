// CYaml is the distribution's libyaml (Package.swift says why not through Yams). We compose nodes
// from libyaml's events ourselves rather than with a library's composer because Yams' composer
// hashes and compares mapping keys recursively: one alias to a "billion laughs" collection used as
// a key expands exponentially before any caller can count nodes. Composing from events lets us
// count every alias expansion as it happens, bound the nesting depth (this composer recurses),
// report a second document with its position, and leave duplicate keys to the validator, which
// reports all of them instead of stopping at the first.
import CYaml

/// Turns the bytes of one configuration file into a `YAMLNode` tree, within bounds.
struct YAMLComposer {
    /// Why composing stopped. libyaml cannot resume after a syntax error, so there is one per file.
    struct Failure: Error {
        var message: String
        var line: Int
        var column: Int
    }

    /// Nodes the document may expand to, every alias counting as the full size of what it names.
    var maxNodes: Int

    /// Collections nested in one another, at most: libyaml's own limit where it has one (releases
    /// after 0.2.5; Debian 12 ships 0.2.5, which has none), and what keeps `node(from:)`'s
    /// recursion far from the bottom of any thread's stack.
    static let maxDepth = 1000

    /// The document's root, or nil when the stream holds no document (empty or comments only).
    func compose(_ bytes: [UInt8]) -> Result<YAMLNode?, Failure> {
        if let (offset, byte) = Self.firstInvalidUTF8(bytes) {
            let (line, column) = Self.position(ofByte: offset, in: bytes)
            let hex = "0x" + String(byte, radix: 16, uppercase: true)
            return .failure(
                Failure(
                    message: "not valid UTF-8 (byte \(hex)); save the file as UTF-8",
                    line: line, column: column))
        }
        guard !bytes.isEmpty else { return .success(nil) }
        return bytes.withUnsafeBufferPointer { buffer in
            var session = Session(bytes: bytes, maxNodes: maxNodes)
            yaml_parser_initialize(&session.parser)
            defer { yaml_parser_delete(&session.parser) }
            yaml_parser_set_encoding(&session.parser, YAML_UTF8_ENCODING)
            yaml_parser_set_input_string(&session.parser, buffer.baseAddress, buffer.count)
            do {
                return .success(try session.document())
            } catch let failure as Failure {
                return .failure(failure)
            } catch {
                return .failure(Failure(message: "\(error)", line: 1, column: 1))
            }
        }
    }

    /// One parse: libyaml's parser state, the anchors seen so far and the running node count.
    private struct Session {
        let bytes: [UInt8]
        let maxNodes: Int
        var parser = yaml_parser_t()
        var anchors: [String: (node: YAMLNode, weight: Int)] = [:]
        /// Nodes of the expanded document so far; an alias adds the whole weight of its anchor.
        var expandedNodes = 0
        /// Collections open around the node being composed.
        var depth = 0

        init(bytes: [UInt8], maxNodes: Int) {
            self.bytes = bytes
            self.maxNodes = maxNodes
        }

        mutating func document() throws -> YAMLNode? {
            var event = try next()  // STREAM-START
            yaml_event_delete(&event)
            event = try next()
            defer { yaml_event_delete(&event) }
            if event.type == YAML_STREAM_END_EVENT { return nil }
            var rootEvent = try next()
            let (root, _) = try node(from: &rootEvent)
            var end = try next()  // DOCUMENT-END
            yaml_event_delete(&end)
            var after = try next()
            defer { yaml_event_delete(&after) }
            if after.type == YAML_DOCUMENT_START_EVENT {
                let (line, column) = Self.position(after.start_mark)
                throw Failure(
                    message: "a second YAML document starts here; a configuration file holds exactly one "
                        + "document (put each one in its own file of a configuration directory)",
                    line: line, column: column)
            }
            return root
        }

        /// Composes the node that `event` starts and frees the event.
        mutating func node(from event: inout yaml_event_t) throws -> (YAMLNode, weight: Int) {
            defer { yaml_event_delete(&event) }
            let (line, column) = Self.position(event.start_mark)
            switch event.type {
            case YAML_ALIAS_EVENT:
                let name = Self.string(event.data.alias.anchor) ?? ""
                guard let (anchored, weight) = anchors[name] else {
                    throw Failure(
                        message: "alias '*\(name)' refers to no anchor '&\(name)' defined before it",
                        line: line, column: column)
                }
                try count(weight, line: line, column: column, alias: name)
                var node = anchored
                node.line = line
                node.column = column
                return (node, weight)
            case YAML_SCALAR_EVENT:
                try count(1, line: line, column: column, alias: nil)
                let data = event.data.scalar
                let value = String(decoding: UnsafeBufferPointer(start: data.value, count: data.length), as: UTF8.self)
                let scalar = YAMLScalar(
                    value: value, isPlain: data.style == YAML_PLAIN_SCALAR_STYLE, tag: Self.string(data.tag))
                let node = YAMLNode(content: .scalar(scalar), line: line, column: column)
                register(Self.string(data.anchor), node, weight: 1)
                return (node, 1)
            case YAML_SEQUENCE_START_EVENT:
                try count(1, line: line, column: column, alias: nil)
                try enter(line: line, column: column)
                defer { depth -= 1 }
                let anchor = Self.string(event.data.sequence_start.anchor)
                var items: [YAMLNode] = []
                var weight = 1
                while true {
                    var child = try next()
                    if child.type == YAML_SEQUENCE_END_EVENT {
                        yaml_event_delete(&child)
                        break
                    }
                    let (item, itemWeight) = try node(from: &child)
                    items.append(item)
                    weight += itemWeight
                }
                let node = YAMLNode(content: .sequence(items), line: line, column: column)
                register(anchor, node, weight: weight)
                return (node, weight)
            case YAML_MAPPING_START_EVENT:
                try count(1, line: line, column: column, alias: nil)
                try enter(line: line, column: column)
                defer { depth -= 1 }
                let anchor = Self.string(event.data.mapping_start.anchor)
                var pairs: [YAMLPair] = []
                var weight = 1
                while true {
                    var keyEvent = try next()
                    if keyEvent.type == YAML_MAPPING_END_EVENT {
                        yaml_event_delete(&keyEvent)
                        break
                    }
                    let (key, keyWeight) = try node(from: &keyEvent)
                    var valueEvent = try next()
                    let (value, valueWeight) = try node(from: &valueEvent)
                    pairs.append(YAMLPair(key: key, value: value))
                    weight += keyWeight + valueWeight
                }
                let node = YAMLNode(content: .mapping(pairs), line: line, column: column)
                register(anchor, node, weight: weight)
                return (node, weight)
            default:
                throw Failure(message: "unexpected YAML event \(event.type.rawValue)", line: line, column: column)
            }
        }

        private mutating func register(_ anchor: String?, _ node: YAMLNode, weight: Int) {
            guard let anchor else { return }
            anchors[anchor] = (node, weight)
        }

        /// One more collection level; past `maxDepth`, an error at the collection that goes too deep.
        private mutating func enter(line: Int, column: Int) throws {
            depth += 1
            guard depth > YAMLComposer.maxDepth else { return }
            throw Failure(
                message: "invalid YAML: Maximum nesting level reached: collections nest deeper than "
                    + "\(YAMLComposer.maxDepth) levels here",
                line: line, column: column)
        }

        /// The node budget is what stops alias bombs: each alias is charged the full size of its target.
        private mutating func count(_ nodes: Int, line: Int, column: Int, alias: String?) throws {
            expandedNodes += nodes
            guard expandedNodes > maxNodes else { return }
            if let alias {
                throw Failure(
                    message: "alias '*\(alias)' expands the document beyond \(maxNodes) nodes; "
                        + "anchors and aliases may not multiply the document past that limit",
                    line: line, column: column)
            }
            throw Failure(
                message: "the document has more than \(maxNodes) nodes, the limit for one file",
                line: line, column: column)
        }

        private mutating func next() throws -> yaml_event_t {
            var event = yaml_event_t()
            guard yaml_parser_parse(&parser, &event) == 1 else { throw parserFailure() }
            return event
        }

        private func parserFailure() -> Failure {
            let problem = Self.string(parser.problem) ?? "unknown YAML error"
            var line: Int
            var column: Int
            if parser.error == YAML_READER_ERROR {
                (line, column) = YAMLComposer.position(ofByte: parser.problem_offset, in: bytes)
            } else {
                (line, column) = Self.position(parser.problem_mark)
            }
            var message = problem
            if let context = Self.string(parser.context) {
                let (contextLine, contextColumn) = Self.position(parser.context_mark)
                message += " (\(context) at \(contextLine):\(contextColumn))"
            }
            if let hint = YAMLHints.hint(problem: problem, line: line, column: column, in: bytes) {
                message += "; " + hint
            }
            return Failure(message: "invalid YAML: " + message, line: line, column: column)
        }

        static func position(_ mark: yaml_mark_t) -> (line: Int, column: Int) {
            (Int(mark.line) + 1, Int(mark.column) + 1)
        }

        static func string(_ pointer: UnsafeMutablePointer<yaml_char_t>?) -> String? {
            pointer.map { String(cString: $0) }
        }

        static func string(_ pointer: UnsafePointer<CChar>?) -> String? {
            pointer.map { String(cString: $0) }
        }
    }

    /// Offset and value of the first byte that is not part of well-formed UTF-8.
    static func firstInvalidUTF8(_ bytes: [UInt8]) -> (offset: Int, byte: UInt8)? {
        var decoder = UTF8()
        var iterator = bytes.makeIterator()
        var offset = 0
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue(let scalar):
                offset += UTF8.width(scalar)
            case .emptyInput:
                return nil
            case .error:
                return (offset, bytes[offset])
            }
        }
    }

    /// 1-based line and column (in Unicode scalars, as libyaml counts) of a byte offset.
    static func position(ofByte offset: Int, in bytes: [UInt8]) -> (line: Int, column: Int) {
        let end = min(offset, bytes.count)
        var line = 1
        var lineStart = 0
        for index in 0..<end where bytes[index] == UInt8(ascii: "\n") {
            line += 1
            lineStart = index + 1
        }
        // Continuation bytes (10xxxxxx) do not start a character.
        let column = 1 + bytes[lineStart..<end].filter { $0 & 0xC0 != 0x80 }.count
        return (line, column)
    }

    /// True when the leading whitespace of 1-based `line` contains a tab.
    static func lineIsIndentedWithTab(_ line: Int, in bytes: [UInt8]) -> Bool {
        var current = 1
        var index = 0
        while current < line, index < bytes.count {
            if bytes[index] == UInt8(ascii: "\n") { current += 1 }
            index += 1
        }
        while index < bytes.count, bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: "\t") {
            if bytes[index] == UInt8(ascii: "\t") { return true }
            index += 1
        }
        return false
    }
}
