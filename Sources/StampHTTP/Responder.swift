// Finds the endpoint for a request and turns whatever it throws into a problem answer.
import Logging
import Metrics
import NIOHTTP1
import Synchronization

public final class Responder: Sendable {
    private let routes: RouteTree
    let logger: Logger
    let metrics = HTTPMetrics()

    public init(router: Router, logger: Logger) {
        routes = RouteTree(router)
        self.logger = logger
    }

    /// The route template (the metrics label) and the endpoint's reply.
    func route(_ request: Request) -> (String, Reply) {
        switch routes.match(request.method, request.pathSegments) {
        case .notFound:
            return ("unmatched", .response(.problem(HTTPError(.notFound, detail: "no resource at this path"))))
        case .methodNotAllowed(let allowed):
            let allow = allowed.map(\.rawValue).joined(separator: ", ")
            return ("unmatched", .response(.problem(HTTPError(
                .methodNotAllowed, detail: "this resource allows \(allow)", headers: [("Allow", allow)]))))
        case .found(let route, let parameters):
            var request = request
            request.parameters = parameters
            return (route.template, route.handle(request))
        }
    }
}

/// Requests by route template and status, their durations, and open connections.
final class HTTPMetrics: Sendable {
    private let counters = Mutex<[String: Counter]>([:])
    private let timers = Mutex<[String: Metrics.Timer]>([:])
    let openConnections = Gauge(label: "stampd_http_open_connections")

    func record(route: String, status: UInt, nanoseconds: UInt64) {
        let key = route + " " + String(status)
        let counter = counters.withLock { counters in
            if let counter = counters[key] { return counter }
            let counter = Counter(label: "stampd_http_requests_total",
                                  dimensions: [("route", route), ("status", String(status))])
            counters[key] = counter
            return counter
        }
        counter.increment()
        let timer = timers.withLock { timers in
            if let timer = timers[route] { return timer }
            let timer = Metrics.Timer(label: "stampd_http_request_duration_seconds", dimensions: [("route", route)])
            timers[route] = timer
            return timer
        }
        timer.recordNanoseconds(Int64(clamping: nanoseconds))
    }
}
