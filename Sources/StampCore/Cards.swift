// Stamp cards and their ledger: a card always equals the sum of its ledger rows.
import Foundation
import Storage

/// The data of a `card.updated` event: the card after the change, and why it changed.
public struct CardChange: Codable, Sendable, Equatable {
    public var card: Card
    /// `ownerStamped`, `giftSent`, `giftReceived`, `stampsPerRewardLowered`, `claimed` (a held card
    /// moved in) or `added` (a store added the customer by member code: a new, empty card).
    public var reason: String
    /// The stamps added (negative: removed) by this change, where it has a count.
    public var stamps: Int?
    /// The other customer's name, for a gift.
    public var counterpart: String?

    public init(card: Card, reason: String, stamps: Int? = nil, counterpart: String? = nil) {
        self.card = card
        self.reason = reason
        self.stamps = stamps
        self.counterpart = counterpart
    }
}

extension StampService {
    public func cards(_ principal: Principal) async throws -> [Card] {
        guard principal.role == .customer else { throw StampError(.forbidden, "only customers have cards") }
        return try await read { connection in
            try await connection.query(Self.cardSelect + " WHERE c.customer_id = ? ORDER BY c.updated_at DESC, c.store_id",
                                 principal.id) { try Self.cardRow($0) }
        }
    }

    public func ledger(_ principal: Principal, storeId: String) async throws -> [LedgerEntry] {
        guard principal.role == .customer else { throw StampError(.forbidden, "only customers have cards") }
        let entries = try await read { connection -> [LedgerEntry]? in
            guard try await Self.loadCard(customer: principal.id, store: storeId, on: connection) != nil else { return nil }
            return try await connection.query(Self.ledgerSelect() + " WHERE l.customer_id = ? AND l.store_id = ? ORDER BY l.id",
                                              principal.id, storeId) { try Self.ledgerRow($0) }
        }
        guard let entries else { throw StampError.notFound("card") }
        return entries
    }

    /// A ledger row with the member who made it and, for a gift, the other person (the gift's
    /// row has the same store, time and count; gifts_sender and gifts_receiver find it).
    /// `leading` columns come before the row's own (read them, then `ledgerRow(from:)` past
    /// them), and `joining` adds a join for them.
    static func ledgerSelect(leading: String = "", joining: String = "") -> String { """
        SELECT \(leading) l.id, l.kind, l.stamps_delta, l.rewards_delta, l.request_id, l.at, l.member_id, m.name, l.reverses,
               CASE l.kind
                 WHEN 'gift_sent' THEN (SELECT a.name FROM gifts g JOIN accounts a ON a.id = g.to_id
                   WHERE g.from_id = l.customer_id AND g.at = l.at AND g.store_id = l.store_id AND g.count = -l.stamps_delta LIMIT 1)
                 WHEN 'gift_received' THEN (SELECT a.name FROM gifts g JOIN accounts a ON a.id = g.from_id
                   WHERE g.to_id = l.customer_id AND g.at = l.at AND g.store_id = l.store_id AND g.count = l.stamps_delta LIMIT 1)
               END
        FROM ledger l \(joining) LEFT JOIN accounts m ON m.id = l.member_id
        """
    }

    /// A row of `ledgerSelect`, whose columns start at `first` (after any the caller put before them).
    static func ledgerRow(_ row: borrowing Row, from first: Int = 0) throws -> LedgerEntry {
        guard let kind = LedgerKind(rawValue: try row.get(first + 1)) else {
            throw StampError(.unavailable, "stored ledger row has an unknown kind")
        }
        return LedgerEntry(id: try row.get(first), kind: kind, stampsDelta: try row.get(first + 2),
                           rewardsDelta: try row.get(first + 3), requestId: try row.optional(first + 4),
                           at: Date(millis: try row.get(first + 5)),
                           member: Self.memberRef(try row.optional(first + 6), name: try row.optional(first + 7)),
                           reverses: try row.optional(first + 8), counterpart: try row.optional(first + 9))
    }

    static let cardSelect = """
        SELECT c.customer_id, c.store_id, s.name, s.reward_item, s.stamps_per_reward, c.stamps, c.rewards, c.updated_at
        FROM cards c JOIN stores s ON s.id = c.store_id
        """

    static func cardRow(_ row: borrowing Row) throws -> Card {
        Card(customerId: try row.get(0), storeId: try row.get(1), storeName: try row.get(2),
             rewardItem: try row.get(3), stampsPerReward: try row.get(4), stamps: try row.get(5),
             rewards: try row.get(6), updatedAt: Date(millis: try row.get(7)))
    }

    /// The member named by a row's id and name columns, or the counter code.
    static func memberRef(_ id: String?, name: String?) -> MemberRef? {
        guard let id else { return nil }
        if id == counterCodeMember.id { return counterCodeMember }
        return MemberRef(id: id, name: name ?? "Former member")
    }

    static func loadCard(customer: String, store: String, on connection: any SQLSession) async throws -> Card? {
        try await connection.queryFirst(cardSelect + " WHERE c.customer_id = ? AND c.store_id = ?", customer, store) {
            try cardRow($0)
        }
    }

    /// A new, empty card; `addedBy` is the member who added the customer (a walk-in, a member
    /// code), nil for a card a request's approval made.
    static func newCard(customer: String, store: String, addedBy: String? = nil, now: Date,
                        on connection: any SQLSession) async throws -> Card {
        try await connection.run("""
            INSERT INTO cards (customer_id, store_id, stamps, rewards, updated_at, added_by, added_at) VALUES (?, ?, 0, 0, ?, ?, ?)
            """, customer, store, now.millis, addedBy, now.millis)
        guard let card = try await loadCard(customer: customer, store: store, on: connection) else {
            throw StampError.notFound("store")
        }
        return card
    }

    /// The customer's card at the store, made (empty) when there is none.
    static func loadOrNewCard(customer: String, store: String, now: Date, on connection: any SQLSession) async throws -> Card {
        if let card = try await loadCard(customer: customer, store: store, on: connection) { return card }
        return try await newCard(customer: customer, store: store, now: now, on: connection)
    }

    /// A ledger row; `member` is the member who made the change (nil for a customer's gift).
    /// Returns the new row's id.
    @discardableResult
    static func addLedger(_ kind: LedgerKind, card: Card, stamps: Int, rewards: Int, request: String?, member: String? = nil,
                          reverses: Int64? = nil, at: Date, on connection: any SQLSession) async throws -> Int64 {
        guard let id = try await connection.queryFirst("""
            INSERT INTO ledger (customer_id, store_id, kind, stamps_delta, rewards_delta, request_id, at, member_id, reverses)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id
            """, card.customerId, card.storeId, kind.rawValue, stamps, rewards, request, at.millis, member, reverses,
            row: { try $0.get(0, as: Int64.self) }) else {
            throw StampError(.unavailable, "the ledger row was not written")
        }
        return id
    }
}
