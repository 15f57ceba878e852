#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

enum JSONText {
    /// Pretty, key-sorted JSON: stable output that diffs well.
    static func encode(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}
