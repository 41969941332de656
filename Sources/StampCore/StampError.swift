// The failures a use case reports, each meaning one HTTP status at the edge.
import Storage

public struct StampError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case invalid          // 400
        case unauthenticated  // 401
        case forbidden        // 403
        case notFound         // 404
        case conflict         // 409
        case unprocessable    // 422
        case rateLimited      // 429
        case unavailable      // 503
    }

    public var kind: Kind
    public var detail: String
    /// The request field at fault, for `invalid`.
    public var field: String?
    /// Seconds to wait, for `rateLimited` and `unavailable`.
    public var retryAfter: Int?
    /// For a `conflict` about a resource: its current state, so the caller can show it (a
    /// request another member decided first, the pending request a second one would repeat).
    public var current: Current?

    /// A resource's name in the problem document (`request`) and its JSON.
    public struct Current: Sendable, Equatable {
        public var name: String
        public var json: String
    }

    public init(_ kind: Kind, _ detail: String, field: String? = nil, retryAfter: Int? = nil) {
        self.kind = kind
        self.detail = detail
        self.field = field
        self.retryAfter = retryAfter
    }

    /// A conflict that carries `value`, encoded, as member `name` of the problem document.
    static func conflict<T: Encodable>(_ detail: String, current value: T, as name: String) -> StampError {
        var error = StampError(.conflict, detail)
        if let json = try? StampJSON.encode(value) { error.current = Current(name: name, json: json) }
        return error
    }

    public static func invalid(_ field: String, _ detail: String) -> StampError {
        StampError(.invalid, detail, field: field)
    }

    public static func notFound(_ what: String) -> StampError {
        StampError(.notFound, "\(what) not found")
    }

    public var description: String { "\(kind): \(detail)" }
}
