// Reading a JSON request body field by field, so every 400 names the field at fault.
import Foundation
import NIOHTTP1

/// Any JSON value, decoded without loss of its kind (a `true` is never a `1`).
enum JSONValue: Decodable, Sendable {
    case null
    case bool(Bool)
    case integer(Int64)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Int64.self) { self = .integer(value) }
        else if let value = try? container.decode(Double.self) { self = .number(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([JSONValue].self) { self = .array(value) }
        else { self = .object(try container.decode([String: JSONValue].self)) }
    }

    /// The value as JSON with object keys sorted: equal for equal values, however they were spaced.
    var canonical: String {
        switch self {
        case .null: "null"
        case .bool(let value): value ? "true" : "false"
        case .integer(let value): String(value)
        case .number(let value): value.rounded() == value && abs(value) < 1e15 ? String(Int64(value)) : String(value)
        case .string(let value): Response.jsonString(value)
        case .array(let values): "[" + values.map(\.canonical).joined(separator: ",") + "]"
        case .object(let fields):
            "{" + fields.keys.sorted().map { Response.jsonString($0) + ":" + fields[$0]!.canonical }.joined(separator: ",") + "}"
        }
    }

    var kindName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .integer, .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}

/// A request body that must be a JSON object with only the listed fields.
struct JSONInput {
    static let maximumDepth = 16
    private let fields: [String: JSONValue]

    /// Unknown fields are refused (400 naming the field), so a misspelt field never passes unnoticed.
    init(_ request: Request, allowed: Set<String>) throws {
        if request.body.readableBytes == 0 {
            fields = [:]
            return
        }
        let contentType = request.headers.first(name: "content-type")?.lowercased() ?? ""
        let mediaType = contentType.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        guard mediaType == "application/json" || (mediaType.hasPrefix("application/") && mediaType.hasSuffix("+json")) else {
            throw HTTPError(.unsupportedMediaType, detail: "the body must be application/json")
        }
        let bytes = request.bodyBytes
        guard Self.depth(of: bytes) <= Self.maximumDepth else {
            throw HTTPError.invalid("body", "the JSON is nested deeper than \(Self.maximumDepth) levels")
        }
        guard String(validating: bytes, as: UTF8.self) != nil else {
            throw HTTPError.invalid("body", "the body is not valid UTF-8")
        }
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
        } catch {
            throw HTTPError.invalid("body", "the body is not valid JSON")
        }
        guard case .object(let object) = value else { throw HTTPError.invalid("body", "the body must be a JSON object") }
        if let unknown = object.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw HTTPError.invalid(unknown, "\(unknown) is not a field of this request")
        }
        fields = object
    }

    func has(_ key: String) -> Bool { fields[key] != nil }

    /// The body in canonical form, to compare retries under one `Idempotency-Key`.
    var canonical: String { JSONValue.object(fields).canonical }

    func isNull(_ key: String) -> Bool {
        if case .null? = fields[key] { return true }
        return false
    }

    func string(_ key: String) throws -> String? {
        switch fields[key] {
        case nil, .null?: return nil
        case .string(let value)?: return value
        case let other?: throw HTTPError.invalid(key, "\(key) must be a string, not \(other.kindName)")
        }
    }

    func requiredString(_ key: String) throws -> String {
        guard let value = try string(key) else { throw HTTPError.invalid(key, "\(key) is required") }
        return value
    }

    /// Integers; `3.0` counts as 3, `3.5` does not.
    func int(_ key: String) throws -> Int? {
        guard let value = fields[key] else { return nil }
        return try Self.int(value, field: key)
    }

    func double(_ key: String) throws -> Double? {
        switch fields[key] {
        case nil, .null?: return nil
        case .integer(let value)?: return Double(value)
        case .number(let value)?: return value
        case let other?: throw HTTPError.invalid(key, "\(key) must be a number, not \(other.kindName)")
        }
    }

    /// For PATCH: absent → nil; `null` → `.some(nil)`.
    func patchString(_ key: String) throws -> String?? {
        guard has(key) else { return nil }
        return .some(try string(key))
    }

    func patchDouble(_ key: String) throws -> Double?? {
        guard has(key) else { return nil }
        return .some(try double(key))
    }

    func object(_ key: String) throws -> [String: JSONValue]? {
        switch fields[key] {
        case nil, .null?: return nil
        case .object(let value)?: return value
        case let other?: throw HTTPError.invalid(key, "\(key) must be an object, not \(other.kindName)")
        }
    }

    func array(_ key: String) throws -> [JSONValue]? {
        switch fields[key] {
        case nil, .null?: return nil
        case .array(let value)?: return value
        case let other?: throw HTTPError.invalid(key, "\(key) must be an array, not \(other.kindName)")
        }
    }

    static func int(_ value: JSONValue, field: String) throws -> Int? {
        switch value {
        case .null: return nil
        case .integer(let v):
            guard let int = Int(exactly: v) else { throw HTTPError.invalid(field, "\(field) is out of range") }
            return int
        case .number(let v):
            guard v.rounded() == v, abs(v) < 1e15 else { throw HTTPError.invalid(field, "\(field) must be a whole number") }
            return Int(v)
        default: throw HTTPError.invalid(field, "\(field) must be an integer, not \(value.kindName)")
        }
    }

    /// The deepest nesting of arrays and objects, counted without decoding.
    static func depth(of bytes: [UInt8]) -> Int {
        var depth = 0
        var deepest = 0
        var inString = false
        var escaped = false
        for byte in bytes {
            if inString {
                if escaped { escaped = false }
                else if byte == UInt8(ascii: "\\") { escaped = true }
                else if byte == UInt8(ascii: "\"") { inString = false }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""): inString = true
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                depth += 1
                deepest = max(deepest, depth)
            case UInt8(ascii: "]"), UInt8(ascii: "}"): depth -= 1
            default: break
            }
        }
        return deepest
    }
}
