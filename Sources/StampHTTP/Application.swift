// Assembles the routes of stampd: the API, the long poll, operations and the web pages.
import Foundation
import Logging
import NIOCore
import StampCore

public enum Application {
    /// - Parameter metricsText: renders the Prometheus exposition for `GET /metrics`.
    public static func responder(service: StampService, metricsText: @escaping @Sendable () -> String,
                                 logger: Logger) -> Responder {
        var router = Router()
        let api = API(service: service)
        api.register(on: &router)
        EventsEndpoint(api: api).register(on: &router)
        let alive = Response.json(["status": "ok"])
        router.addImmediate(.GET, "/healthz") { _ in alive }
        router.add(.GET, "/readyz") { _ in
            if await service.isReady() { return .response(.json(["status": "ready"])) }
            return .response(.problem(HTTPError(.serviceUnavailable, detail: "the database does not answer",
                                                headers: [("Retry-After", "1")])))
        }
        router.addImmediate(.GET, "/metrics") { _ in
            .text(metricsText(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        }
        WebPages.register(on: &router)
        return Responder(router: router, logger: logger)
    }
}
