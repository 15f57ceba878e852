/// Likely causes for libyaml's terser syntax errors, appended to its message. libyaml reports where
/// parsing failed, which is often the line after the mistake; people mostly make one of two.
enum YAMLHints {
    /// The hint for `problem` at 1-based `line` of `bytes`, or nil when no likely cause is known.
    static func hint(problem: String, line: Int, column: Int, in bytes: [UInt8]) -> String? {
        if YAMLComposer.lineIsIndentedWithTab(line, in: bytes) {
            return "tabs cannot indent YAML, indent with spaces"
        }
        let lines = splitLines(bytes)
        guard line >= 1, line <= lines.count else { return nil }
        let indent = indentation(lines[line - 1])
        switch problem {
        case "did not find expected key", "did not find expected '-' indicator":
            return "the likely cause is indentation: line \(line) (indented to column \(indent + 1)) does not "
                + "line up with the keys of the mapping above it, which all start in one column"
        case "mapping values are not allowed in this context":
            // A key on this line before the failing ':' means the value holds a ': ' (`qmp: a: b`).
            // Otherwise the line is indented deeper than a complete `key: value` line above it, and
            // YAML reads it as the continuation of that value.
            let current = lines[line - 1]
            let before = current.prefix(max(0, column - 1))
            guard !containsKeySeparator(before) else { return "if a value contains ': ', quote it" }
            return "the likely cause is indentation: line \(line) is indented more than the line above it, "
                + "so YAML reads it as part of that line's value; indent it like the key it belongs next to"
        default:
            return nil
        }
    }

    private static func containsKeySeparator(_ text: ArraySlice<UInt8>) -> Bool {
        zip(text, text.dropFirst()).contains { $0 == UInt8(ascii: ":") && $1 == UInt8(ascii: " ") }
    }

    private static func splitLines(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
    }

    private static func indentation(_ line: ArraySlice<UInt8>) -> Int {
        line.prefix { $0 == UInt8(ascii: " ") }.count
    }
}
