// Stamp and reward requests: the state machine pending → approved | rejected | cancelled | expired.
import Crypto
import Foundation
import Storage

public struct Approval: Codable, Sendable, Equatable {
    public var request: StampRequest
    public var card: Card
}

public struct RequestChange: Codable, Sendable, Equatable {
    public var request: StampRequest
    public init(request: StampRequest) { self.request = request }
}

/// An `Idempotency-Key` with what identifies the call it guards.
public struct IdempotencyKey: Sendable {
    public var key: String
    /// The method and path, e.g. `POST /v1/stores/sto_x/requests`.
    public var operation: String
    public var body: [UInt8]
    public init(key: String, operation: String, body: [UInt8]) {
        self.key = key
        self.operation = operation
        self.body = body
    }
}

extension StampService {
    /// A customer asks the store for stamps or to use a reward. `counterCode`, when valid, marks
    /// the request as made at the counter (and, where the store chose so, approves a stamp
    /// request at once, by "counter code"). The store's rules decide what else may be asked.
    public func createRequest(_ principal: Principal, storeId: String, kind: RequestKind, count requested: Int?,
                              counterCode typed: String? = nil, idempotency: IdempotencyKey? = nil) async throws -> StampRequest {
        guard principal.role == .customer else { throw StampError(.forbidden, "only customers ask for stamps") }
        let count: Int
        switch kind {
        case .stamp: count = try Validate.range(requested ?? 1, field: "count", 1...10)
        case .reward:
            if let requested, requested != 1 { throw StampError.invalid("count", "a reward request is for one reward") }
            count = 1
        }
        let typed = try typed.flatMap { $0.isEmpty ? nil : try CounterCode.digits($0) }
        let now = clock.now()
        let window = settings.idempotencyWindow
        let limits = settings.limits
        let outcome = try await write { connection, outbox -> Result<StampRequest, StampError> in
            try await Self.idempotent(idempotency, account: principal.id, now: now, window: window, on: connection) {
                () -> Result<StampRequest, StampError> in
                guard let store = try await Self.loadStore(storeId, on: connection) else { throw StampError.notFound("store") }
                if try await connection.queryFirst("SELECT 1 FROM store_blocks WHERE store_id = ? AND customer_id = ?",
                                                   storeId, principal.id, row: { try $0.get(0, as: Int.self) }) != nil {
                    throw StampError(.forbidden, "this store does not take requests from you")
                }
                let pending = try await Self.checkRequestLimits(customer: principal.id, store: storeId, limits: limits,
                                                                now: now, on: connection)
                try await Self.checkStoreRules(store, customer: principal.id, pending: pending, kind: kind, count: count,
                                               now: now, on: connection)
                var atCounter = false
                if let typed {
                    let missScope = "counter-miss:\(storeId):\(principal.id)"
                    if let wait = try await Self.secondsUntilAllowed(missScope, limit: limits.counterCodeMissesPerCustomerPerStorePerHour,
                                                               window: Self.hour, now: now, on: connection) {
                        throw StampError(.rateLimited, "too many wrong counter codes; try again in \(wait) s", retryAfter: wait)
                    }
                    guard CounterCode.accepts(typed, secret: try await Self.counterSecret(of: storeId, on: connection), at: now) else {
                        try await Self.recordAction(missScope, now: now, on: connection)
                        return .failure(StampError(.unprocessable, "the counter code is wrong or has changed: read it again at the counter",
                                                   field: "counterCode"))
                    }
                    atCounter = true
                } else if store.rules.requireCounterCode && kind == .stamp {
                    throw StampError(.unprocessable, "this store asks for the counter code with a stamp request", field: "counterCode")
                }
                if kind == .reward {
                    let rewards = try await Self.loadCard(customer: principal.id, store: storeId, on: connection)?.rewards ?? 0
                    guard rewards > 0 else { throw StampError(.conflict, "no reward is available on this card") }
                }
                var request = StampRequest(
                    id: Identifier.make("req"), storeId: store.id, storeName: store.name,
                    customerId: principal.id, customerName: principal.account.name, kind: kind, count: count,
                    status: .pending, reason: nil, createdAt: now,
                    expiresAt: now.addingTimeInterval(TimeInterval(store.requestTtlSeconds)), decidedAt: nil, decidedBy: nil,
                    atCounter: atCounter)
                try await connection.run("""
                    INSERT INTO requests (id, store_id, customer_id, kind, count, status, created_at, expires_at, at_counter)
                    VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)
                    """, request.id, request.storeId, request.customerId, kind.rawValue, count,
                    now.millis, request.expiresAt.millis, atCounter)
                let members = try await Self.memberIds(of: store.id, on: connection)
                if atCounter && kind == .stamp && store.rules.autoApproveAtCounter {
                    let approval = try await Self.approve(request, by: Self.counterCodeMember, now: now, on: connection)
                    try outbox.emit("request.approved", to: [principal.id] + members, data: approval, at: now)
                    return .success(approval.request)
                }
                request.customerCard = try await Self.customerCard(principal.id, at: store.id, on: connection)
                try outbox.emit("request.created", to: members, data: RequestChange(request: request), at: now)
                return .success(request)
            }
        }
        return try outcome.get()
    }

    /// The store's own rules for a new request: one pending at a time (409 with the oldest), a
    /// cool-down after an approved stamp request and a cap on stamps in 24 hours (429).
    /// `pending` is the customer's count of pending requests here, as `checkRequestLimits` found.
    static func checkStoreRules(_ store: Store, customer: String, pending: Int, kind: RequestKind, count: Int, now: Date,
                                on connection: any SQLSession) async throws {
        let rules = store.rules
        if rules.pendingPerCustomer > 0, pending >= rules.pendingPerCustomer, let first = try await connection.queryFirst(
            requestSelect + """
             WHERE r.customer_id = ? AND r.store_id = ? AND r.status = 'pending' AND r.expires_at > ?
            ORDER BY r.created_at, r.id LIMIT 1
            """, customer, store.id, now.millis, row: { try requestRow($0).0 }) {
            throw StampError.conflict(rules.pendingPerCustomer == 1 ? "you already have a request waiting here"
                                      : "you already have \(pending) requests waiting here", current: first, as: "request")
        }
        guard kind == .stamp, rules.stampCooldownSeconds > 0 || rules.dailyStampCap > 0 else { return }
        let dayAgo = now.millis - 86_400_000
        let recent = try await connection.query("""
            SELECT count, status, coalesce(decided_at, created_at) FROM requests
            WHERE customer_id = ? AND store_id = ? AND kind = 'stamp' AND created_at > ? AND reversed_at IS NULL
              AND (status = 'approved' OR (status = 'pending' AND expires_at > ?))
            """, customer, store.id, dayAgo - Int64(86_400_000), now.millis) {
            (try $0.get(0, as: Int.self), try $0.get(1, as: String.self), try $0.get(2, as: Int64.self))
        }
        if rules.stampCooldownSeconds > 0,
           let last = recent.filter({ $0.1 == RequestStatus.approved.rawValue }).map(\.2).max(),
           now.millis < last + Int64(rules.stampCooldownSeconds) * 1000 {
            let wait = max(1, Int((last + Int64(rules.stampCooldownSeconds) * 1000 - now.millis + 999) / 1000))
            throw StampError(.rateLimited, "one stamp request per visit: ask again in \(wait) s", retryAfter: wait)
        }
        if rules.dailyStampCap > 0 {
            let counted = recent.filter { $0.2 > dayAgo || $0.1 == RequestStatus.pending.rawValue }
            let asked = counted.map(\.0).reduce(0, +)
            if asked + count > rules.dailyStampCap {
                let oldest = counted.map(\.2).min() ?? now.millis
                let wait = max(1, Int((oldest + 86_400_000 - now.millis + 999) / 1000))
                throw StampError(.rateLimited,
                                 "at most \(rules.dailyStampCap) stamps a day here; \(max(0, rules.dailyStampCap - asked)) left",
                                 retryAfter: wait)
            }
        }
    }

    static func customerCard(_ customer: String, at store: String, on connection: any SQLSession) async throws -> CustomerCard? {
        try await connection.queryFirst("""
            SELECT stamps, rewards, visits, coalesce(added_at, updated_at) FROM cards WHERE customer_id = ? AND store_id = ?
            """, customer, store) {
            CustomerCard(stamps: try $0.get(0), rewards: try $0.get(1), visits: try $0.get(2), memberSince: Date(millis: try $0.get(3)))
        }
    }

    /// A request, for the customer who made it and for the store's members.
    public func request(_ principal: Principal, id: String) async throws -> StampRequest {
        let found = try await read { connection -> StampRequest? in
            guard let (request, _) = try await Self.loadRequest(id, on: connection) else { return nil }
            if request.customerId == principal.id { return request }
            return try await Self.memberRole(principal.id, of: request.storeId, on: connection) == nil ? nil : request
        }
        guard let found else { throw StampError.notFound("request") }
        return found
    }

    /// The store's requests, newest first, for its members; `decidedBy` narrows them to one
    /// member's decisions (the owner's view of who decided what).
    public func storeRequests(_ principal: Principal, storeId: String, status: RequestStatus?, decidedBy: String? = nil,
                              customerId: String? = nil, since: Date? = nil, before: Date? = nil,
                              limit: Int, cursor: String?) async throws -> Page<StampRequest> {
        let limit = try Validate.range(limit, field: "limit", 1...100)
        let offset = try cursor.map { try OffsetCursor.decode($0, field: "cursor") } ?? 0
        try Self.requireIdentifiers([("decidedBy", decidedBy), ("customerId", customerId)])
        let requests = try await read { connection -> [StampRequest] in
            try await Self.requireMember(principal, of: storeId, on: connection)
            var sql = SQL(Self.requestSelect + " WHERE r.store_id = ?")
            var parameters: [any SQLBindable] = [storeId]
            let narrowed = decidedBy != nil || customerId != nil || since != nil || before != nil
            if narrowed {
                // History: by member, by customer, by time (the store's index by date bounds it).
                if let decidedBy {
                    sql = sql + " AND r.decided_by = ?"
                    parameters.append(decidedBy)
                }
                if let customerId {
                    sql = sql + " AND r.customer_id = ?"
                    parameters.append(customerId)
                }
                if let since {
                    sql = sql + " AND r.created_at >= ?"
                    parameters.append(since.millis)
                }
                if let before {
                    sql = sql + " AND r.created_at < ?"
                    parameters.append(before.millis)
                }
                if let status {
                    sql = sql + " AND r.status = ?"
                    parameters.append(status.rawValue)
                }
            } else if status == .pending {
                // The partial index of pending requests holds a store's few pending rows; without
                // the hint SQLite's planner may walk the store's whole history by date instead.
                // PostgreSQL's planner weighs the partial index by its statistics and needs none.
                let pending = " WHERE r.store_id = ? AND r.status = 'pending'"
                sql = SQL(sqlite: Self.requestSelect.replacingOccurrences(of: "FROM requests r",
                                                                          with: "FROM requests r INDEXED BY requests_pending") + pending,
                          postgres: Self.requestSelect + pending)
            } else if let status {
                sql = sql + " AND r.status = ?"
                parameters.append(status.rawValue)
            }
            sql = sql + " ORDER BY r.created_at DESC, r.id DESC LIMIT ? OFFSET ?"
            parameters += [limit + 1, offset]
            return try await connection.query(sql, parameters: parameters) { try Self.requestRow($0).0 }
        }
        return Page(overfetched: requests, limit: limit, offset: offset)
    }

    /// An id as the server makes them (and `counter-code`): 1 to 100 ASCII letters, digits, `_` and `-`.
    static func isIdentifier(_ text: String) -> Bool {
        (1...100).contains(text.utf8.count) && text.utf8.allSatisfy {
            $0 == 0x2D || $0 == 0x5F || (0x30...0x39).contains($0) || (0x41...0x5A).contains($0) || (0x61...0x7A).contains($0)
        }
    }

    /// Each id filter given (field, value) must be an id as the server makes them: else 400 naming it.
    static func requireIdentifiers(_ filters: [(String, String?)]) throws {
        for (field, id) in filters {
            if let id, !isIdentifier(id) {
                throw StampError.invalid(field, "\(field) is an account id (1 to 100 letters, digits, _ and -)")
            }
        }
    }

    /// Approves a pending request and changes the card in the same transaction.
    public func approve(_ principal: Principal, requestId: String) async throws -> Approval {
        let now = clock.now()
        let outcome = try await write { connection, outbox -> Decided<Approval> in
            let (request, members) = try await Self.requestToDecide(requestId, by: principal, now: now, on: connection)
            if let expired = try await Self.expireIfDue(request, now: now, on: connection, outbox: &outbox) {
                return .expired(expired)
            }
            let approval = try await Self.approve(request, by: principal.member, now: now, on: connection)
            try outbox.emit("request.approved", to: [request.customerId] + members, data: approval, at: now)
            return .decided(approval)
        }
        return try outcome.get()
    }

    /// Approves `request` in the caller's transaction: the card changes, the visit counts.
    static func approve(_ request: StampRequest, by member: MemberRef, now: Date,
                        on connection: any SQLSession) async throws -> Approval {
        var card = try await loadOrNewCard(customer: request.customerId, store: request.storeId, now: now, on: connection)
        switch request.kind {
        case .stamp:
            try await addLedger(.stampAdded, card: card, stamps: request.count, rewards: 0, request: request.id,
                                member: member.id, at: now, on: connection)
            card = try await convertAndSave(card, adding: request.count, request: request.id, member: member.id,
                                            visit: true, now: now, on: connection)
        case .reward:
            guard card.rewards > 0 else { throw StampError(.conflict, "no reward is available on this card") }
            try await addLedger(.rewardUsed, card: card, stamps: 0, rewards: -1, request: request.id,
                                member: member.id, at: now, on: connection)
            card.rewards -= 1
            card.updatedAt = now
            try await connection.run("""
                UPDATE cards SET rewards = ?, updated_at = ?, visits = visits + 1 WHERE customer_id = ? AND store_id = ?
                """, card.rewards, now.millis, card.customerId, card.storeId)
        }
        var approved = try await decide(request, .approved, reason: nil, by: member, now: now, on: connection)
        // The request was read with the card as it was; the answer shows it after this visit.
        approved.customerCard = CustomerCard(stamps: card.stamps, rewards: card.rewards,
                                             visits: (request.customerCard?.visits ?? 0) + 1,
                                             memberSince: request.customerCard?.memberSince ?? now)
        return Approval(request: approved, card: card)
    }

    public func reject(_ principal: Principal, requestId: String, reason: String?) async throws -> StampRequest {
        let reason = try Validate.optionalText(reason, field: "reason", max: 300)
        let now = clock.now()
        let outcome = try await write { connection, outbox -> Decided<StampRequest> in
            let (request, members) = try await Self.requestToDecide(requestId, by: principal, now: now, on: connection)
            if let expired = try await Self.expireIfDue(request, now: now, on: connection, outbox: &outbox) {
                return .expired(expired)
            }
            let rejected = try await Self.decide(request, .rejected, reason: reason, by: principal.member, now: now, on: connection)
            try outbox.emit("request.rejected", to: [request.customerId] + members, data: RequestChange(request: rejected),
                            at: now)
            return .decided(rejected)
        }
        return try outcome.get()
    }

    /// The customer withdraws a pending request.
    public func cancel(_ principal: Principal, requestId: String) async throws -> StampRequest {
        let now = clock.now()
        let outcome = try await write { connection, outbox -> Decided<StampRequest> in
            guard let (request, _) = try await Self.loadRequest(requestId, on: connection) else {
                throw StampError.notFound("request")
            }
            guard request.customerId == principal.id else {
                guard try await Self.memberRole(principal.id, of: request.storeId, on: connection) != nil else {
                    throw StampError.notFound("request")
                }
                throw StampError(.forbidden, "only the customer who asked may cancel a request")
            }
            try Self.requirePending(request)
            if let expired = try await Self.expireIfDue(request, now: now, on: connection, outbox: &outbox) {
                return .expired(expired)
            }
            let cancelled = try await Self.decide(request, .cancelled, reason: nil, by: nil, now: now, on: connection)
            try outbox.emit("request.cancelled", to: try await Self.memberIds(of: request.storeId, on: connection),
                            data: RequestChange(request: cancelled), at: now)
            return .decided(cancelled)
        }
        return try outcome.get()
    }

    /// Marks every pending request past its expiry as expired. Returns how many.
    @discardableResult
    public func expireDueRequests(batch: Int = 500) async throws -> Int {
        let now = clock.now()
        return try await write { connection, outbox in
            let due = try await connection.query(Self.requestSelect + """
                 WHERE r.status = 'pending' AND r.expires_at <= ? ORDER BY r.expires_at LIMIT ?
                """, now.millis, batch) { try Self.requestRow($0) }
            for (request, _) in due {
                _ = try await Self.expireIfDue(request, now: now, on: connection, outbox: &outbox)
            }
            return due.count
        }
    }

    // MARK: - Pieces of the transactions above

    /// Each request makes the owner's page beep: one customer may have only a few waiting at a
    /// store, and make only so many there in a clock hour (a replay of an idempotent create is not
    /// counted). Counts the request it lets through; returns the customer's pending requests here.
    static func checkRequestLimits(customer: String, store: String, limits: PartyLimits, now: Date,
                                   on connection: any SQLSession) async throws -> Int {
        // One customer's requests are one scope: two made at once (at one store or several) see
        // each other's, and so does a deletion of the account.
        try await claim("requests:" + customer, now: now, on: connection)
        let pending = try await connection.queryFirst("""
            SELECT count(*) FROM requests WHERE customer_id = ? AND store_id = ? AND status = 'pending' AND expires_at > ?
            """, customer, store, now.millis) { try $0.get(0, as: Int.self) } ?? 0
        if pending >= limits.pendingRequestsPerCustomerPerStore {
            throw StampError(.rateLimited, "you already have \(pending) requests waiting at this store", retryAfter: 30)
        }
        // Counted per clock hour in a row of its own: one read and one write, however many
        // requests there were (a window that slides would read them all).
        let limit = limits.requestsPerCustomerPerStorePerHour
        let hour = now.millis / 3_600_000
        let counted = try await connection.queryFirst("""
            SELECT count FROM request_counts WHERE customer_id = ? AND store_id = ? AND hour = ?
            """, customer, store, hour) { try $0.get(0, as: Int.self) } ?? 0
        if counted >= limit {
            let wait = max(1, Int(((hour + 1) * 3_600_000 - now.millis + 999) / 1000))
            throw StampError(.rateLimited, "at most \(limit) requests an hour at one store", retryAfter: wait)
        }
        try await connection.run("""
            INSERT INTO request_counts (customer_id, store_id, hour, count) VALUES (?, ?, ?, 1)
            ON CONFLICT (customer_id, store_id, hour) DO UPDATE SET count = request_counts.count + 1
            """, customer, store, hour)
        return pending
    }

    /// A write that refused a decision because the request had expired must still commit the
    /// expiry, so it returns instead of throwing, and the caller throws after the commit.
    enum Decided<T: Sendable>: Sendable {
        case decided(T)
        case expired(StampRequest)

        func get() throws -> T {
            switch self {
            case .decided(let value): return value
            case .expired: throw StampError(.conflict, "the request expired before it was decided")
            }
        }
    }

    /// The pending request a member decides, and the store's members (who are told). The
    /// customer who asked gets 403, anyone else 404; a request decided already is 409 with
    /// its current state, so the page shows who decided it.
    static func requestToDecide(_ id: String, by principal: Principal, now: Date,
                                on connection: any SQLSession) async throws -> (StampRequest, members: [String]) {
        guard let (request, _) = try await loadRequest(id, on: connection) else { throw StampError.notFound("request") }
        // The members in one read: who is told, and whether the caller is one of them.
        let members = try await memberIds(of: request.storeId, on: connection)
        guard members.contains(principal.id) else {
            if request.customerId == principal.id {
                throw StampError(.forbidden, "only the store's members decide a request")
            }
            throw StampError.notFound("request")
        }
        try requirePending(request)
        try await touchMember(principal.id, of: request.storeId, now: now, on: connection)
        return (request, members)
    }

    static func requirePending(_ request: StampRequest) throws {
        guard request.status == .pending else {
            let by = request.decidedBy.map { " by \($0.name)" } ?? ""
            throw StampError.conflict("the request is already \(request.status.rawValue)\(by)", current: request, as: "request")
        }
    }

    static func expireIfDue(_ request: StampRequest, now: Date, on connection: any SQLSession,
                            outbox: inout Outbox) async throws -> StampRequest? {
        guard request.status == .pending, request.expiresAt <= now else { return nil }
        let expired = try await decide(request, .expired, reason: nil, by: nil, now: now, on: connection)
        try outbox.emit("request.expired", to: [request.customerId] + (try await memberIds(of: request.storeId, on: connection)),
                        data: RequestChange(request: expired), at: now)
        return expired
    }

    static func decide(_ request: StampRequest, _ status: RequestStatus, reason: String?, by member: MemberRef?, now: Date,
                       on connection: any SQLSession) async throws -> StampRequest {
        // The status guard makes a concurrent second decision change nothing.
        let changed = try await connection.run("""
            UPDATE requests SET status = ?, reason = ?, decided_at = ?, decided_by = ? WHERE id = ? AND status = 'pending'
            """, status.rawValue, reason, now.millis, member?.id, request.id)
        guard changed == 1 else { throw StampError(.conflict, "the request is no longer pending") }
        var decided = request
        decided.status = status
        decided.reason = reason
        decided.decidedAt = now
        decided.decidedBy = member
        return decided
    }

    static let requestSelect = """
        SELECT r.id, r.store_id, s.name, r.customer_id, a.name, r.kind, r.count, r.status, r.reason,
               r.created_at, r.expires_at, r.decided_at, s.owner_id, r.decided_by, d.name, r.at_counter,
               r.reversed_at, r.reversed_by, v.name, c.stamps, c.rewards, c.visits, coalesce(c.added_at, c.updated_at)
        FROM requests r JOIN stores s ON s.id = r.store_id JOIN accounts a ON a.id = r.customer_id
        LEFT JOIN accounts d ON d.id = r.decided_by LEFT JOIN accounts v ON v.id = r.reversed_by
        LEFT JOIN cards c ON c.customer_id = r.customer_id AND c.store_id = r.store_id
        """

    static func loadRequest(_ id: String, on connection: any SQLSession) async throws -> (StampRequest, owner: String)? {
        try await connection.queryFirst(requestSelect + " WHERE r.id = ?", id) { try requestRow($0) }
    }

    static func requestRow(_ row: borrowing Row) throws -> (StampRequest, owner: String) {
        guard let kind = RequestKind(rawValue: try row.get(5)), let status = RequestStatus(rawValue: try row.get(7)) else {
            throw StampError(.unavailable, "stored request has an unknown kind or status")
        }
        let request = StampRequest(
            id: try row.get(0), storeId: try row.get(1), storeName: try row.get(2), customerId: try row.get(3),
            customerName: try row.get(4), kind: kind, count: try row.get(6), status: status,
            reason: try row.optional(8), createdAt: Date(millis: try row.get(9)),
            expiresAt: Date(millis: try row.get(10)), decidedAt: try row.optional(11, as: Int64.self).map(Date.init(millis:)),
            decidedBy: memberRef(try row.optional(13), name: try row.optional(14)), atCounter: try row.get(15),
            reversedAt: try row.optional(16, as: Int64.self).map(Date.init(millis:)),
            reversedBy: memberRef(try row.optional(17), name: try row.optional(18)),
            customerCard: nil)
        var withCard = request
        if let stamps = try row.optional(19, as: Int.self) {
            withCard.customerCard = CustomerCard(stamps: stamps, rewards: try row.get(20), visits: try row.get(21),
                                                 memberSince: Date(millis: try row.get(22)))
        }
        return (withCard, try row.get(12))
    }

    /// The first answer to this call, when the key was used within the window with the same
    /// operation and body; 422 when it was used with another; nil when it is new (or stale, and
    /// then forgotten).
    static func replay<T: Codable & Sendable>(_ idempotency: IdempotencyKey, account: String, now: Date,
                                              window: TimeInterval, on connection: any SQLSession) async throws -> T? {
        let stored = try await connection.queryFirst("""
            SELECT fingerprint, response, created_at FROM idempotency_keys WHERE account_id = ? AND key = ?
            """, account, idempotency.key) { row in
            (try row.get(0, as: [UInt8].self), try row.get(1, as: String.self), try row.get(2, as: Int64.self))
        }
        guard let (storedPrint, response, createdAt) = stored else { return nil }
        if Double(now.millis - createdAt) < window * 1000 {
            guard storedPrint == fingerprint(idempotency) else {
                throw StampError(.unprocessable, "this Idempotency-Key was used with a different request", field: "Idempotency-Key")
            }
            return try StampJSON.decoder().decode(T.self, from: Data(response.utf8))
        }
        try await connection.run("DELETE FROM idempotency_keys WHERE account_id = ? AND key = ?", account, idempotency.key)
        return nil
    }

    static func fingerprint(_ idempotency: IdempotencyKey) -> [UInt8] {
        var hasher = SHA256()
        hasher.update(data: Array(idempotency.operation.utf8))
        hasher.update(data: [0])
        hasher.update(data: idempotency.body)
        return Array(hasher.finalize())
    }

    /// Runs `create` once per (account, key) within the window: a retry with the same operation
    /// and body gets the first answer back and creates nothing; a different one is 422.
    static func idempotent<T: Codable & Sendable>(_ idempotency: IdempotencyKey?, account: String, now: Date,
                                                   window: TimeInterval, on connection: any SQLSession,
                                                   create: () async throws -> T) async throws -> T {
        try await idempotent(idempotency, account: account, now: now, window: window, on: connection) {
            Result<T, StampError>.success(try await create())
        }.get()
    }

    /// The same for a body that may refuse by returning a failure (so that what it counted
    /// commits): a replay comes before anything the body checks, and only a success is kept.
    static func idempotent<T: Codable & Sendable>(_ idempotency: IdempotencyKey?, account: String, now: Date,
                                                   window: TimeInterval, on connection: any SQLSession,
                                                   create: () async throws -> Result<T, StampError>) async throws -> Result<T, StampError> {
        guard let idempotency else { return try await create() }
        if let replayed: T = try await replay(idempotency, account: account, now: now, window: window, on: connection) {
            return .success(replayed)
        }
        let outcome = try await create()
        if case .success(let value) = outcome {
            try await connection.run("""
                INSERT INTO idempotency_keys (account_id, key, operation, fingerprint, status, response, created_at)
                VALUES (?, ?, ?, ?, 201, ?, ?)
                """, account, idempotency.key, idempotency.operation, fingerprint(idempotency), try StampJSON.encode(value),
                now.millis)
        }
        return outcome
    }
}
