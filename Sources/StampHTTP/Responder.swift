// Finds the endpoint for a request and turns whatever it throws into a problem answer.
import Logging
import Metrics
import NIOHTTP1
import Synchronization

public final class Responder: Sendable {
    private let routes: RouteTree
    private let gate: AdmissionGate?
    let logger: Logger
    let metrics = HTTPMetrics()

    /// With a `gate`, work past its bound is refused (503, Retry-After) before it begins.
    public init(router: Router, gate: AdmissionGate? = nil, logger: Logger) {
        routes = RouteTree(router)
        self.gate = gate
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
            let reply = route.handle(request)
            // Only work for a task is admitted: an answer from memory costs less than a refusal.
            guard let gate, route.admission != .always, case .later(let work) = reply else { return (route.template, reply) }
            guard gate.enter(route.admission) else { return (route.template, .response(AdmissionGate.busy)) }
            return (route.template, .later {
                defer { gate.leave() }
                return await work()
            })
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
