// GET /v1/events: answers at once when the caller has events after the cursor, else parks.
import Foundation
import NIOCore
import NIOHTTP1
import StampCore

struct EventsEndpoint: Sendable {
    let api: API
    var service: StampService { api.service }

    static let defaultTimeout = 25
    static let timeoutRange = 1...50
    static let defaultLimit = 100

    func register(on router: inout Router) {
        router.add(.GET, "/v1/events", admission: .always, fast: { fastPoll($0) }) { try await poll($0) }
    }

    /// What a poll asks for, from its query and headers.
    struct Asked {
        var cursor: Int64?
        var limit: Int
        var seconds: Int
        var headers: [(String, String)]
    }

    static func asked(_ request: Request) throws -> Asked {
        let cursor = try Self.cursor(request)
        let limit = try queryInt(request, "limit") ?? Self.defaultLimit
        guard (1...1000).contains(limit) else { throw HTTPError.invalid("limit", "limit must be between 1 and 1000") }
        var headers: [(String, String)] = []
        var seconds = Self.defaultTimeout
        if let text = request.query["timeout"] {
            // Any number is a valid wait, clamped while still a Double (1e400 parses as infinity).
            guard let timeout = Double(text), !timeout.isNaN else { throw HTTPError.invalid("timeout", "timeout must be a number") }
            seconds = Int(min(max(timeout.rounded(), Double(Self.timeoutRange.lowerBound)), Double(Self.timeoutRange.upperBound)))
        } else if let wait = Self.preferredWait(request.headers) {
            seconds = wait
            headers.append(("Preference-Applied", "wait=\(min(max(wait, Self.timeoutRange.lowerBound), Self.timeoutRange.upperBound))"))
        }
        seconds = min(max(seconds, Self.timeoutRange.lowerBound), Self.timeoutRange.upperBound)
        return Asked(cursor: cursor, limit: limit, seconds: seconds, headers: headers)
    }

    /// The usual re-poll, on the event loop with no task: a session already checked, and a cursor
    /// the hub knows is current. Anything else (or any error) goes the async way.
    private func fastPoll(_ request: Request) -> Reply? {
        let epoch = service.hub.epoch
        guard let token = try? api.bearerToken(request), let principal = service.rememberedPrincipal(token: token),
              let asked = try? Self.asked(request), let cursor = asked.cursor,
              service.hub.hasNothingAfter(cursor, for: principal.id) else { return nil }
        return .poll(longPoll(principal, asked: asked, parkedCursor: cursor, epoch: epoch))
    }

    private func poll(_ request: Request) async throws -> Reply {
        let principal = try await api.principal(request)
        let asked = try Self.asked(request)
        let account = principal.id
        let epoch = service.hub.epoch
        // The common re-poll: the hub knows nothing newer exists, so park without a read.
        let batch: EventBatch
        if let cursor = asked.cursor, service.hub.hasNothingAfter(cursor, for: account) {
            batch = EventBatch(events: [], cursor: cursor, reset: false)
        } else {
            batch = try await service.events(for: account, after: asked.cursor, limit: asked.limit)
        }
        if !batch.events.isEmpty || batch.reset {
            if batch.reset { PollMetrics.resets.increment() }
            return .response(Self.answer(batch, asked.headers))
        }
        return .poll(longPoll(principal, asked: asked, parkedCursor: batch.cursor, epoch: epoch))
    }

    private func longPoll(_ principal: Principal, asked: Asked, parkedCursor: Int64, epoch: UInt64) -> LongPoll {
        LongPoll(account: principal.id, session: principal.session, cursor: parkedCursor, epoch: epoch,
                 timeout: .seconds(Int64(asked.seconds)),
                 answers: Answers(service: service, account: principal.id, cursor: asked.cursor, parkedCursor: parkedCursor,
                                  limit: asked.limit, headers: asked.headers))
    }

    /// How a parked poll of this endpoint ends.
    struct Answers: PollAnswers {
        let service: StampService
        let account: String
        /// The cursor asked for (nil: every retained event), and the one the poll parked at.
        let cursor: Int64?
        let parkedCursor: Int64
        let limit: Int
        let headers: [(String, String)]

        func read() async -> Response? {
            do {
                let batch = try await service.events(for: account, after: cursor ?? parkedCursor, limit: limit)
                if batch.events.isEmpty && !batch.reset { return nil }
                return EventsEndpoint.answer(batch, headers)
            } catch let error as StampError {
                return .problem(HTTPError(error))
            } catch {
                return .problem(HTTPError(.internalServerError, detail: "the events could not be read"))
            }
        }

        func fresh(_ events: [Event]) -> Response {
            let given = events.count > limit ? Array(events.prefix(limit)) : events
            return EventsEndpoint.answer(EventBatch(events: given, cursor: given[given.count - 1].id, reset: false), headers)
        }

        func empty(shuttingDown: Bool) -> Response {
            var extra = headers
            if shuttingDown { extra.append(("Retry-After", "1")) }
            return EventsEndpoint.answer(EventBatch(events: [], cursor: parkedCursor, reset: false), extra)
        }

        func refused(_ outcome: ParkOutcome) -> Response {
            let detail = outcome == .tooManyForAccount ? "too many polls are open for this account"
                                                       : "too many polls are open on this server"
            return .problem(HTTPError(.tooManyRequests, detail: detail, headers: [("Retry-After", "5")]))
        }
    }

    /// `after`, or `Last-Event-ID` in its place; absent means every retained event.
    static func cursor(_ request: Request) throws -> Int64? {
        let header = try parseCursor(request.headers.first(name: "last-event-id"), field: "Last-Event-ID")
        return try parseCursor(request.query["after"], field: "after") ?? header
    }

    private static func parseCursor(_ text: String?, field: String) throws -> Int64? {
        guard let text, !text.isEmpty else { return nil }
        // Cursors are written as plain decimals; "+3" or "003" were never issued.
        guard text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
              text == "0" || !text.hasPrefix("0"), let value = Int64(text) else {
            throw HTTPError.invalid(field, "\(field) must be a cursor from an earlier answer")
        }
        return value
    }

    /// `Prefer: wait=N` (RFC 7240).
    static func preferredWait(_ headers: HTTPHeaders) -> Int? {
        for value in headers[canonicalForm: "prefer"] {
            let preference = value.trimmingCharacters(in: .whitespaces).lowercased()
            if preference.hasPrefix("wait="), let seconds = Int(preference.dropFirst(5)), seconds >= 0 { return seconds }
        }
        return nil
    }

    /// The event data is stored as JSON already, so the answer is assembled around it.
    static func answer(_ batch: EventBatch, _ extraHeaders: [(String, String)]) -> Response {
        var json = #"{"events":["#
        for (index, event) in batch.events.enumerated() {
            if index > 0 { json += "," }
            json += #"{"id":""# + String(event.id) + #"","type":"# + Response.jsonString(event.type)
            json += #","at":""# + StampJSON.formatTimestamp(event.at) + #"","data":"# + event.data + "}"
        }
        json += #"],"cursor":""# + String(batch.cursor) + #"","reset":"# + (batch.reset ? "true" : "false") + "}"
        var headers: HTTPHeaders = ["Content-Type": "application/json", "Cache-Control": "no-store"]
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        return Response(status: .ok, headers: headers, body: ByteBuffer(string: json))
    }
}
