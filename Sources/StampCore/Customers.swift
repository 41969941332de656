// A store's customers as its members see them: the list of everyone with a card here, most
// recently changed first, and one customer's page (their card and its ledger at this store).
// Like every customer lookup, it reads only cards of the caller's store: a customer id of
// someone without a card here is not found, whoever they are elsewhere.
import Foundation
import Storage

/// A customer of the store with their card here.
public struct StoreCustomer: Codable, Sendable, Equatable {
    public var customer: CustomerSummary
    public var card: CustomerCard
    /// When the card last changed (a visit, a correction, a gift).
    public var updatedAt: Date
}

/// One customer at the store: the card and a page of its ledger, newest first.
public struct CustomerHistory: Codable, Sendable, Equatable {
    public var customer: CustomerSummary
    public var card: CustomerCard
    public var ledger: [LedgerEntry]
    public var nextCursor: String?
}

/// A row of the store's ledger with whose card it is.
public struct StoreLedgerEntry: Codable, Sendable, Equatable {
    public var customer: MemberRef
    public var entry: LedgerEntry
}

extension StampService {
    private static let customerSelect = """
        SELECT a.id, a.name, a.login, a.walk_in, c.stamps, c.rewards, c.visits, coalesce(c.added_at, c.updated_at), c.updated_at
        FROM cards c JOIN accounts a ON a.id = c.customer_id
        """

    private static func storeCustomerRow(_ row: borrowing Row) throws -> StoreCustomer {
        StoreCustomer(customer: try customerRow(row),
                      card: CustomerCard(stamps: try row.get(4), rewards: try row.get(5), visits: try row.get(6),
                                         memberSince: Date(millis: try row.get(7))),
                      updatedAt: Date(millis: try row.get(8)))
    }

    /// Everyone with a card at the store, the most recently changed card first (any member).
    public func storeCustomers(_ principal: Principal, storeId: String, limit: Int, cursor: String?) async throws -> Page<StoreCustomer> {
        let limit = try Validate.range(limit, field: "limit", 1...100)
        let offset = try cursor.map { try OffsetCursor.decode($0, field: "cursor") } ?? 0
        let customers = try await read { connection in
            try await Self.requireMember(principal, of: storeId, on: connection)
            return try await connection.query(Self.customerSelect + """
                 WHERE c.store_id = ? ORDER BY c.updated_at DESC, c.customer_id LIMIT ? OFFSET ?
                """, storeId, limit + 1, offset) { try Self.storeCustomerRow($0) }
        }
        return Page(overfetched: customers, limit: limit, offset: offset)
    }

    /// The store's ledger, newest first: every stamp, reward, gift and correction on its cards,
    /// by customer, member and time (any member). Bounded by the store's index by time.
    public func storeLedger(_ principal: Principal, storeId: String, customerId: String?, memberId: String?,
                            since: Date?, before: Date?, limit: Int, cursor: String?) async throws -> Page<StoreLedgerEntry> {
        let limit = try Validate.range(limit, field: "limit", 1...100)
        let offset = try cursor.map { try OffsetCursor.decode($0, field: "cursor") } ?? 0
        try Self.requireIdentifiers([("customerId", customerId), ("memberId", memberId)])
        let entries = try await read { connection in
            try await Self.requireMember(principal, of: storeId, on: connection)
            var sql = SQL(Self.ledgerSelect(leading: "l.customer_id, c.name,", joining: "JOIN accounts c ON c.id = l.customer_id")
                + " WHERE l.store_id = ?")
            var parameters: [any SQLBindable] = [storeId]
            if let customerId { sql = sql + " AND l.customer_id = ?"; parameters.append(customerId) }
            if let memberId { sql = sql + " AND l.member_id = ?"; parameters.append(memberId) }
            if let since { sql = sql + " AND l.at >= ?"; parameters.append(since.millis) }
            if let before { sql = sql + " AND l.at < ?"; parameters.append(before.millis) }
            sql = sql + " ORDER BY l.at DESC, l.id DESC LIMIT ? OFFSET ?"
            parameters += [limit + 1, offset]
            return try await connection.query(sql, parameters: parameters) { row in
                StoreLedgerEntry(customer: MemberRef(id: try row.get(0), name: try row.get(1)),
                                 entry: try Self.ledgerRow(row, from: 2))
            }
        }
        return Page(overfetched: entries, limit: limit, offset: offset)
    }

    /// One customer's card at the store and its ledger, newest first (any member).
    public func customerHistory(_ principal: Principal, storeId: String, customerId: String, limit: Int,
                                cursor: String?) async throws -> CustomerHistory {
        let limit = try Validate.range(limit, field: "limit", 1...100)
        let offset = try cursor.map { try OffsetCursor.decode($0, field: "cursor") } ?? 0
        guard Self.isIdentifier(customerId) else { throw StampError.notFound("customer") }
        return try await read { connection in
            try await Self.requireMember(principal, of: storeId, on: connection)
            guard let found = try await connection.queryFirst(Self.customerSelect + " WHERE c.store_id = ? AND c.customer_id = ?",
                                                              storeId, customerId, row: { try Self.storeCustomerRow($0) }) else {
                throw StampError(.notFound, "no customer with a card at this store has that id")
            }
            let ledger = Page(overfetched: try await connection.query(Self.ledgerSelect() + """
                 WHERE l.customer_id = ? AND l.store_id = ? ORDER BY l.id DESC LIMIT ? OFFSET ?
                """, customerId, storeId, limit + 1, offset) { try Self.ledgerRow($0) }, limit: limit, offset: offset)
            return CustomerHistory(customer: found.customer, card: found.card, ledger: ledger.items, nextCursor: ledger.nextCursor)
        }
    }
}
