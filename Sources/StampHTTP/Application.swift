// Assembles the routes of stampd: the API, the long poll, operations and the web pages.
import Foundation
import Logging
import NIOCore
import StampCore

public enum Application {
    /// The public listener's routes. `/metrics` is not among them: it has a listener of its own
    /// (`metricsResponder`), on loopback unless an operator says otherwise.
    /// `gate` bounds the requests at work (nil: no bound).
    public static func responder(service: StampService, gate: AdmissionGate? = nil, logger: Logger) -> Responder {
        var router = Router()
        let api = API(service: service)
        api.register(on: &router)
        EventsEndpoint(api: api).register(on: &router)
        let alive = Response.json(["status": "ok"])
        router.addImmediate(.GET, "/healthz") { _ in alive }
        router.add(.GET, "/readyz", admission: .always) { _ in
            if await service.isReady() { return .response(.json(["status": "ready", "database": service.database.engine])) }
            let detail = service.database.acceptsWrites ? "the database does not answer"
                : "a sync of the database failed, so it takes no writes until the server restarts"
            return .response(.problem(HTTPError(.serviceUnavailable, detail: detail, headers: [("Retry-After", "1")])))
        }
        WebPages.register(on: &router)
        return Responder(router: router, gate: gate, logger: logger)
    }

    /// The metrics listener's routes: `GET /metrics` (Prometheus text, rendered by `metricsText`)
    /// and `GET /healthz`.
    public static func metricsResponder(metricsText: @escaping @Sendable () -> String, logger: Logger) -> Responder {
        var router = Router()
        let alive = Response.json(["status": "ok"])
        router.addImmediate(.GET, "/healthz") { _ in alive }
        router.addImmediate(.GET, "/metrics") { _ in
            .text(metricsText(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        }
        return Responder(router: router, logger: logger)
    }
}
