#if canImport(FoundationEssentials)
    import FoundationEssentials
#else
    import Foundation
#endif

/// JSON in and out of varlink messages (without the NUL that ends each one on the socket).
public enum ControlWire {
    public static func encodeCall<P: Codable & Sendable>(_ method: ControlProtocol.Method, _ parameters: P) throws
        -> [UInt8]
    {
        Array(try encoder().encode(ControlCall(method: method, parameters: parameters)))
    }

    public static func encodeReply<P: Codable & Sendable>(_ parameters: P) throws -> [UInt8] {
        Array(try encoder().encode(ControlReply(parameters)))
    }

    /// An error reply. Encoding these plain structs cannot fail; the fallback is never sent in practice.
    public static func encode(_ error: ControlError) -> [UInt8] {
        (try? Array(encoder().encode(error))) ?? Array(#"{"error":"io.macvtapd.InvalidRequest"}"#.utf8)
    }

    public static func decodeHeader(_ message: [UInt8]) throws(ControlError) -> ControlCallHeader {
        do {
            return try JSONDecoder().decode(ControlCallHeader.self, from: Data(message))
        } catch {
            throw .invalidRequest("not a varlink call (a JSON object with a \"method\" string): \(describe(error))")
        }
    }

    /// A call's parameters; a call without any decodes as `{}`.
    public static func decodeParameters<P: Codable & Sendable>(_ type: P.Type, from message: [UInt8])
        throws(ControlError) -> P
    {
        do {
            let call = try JSONDecoder().decode(ControlCall<P>.self, from: Data(message))
            if let parameters = call.parameters { return parameters }
            return try JSONDecoder().decode(P.self, from: Data("{}".utf8))
        } catch {
            throw ControlError(
                "org.varlink.service.InvalidParameter",
                .init(reason: describe(error), parameter: parameterName(error)))
        }
    }

    /// A reply's parameters, or the error it carries.
    public static func decodeReply<P: Codable & Sendable>(_ type: P.Type, from message: [UInt8]) throws -> P {
        let data = Data(message)
        if try JSONDecoder().decode(ReplyHeader.self, from: data).error != nil {
            throw try JSONDecoder().decode(ControlError.self, from: data)
        }
        guard let parameters = try JSONDecoder().decode(ControlReply<P>.self, from: data).parameters else {
            throw ControlError.invalidRequest("the reply has no parameters")
        }
        return parameters
    }

    private static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    /// Decoding errors in words: which key, and what was wrong with it.
    static func describe(_ error: any Error) -> String {
        guard let error = error as? DecodingError else { return "\(error)" }
        func path(_ context: DecodingError.Context) -> String {
            let keys = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }
            return keys.isEmpty ? "the message" : keys.joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, let context): return "\(path(context)): missing \(key.stringValue)"
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            return "\(path(context)): \(context.debugDescription)"
        case .dataCorrupted(let context): return "\(path(context)): \(context.debugDescription)"
        @unknown default: return "\(error)"
        }
    }

    static func parameterName(_ error: any Error) -> String? {
        guard let error = error as? DecodingError else { return nil }
        switch error {
        case .keyNotFound(let key, _): return key.stringValue
        case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
            return context.codingPath.last?.stringValue
        @unknown default: return nil
        }
    }
}

/// The part of a reply that says whether it is an error.
struct ReplyHeader: Decodable {
    var error: String?
}
