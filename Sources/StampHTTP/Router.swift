// Routes by method and path template (`/v1/stores/{storeId}`); 404 and 405 with `Allow`.
import NIOHTTP1

public typealias Endpoint = @Sendable (Request) async throws -> Reply
/// An endpoint that answers from memory: run on the event loop, with no task and no thread hop.
public typealias ImmediateEndpoint = @Sendable (Request) -> Response

public struct Router: Sendable {
    struct Route: Sendable {
        let method: HTTPMethod
        /// The template as written: the metrics label, never a raw path.
        let template: String
        let segments: [Segment]
        let work: Work
    }

    enum Work: Sendable {
        case async(Endpoint)
        case immediate(ImmediateEndpoint)
        /// Tried on the event loop first; nil sends the request to the async endpoint.
        case fastPath(@Sendable (Request) -> Reply?, Endpoint)
    }

    enum Segment: Sendable, Equatable {
        case literal(String)
        case parameter(String)
    }

    enum Match {
        case found(Route, parameters: [String: String])
        case methodNotAllowed(allowed: [HTTPMethod])
        case notFound
    }

    private var routes: [Route] = []

    public init() {}

    public mutating func add(_ method: HTTPMethod, _ template: String, _ endpoint: @escaping Endpoint) {
        add(method, template, .async(endpoint))
    }

    /// `fast` answers on the event loop when it can (nil when it cannot); `endpoint` does the rest.
    public mutating func add(_ method: HTTPMethod, _ template: String, fast: @escaping @Sendable (Request) -> Reply?,
                             _ endpoint: @escaping Endpoint) {
        add(method, template, .fastPath(fast, endpoint))
    }

    public mutating func addImmediate(_ method: HTTPMethod, _ template: String, _ endpoint: @escaping ImmediateEndpoint) {
        add(method, template, .immediate(endpoint))
    }

    private mutating func add(_ method: HTTPMethod, _ template: String, _ work: Work) {
        let segments = template.split(separator: "/").map { part -> Segment in
            if part.hasPrefix("{") && part.hasSuffix("}") { return .parameter(String(part.dropFirst().dropLast())) }
            return .literal(String(part))
        }
        routes.append(Route(method: method, template: template, segments: segments, work: work))
    }

    func match(_ method: HTTPMethod, _ path: [String]) -> Match {
        var allowed: [HTTPMethod] = []
        for route in routes where route.segments.count == path.count {
            var parameters: [String: String] = [:]
            var matches = true
            for (segment, part) in zip(route.segments, path) {
                switch segment {
                case .literal(let literal):
                    if literal != part { matches = false }
                case .parameter(let name):
                    parameters[name] = part
                }
                if !matches { break }
            }
            guard matches else { continue }
            // HEAD is GET without the body (RFC 9110 §9.3.2); the handler drops the body.
            if route.method == method || (method == .HEAD && route.method == .GET) {
                return .found(route, parameters: parameters)
            }
            allowed.append(route.method)
            if route.method == .GET { allowed.append(.HEAD) }
        }
        return allowed.isEmpty ? .notFound : .methodNotAllowed(allowed: allowed)
    }
}
