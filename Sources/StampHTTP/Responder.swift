// Finds the endpoint for a request and turns whatever it throws into a problem answer.
import Logging
import Metrics
import NIOHTTP1
import StampCore
import Synchronization

public final class Responder: Sendable {
    let router: Router
    let logger: Logger
    let metrics = HTTPMetrics()

    public init(router: Router, logger: Logger) {
        self.router = router
        self.logger = logger
    }

    enum Handling {
        /// Answered already, on the event loop.
        case now(Reply)
        /// Work for a task: it awaits the database or the password hasher.
        case later(@Sendable () async -> Reply)
    }

    /// The route template (the metrics label) and how the request is answered.
    func route(_ request: Request) -> (String, Handling) {
        switch router.match(request.method, request.pathSegments) {
        case .notFound:
            return ("unmatched", .now(.response(.problem(HTTPError(.notFound, detail: "no resource at this path")))))
        case .methodNotAllowed(let allowed):
            let allow = allowed.map(\.rawValue).joined(separator: ", ")
            return ("unmatched", .now(.response(.problem(HTTPError(
                .methodNotAllowed, detail: "this resource allows \(allow)", headers: [("Allow", allow)])))))
        case .found(let route, let parameters):
            var request = request
            request.parameters = parameters
            let routed = request
            let logger = request.logger
            let endpoint: Endpoint
            switch route.work {
            case .immediate(let answer): return (route.template, .now(.response(answer(routed))))
            case .async(let work): endpoint = work
            case .fastPath(let fast, let work):
                if let reply = fast(routed) { return (route.template, .now(reply)) }
                endpoint = work
            }
            return (route.template, .later {
                do {
                    return try await endpoint(routed)
                } catch let error as HTTPError {
                    return .response(.problem(error))
                } catch let error as StampError {
                    return .response(.problem(HTTPError(error)))
                } catch is CancellationError {
                    // The client left; nobody reads this answer.
                    return .response(.problem(HTTPError(.serviceUnavailable, detail: "the request was cancelled")))
                } catch {
                    logger.error("endpoint failed", metadata: ["error": "\(error)", "http.route": "\(route.template)"])
                    return .response(.problem(HTTPError(.internalServerError, detail: "the server failed to answer")))
                }
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
