/// A composed YAML node and the 1-based line and column where its text starts.
///
/// Our own small tree rather than Yams' `Node`: see `YAMLComposer` for why the composer is ours.
struct YAMLNode: Sendable {
    enum Content: Sendable {
        case scalar(YAMLScalar)
        case mapping([YAMLPair])
        case sequence([YAMLNode])
    }

    var content: Content
    var line: Int
    var column: Int
}

struct YAMLPair: Sendable {
    var key: YAMLNode
    var value: YAMLNode
}

struct YAMLScalar: Sendable {
    var value: String
    /// Plain (unquoted) scalars are the only ones the core schema resolves to null, bool, int or float.
    var isPlain: Bool
    /// An explicit tag (`!!str`, `!!int`), expanded to its full form by libyaml; nil when implicit.
    var tag: String?
}

/// The type a scalar resolves to under the YAML 1.2 core schema: what a user means by `10` or `"10"`.
enum YAMLScalarType: Equatable {
    case null
    case bool
    case int(Int?)
    case float
    case string

    static let strTag = "tag:yaml.org,2002:str"
    static let intTag = "tag:yaml.org,2002:int"

    init(_ scalar: YAMLScalar) {
        if scalar.tag == Self.strTag || (!scalar.isPlain && scalar.tag == nil) {
            self = .string
            return
        }
        let text = scalar.value
        if scalar.tag == Self.intTag {
            self = .int(Self.integer(text))
            return
        }
        if scalar.tag != nil {
            self = .string
            return
        }
        // Every null, bool, int and float of the core schema starts with one of these; any other
        // plain scalar (an interface name, a socket path, a VM name) is a string, unchecked below.
        switch text.utf8.first ?? 0 {
        case 0, UInt8(ascii: "~"), UInt8(ascii: "n"), UInt8(ascii: "N"), UInt8(ascii: "t"), UInt8(ascii: "T"),
            UInt8(ascii: "f"), UInt8(ascii: "F"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            break
        default:
            self = .string
            return
        }
        switch text {
        case "", "~", "null", "Null", "NULL":
            self = .null
        case "true", "True", "TRUE", "false", "False", "FALSE":
            self = .bool
        default:
            if let value = Self.integer(text) {
                self = .int(value)
            } else if Self.looksLikeDecimal(text) {
                // Too large for Int, but still an integer rather than a string.
                self = .int(nil)
            } else if Self.isFloat(text) {
                self = .float
            } else {
                self = .string
            }
        }
    }

    var description: String {
        switch self {
        case .null: return "nothing (null)"
        case .bool: return "a boolean"
        case .int: return "an integer"
        case .float: return "a floating-point number"
        case .string: return "a string"
        }
    }

    /// Decimal (optionally signed), `0x` hexadecimal or `0o` octal, as the core schema defines them.
    private static func integer(_ text: String) -> Int? {
        for (prefix, radix) in [("0x", 16), ("0o", 8)] where text.hasPrefix(prefix) {
            let digits = text.dropFirst(prefix.count)
            guard !digits.isEmpty, digits.allSatisfy({ $0.isHexDigit && Int(String($0), radix: radix) != nil })
            else { return nil }
            return Int(digits, radix: radix)
        }
        guard looksLikeDecimal(text) else { return nil }
        return Int(text)
    }

    private static func looksLikeDecimal(_ text: String) -> Bool {
        var digits = Substring(text)
        if digits.first == "-" || digits.first == "+" { digits = digits.dropFirst() }
        return !digits.isEmpty && digits.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    }

    private static func isFloat(_ text: String) -> Bool {
        switch text {
        case ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN":
            return true
        default:
            break
        }
        var rest = Substring(text)
        if rest.first == "-" || rest.first == "+" { rest = rest.dropFirst() }
        let mantissaEnd = rest.firstIndex(where: { $0 == "e" || $0 == "E" }) ?? rest.endIndex
        let mantissa = rest[..<mantissaEnd]
        let parts = mantissa.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        let isDigit: (Character) -> Bool = { $0.isASCII && $0.isNumber }
        guard parts.allSatisfy({ $0.allSatisfy(isDigit) }), parts.contains(where: { !$0.isEmpty }) else {
            return false
        }
        guard parts.count == 2 || mantissaEnd != rest.endIndex else { return false }
        guard mantissaEnd != rest.endIndex else { return true }
        var exponent = rest[rest.index(after: mantissaEnd)...]
        if exponent.first == "-" || exponent.first == "+" { exponent = exponent.dropFirst() }
        return !exponent.isEmpty && exponent.allSatisfy(isDigit)
    }
}

extension YAMLNode {
    var scalar: YAMLScalar? {
        if case .scalar(let scalar) = content { return scalar }
        return nil
    }

    /// "a mapping", "a sequence", "the string 'x'", "an integer (5)": for "expected …, found …" messages.
    var kindDescription: String {
        switch content {
        case .mapping: return "a mapping"
        case .sequence: return "a sequence"
        case .scalar(let scalar):
            let type = YAMLScalarType(scalar)
            switch type {
            case .null: return type.description
            case .string: return "the string '\(scalar.value)'"
            default: return "\(type.description) (\(scalar.value))"
            }
        }
    }
}
