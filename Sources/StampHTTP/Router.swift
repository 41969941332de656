// Routes by method and path template (`/v1/stores/{storeId}`); 404 and 405 with `Allow`.
// Routes are added to a `Router`, which the responder freezes at start into a tree of path
// segments: a request walks it one segment at a time (a literal before a parameter), instead of
// trying every template.
import NIOHTTP1
import StampCore

/// An endpoint that awaits the database or the hasher; it runs as a task on the connection's loop.
public typealias Endpoint = @Sendable (Request) async throws -> Reply
/// An endpoint that answers from memory: run on the event loop, with no task and no thread hop.
public typealias ImmediateEndpoint = @Sendable (Request) -> Response

public struct Router: Sendable {
    struct Route: Sendable {
        let method: HTTPMethod
        /// The template as written: the metrics label, never a raw path.
        let template: String
        let segments: [Segment]
        /// The names of the template's parameters, in path order.
        let parameterNames: [String]
        /// Whether its work may be refused while the server is busy.
        let admission: Admission
        /// Runs on the event loop: an answer, a poll to park, or work for a task (`Reply.later`).
        let handle: @Sendable (Request) -> Reply
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

    private(set) var routes: [Route] = []

    public init() {}

    public mutating func add(_ method: HTTPMethod, _ template: String, admission: Admission = .normal,
                             _ endpoint: @escaping Endpoint) {
        add(method, template, admission) { request in .later { await Self.settled(template, request, endpoint) } }
    }

    /// `fast` answers on the event loop when it can (nil when it cannot); `endpoint` does the rest.
    public mutating func add(_ method: HTTPMethod, _ template: String, admission: Admission = .normal,
                             fast: @escaping @Sendable (Request) -> Reply?, _ endpoint: @escaping Endpoint) {
        add(method, template, admission) { request in fast(request) ?? .later { await Self.settled(template, request, endpoint) } }
    }

    /// The endpoint's reply, or the problem answer for what it threw.
    private static func settled(_ template: String, _ request: Request, _ endpoint: Endpoint) async -> Reply {
        do {
            return try await endpoint(request)
        } catch let error as HTTPError {
            return .response(.problem(error))
        } catch let error as StampError {
            return .response(.problem(HTTPError(error)))
        } catch is CancellationError {
            // The client left; nobody reads this answer.
            return .response(.problem(HTTPError(.serviceUnavailable, detail: "the request was cancelled")))
        } catch {
            request.logger.error("endpoint failed", metadata: ["error": "\(error)", "http.route": "\(template)"])
            return .response(.problem(HTTPError(.internalServerError, detail: "the server failed to answer")))
        }
    }

    public mutating func addImmediate(_ method: HTTPMethod, _ template: String, _ endpoint: @escaping ImmediateEndpoint) {
        add(method, template, .always) { .response(endpoint($0)) }
    }

    private mutating func add(_ method: HTTPMethod, _ template: String, _ admission: Admission,
                              _ handle: @escaping @Sendable (Request) -> Reply) {
        let segments = template.split(separator: "/").map { part -> Segment in
            if part.hasPrefix("{") && part.hasSuffix("}") { return .parameter(String(part.dropFirst().dropLast())) }
            return .literal(String(part))
        }
        let names = segments.compactMap { segment -> String? in
            if case .parameter(let name) = segment { return name }
            return nil
        }
        routes.append(Route(method: method, template: template, segments: segments, parameterNames: names,
                            admission: admission, handle: handle))
    }
}

/// The routes as a tree of segments, fixed once built.
struct RouteTree: Sendable {
    private struct Node: Sendable {
        var literals: [String: Int] = [:]
        var parameter: Int?
        /// The routes whose template ends here, in the order they were added.
        var routes: [Router.Route] = []
    }

    /// Index 0 is the root; children are indices, so the tree is a plain value.
    private var nodes = [Node()]

    init(_ router: Router) {
        for route in router.routes {
            var node = 0
            for segment in route.segments {
                switch segment {
                case .literal(let literal):
                    if let child = nodes[node].literals[literal] {
                        node = child
                    } else {
                        nodes.append(Node())
                        nodes[node].literals[literal] = nodes.count - 1
                        node = nodes.count - 1
                    }
                case .parameter:
                    if let child = nodes[node].parameter {
                        node = child
                    } else {
                        nodes.append(Node())
                        nodes[node].parameter = nodes.count - 1
                        node = nodes.count - 1
                    }
                }
            }
            nodes[node].routes.append(route)
        }
    }

    func match(_ method: HTTPMethod, _ path: [String]) -> Router.Match {
        var allowed: [HTTPMethod] = []
        var values: [String] = []
        values.reserveCapacity(path.count)
        if let (route, values) = walk(0, depth: 0, path, method, &values, &allowed) {
            var parameters: [String: String] = [:]
            for (name, value) in zip(route.parameterNames, values) { parameters[name] = value }
            return .found(route, parameters: parameters)
        }
        return allowed.isEmpty ? .notFound : .methodNotAllowed(allowed: allowed)
    }

    /// Depth first, a literal before a parameter, gathering the methods of every template the
    /// path matches (for `Allow`) until one takes the method.
    private func walk(_ index: Int, depth: Int, _ path: [String], _ method: HTTPMethod, _ values: inout [String],
                      _ allowed: inout [HTTPMethod]) -> (Router.Route, [String])? {
        let node = nodes[index]
        guard depth < path.count else {
            for route in node.routes {
                // HEAD is GET without the body (RFC 9110 §9.3.2); the connection drops the body.
                if route.method == method || (method == .HEAD && route.method == .GET) { return (route, values) }
                allowed.append(route.method)
                if route.method == .GET { allowed.append(.HEAD) }
            }
            return nil
        }
        if let child = node.literals[path[depth]],
           let found = walk(child, depth: depth + 1, path, method, &values, &allowed) {
            return found
        }
        if let child = node.parameter {
            values.append(path[depth])
            if let found = walk(child, depth: depth + 1, path, method, &values, &allowed) { return found }
            values.removeLast()
        }
        return nil
    }
}
