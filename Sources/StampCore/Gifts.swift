// Stamp gifts: a customer gives stamps of one store's card to another customer, atomically.
import Foundation
import Storage

public struct Gift: Codable, Sendable, Equatable {
    public var id: String
    public var storeId: String
    public var toName: String
    public var count: Int
    public var at: Date
    /// The giver's card after the gift.
    public var card: Card
}

extension StampService {
    /// Gives stamps of the caller's card at a store to another customer, found by login. The
    /// checks that do not depend on the receiver come first, and a login that matches nobody
    /// counts against the hourly gift allowance: probing logins costs what gifting does.
    public func giveStamps(_ principal: Principal, storeId: String, toLogin: String, count: Int,
                           idempotency: IdempotencyKey? = nil) async throws -> Gift {
        guard principal.role == .customer else { throw StampError(.forbidden, "only customers give stamps") }
        let toLogin = try Login.validate(toLogin, field: "to")
        let count = try Validate.range(count, field: "count", 1...100)
        let key = Login.key(toLogin)
        let legacyKey = Login.legacyKey(toLogin)
        let now = clock.now()
        let senderName = principal.account.name
        let window = settings.idempotencyWindow
        let limit = settings.limits.giftsPerHour
        let outcome = try await write { connection, outbox -> Result<Gift, StampError> in
            // A retry of a gift that went through answers it again, before any check that its own
            // success changed (the balance, the allowance).
            try await Self.idempotent(idempotency, account: principal.id, now: now, window: window, on: connection) {
                let scope = "gift:" + principal.id
                if let wait = try await Self.secondsUntilAllowed(scope, limit: limit, window: Self.hour, now: now, on: connection) {
                    throw StampError(.rateLimited, "at most \(limit) gifts an hour", retryAfter: wait)
                }
                guard var sender = try await Self.loadCard(customer: principal.id, store: storeId, on: connection) else {
                    throw StampError.notFound("card")
                }
                guard sender.stamps >= count else {
                    throw StampError(.conflict, "the card has \(Self.stamps(sender.stamps)), fewer than \(count)", field: "count")
                }
                // Held cards and erased accounts have keys no login can spell (they hold a `:` that
                // `Login.validate` refuses), so only living customers receive.
                guard let receiver = try await connection.queryFirst("""
                    SELECT id, name FROM accounts WHERE login_key IN (?, ?) AND role = 'customer' AND walk_in = 0
                    ORDER BY login_key = ? DESC LIMIT 1
                    """, key, legacyKey, key, row: { (try $0.get(0, as: String.self), try $0.get(1, as: String.self)) }) else {
                    // Returned, not thrown, so that the counted attempt commits.
                    try await Self.recordAction(scope, now: now, on: connection)
                    return .failure(StampError(.notFound, "no customer has that login", field: "to"))
                }
                guard receiver.0 != principal.id else { throw StampError.invalid("to", "a gift goes to someone else") }
                try await Self.recordAction(scope, now: now, on: connection)
                var receiving = try await Self.loadOrNewCard(customer: receiver.0, store: storeId, now: now, on: connection)
                try await Self.addLedger(.giftSent, card: sender, stamps: -count, rewards: 0, request: nil, at: now, on: connection)
                sender = try await Self.convertAndSave(sender, adding: -count, now: now, on: connection)
                try await Self.addLedger(.giftReceived, card: receiving, stamps: count, rewards: 0, request: nil, at: now, on: connection)
                receiving = try await Self.convertAndSave(receiving, adding: count, now: now, on: connection)
                let gift = Gift(id: Identifier.make("gft"), storeId: storeId, toName: receiver.1, count: count, at: now, card: sender)
                try await connection.run("INSERT INTO gifts (id, store_id, from_id, to_id, count, at) VALUES (?, ?, ?, ?, ?, ?)",
                                   gift.id, storeId, principal.id, receiver.0, count, now.millis)
                try outbox.emit("card.updated", to: [principal.id],
                                data: CardChange(card: sender, reason: "giftSent", stamps: -count, counterpart: receiver.1),
                                at: now)
                try outbox.emit("card.updated", to: [receiver.0],
                                data: CardChange(card: receiving, reason: "giftReceived", stamps: count, counterpart: senderName),
                                at: now)
                return .success(gift)
            }
        }
        return try outcome.get()
    }
}
