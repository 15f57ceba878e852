import MacvtapdCore

#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// Turns the bytes of a status file into a `StatusDocument`, or into a message that says what is
/// wrong in the operator's words: empty, not JSON, written by a newer macvtapd, or a field missing
/// or of the wrong type at a JSON path (never a `DecodingError` dump).
enum StatusDecoding {
    static func decode(_ bytes: [UInt8], path: String) throws -> StatusDocument {
        guard bytes.contains(where: { !isJSONSpace($0) }) else {
            throw StatusStoreError(
                "\(path) is empty; apply and the daemon replace it whole, so something else truncated it")
        }
        let data = Data(bytes)
        let version: FormatVersion
        do {
            version = try JSONDecoder().decode(FormatVersion.self, from: data)
        } catch DecodingError.typeMismatch, DecodingError.valueNotFound {
            throw notADocument(path, "its format_version is not a number")
        } catch {
            throw notADocument(path, "it is not a JSON object")
        }
        guard let formatVersion = version.formatVersion else {
            throw notADocument(path, "it has no format_version")
        }
        guard formatVersion <= StatusDocument.currentFormatVersion else {
            throw StatusStoreError(
                "\(path) has format_version \(formatVersion), written by a newer macvtapd; this macvtapd reads "
                    + "format_version \(StatusDocument.currentFormatVersion)")
        }
        do {
            return try JSONDecoder().decode(StatusDocument.self, from: data)
        } catch let error as DecodingError {
            throw notADocument(path, explain(error))
        }
    }

    private struct FormatVersion: Decodable {
        var formatVersion: Int?
        enum CodingKeys: String, CodingKey { case formatVersion = "format_version" }
    }

    private static func notADocument(_ path: String, _ why: String) -> StatusStoreError {
        StatusStoreError("\(path) is not a macvtapd status document: \(why)")
    }

    static func explain(_ error: DecodingError) -> String {
        switch error {
        case .keyNotFound(let key, let context):
            return "'\(jsonPath(context.codingPath + [key]))' is missing"
        case .valueNotFound(_, let context):
            return "'\(jsonPath(context.codingPath))' is null"
        case .typeMismatch(_, let context):
            return "'\(jsonPath(context.codingPath))' has the wrong type"
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty
                ? "it is not valid JSON" : "'\(jsonPath(context.codingPath))' has a value this macvtapd does not know"
        @unknown default:
            return "it does not have the expected fields"
        }
    }

    /// `bindings[0].phase`: where in the document, as jq would write it.
    static func jsonPath(_ keys: [any CodingKey]) -> String {
        var text = ""
        for key in keys {
            if let index = key.intValue {
                text += "[\(index)]"
            } else {
                text += (text.isEmpty ? "" : ".") + key.stringValue
            }
        }
        return text
    }

    private static func isJSONSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }
}
