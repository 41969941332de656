// The store's numbers per day, for its owner's charts: stamps given, rewards used, requests by
// status, and new against returning customers. Days are calendar days at the owner's UTC offset,
// counted in SQL from the rows themselves (the ledger, the requests, the cards), so the figures
// agree with the cards and never need a counter of their own kept in step.
import Foundation
import Storage

/// One day's figures. A day with nothing is all zeros, so a chart has a bar for every day.
public struct DaySummary: Codable, Sendable, Equatable {
    /// `YYYY-MM-DD` at the period's UTC offset.
    public var day: String
    /// Stamps added by approvals and direct stamps that day (corrections included), less those undone.
    public var stampsGiven: Int
    /// Rewards handed over that day and not undone.
    public var rewardsUsed: Int
    /// Requests made that day, by their status now; an approval that was undone counts as `undone`.
    public var requests: RequestCounts
    /// Customers whose card at this store was made that day.
    public var newCustomers: Int
    /// Customers with a card from an earlier day who got stamps or used a reward that day.
    public var returningCustomers: Int

    init(day: String) {
        self.day = day
        stampsGiven = 0
        rewardsUsed = 0
        requests = RequestCounts()
        newCustomers = 0
        returningCustomers = 0
    }
}

public struct RequestCounts: Codable, Sendable, Equatable {
    public var pending = 0
    public var approved = 0
    public var undone = 0
    public var rejected = 0
    public var cancelled = 0
    public var expired = 0
}

public struct StoreSummary: Codable, Sendable, Equatable {
    public var utcOffsetMinutes: Int
    /// Oldest first, ending with today.
    public var days: [DaySummary]
}

extension StampService {
    static let summaryDays = 1...90
    private static let dayMillis: Int64 = 86_400_000

    /// The last `days` days up to and including today at `utcOffsetMinutes`, for the store's owner.
    public func summary(_ principal: Principal, storeId: String, days: Int, utcOffsetMinutes: Int) async throws -> StoreSummary {
        guard Self.summaryDays.contains(days) else {
            throw StampError.invalid("days", "days must be from \(Self.summaryDays.lowerBound) to \(Self.summaryDays.upperBound)")
        }
        let offset = Int64(utcOffsetMinutes) * 60_000
        let today = Self.floorDiv(clock.now().millis + offset, Self.dayMillis)
        let first = today - Int64(days) + 1
        let (from, to) = (first * Self.dayMillis - offset, (today + 1) * Self.dayMillis - offset)
        return try await read { connection in
            try await Self.requireOwner(principal, of: storeId, on: connection)
            var summary = (first...today).map { DaySummary(day: Self.dayText($0)) }
            func update(_ day: Int64, _ change: (inout DaySummary) -> Void) {
                let index = Int(day - first)
                if summary.indices.contains(index) { change(&summary[index]) }
            }
            // A row's day is (at + offset) / day; every `at` here is after 1970, so the division
            // of both engines (which truncates) is the floor.
            for (day, kind, stamps, count) in try await connection.query("""
                SELECT (l.at + ?) / 86400000, l.kind, CAST(sum(l.stamps_delta) AS bigint), count(*) FROM ledger l
                WHERE l.store_id = ? AND l.at >= ? AND l.at < ? AND l.kind IN ('stamp_added', 'manual_stamp', 'reward_used')
                  AND NOT EXISTS (SELECT 1 FROM ledger r WHERE r.reverses = l.id)
                GROUP BY 1, 2
                """, offset, storeId, from, to, row: {
                    (try $0.get(0, as: Int64.self), try $0.get(1, as: String.self), try $0.get(2, as: Int.self), try $0.get(3, as: Int.self))
                }) {
                update(day) { if kind == LedgerKind.rewardUsed.rawValue { $0.rewardsUsed += count } else { $0.stampsGiven += stamps } }
            }
            for (day, status, undone, count) in try await connection.query("""
                SELECT (created_at + ?) / 86400000, status, CASE WHEN reversed_at IS NULL THEN 0 ELSE 1 END, count(*) FROM requests
                WHERE store_id = ? AND created_at >= ? AND created_at < ?
                GROUP BY 1, 2, 3
                """, offset, storeId, from, to, row: {
                    (try $0.get(0, as: Int64.self), try $0.get(1, as: String.self), try $0.get(2, as: Int.self), try $0.get(3, as: Int.self))
                }) {
                update(day) { day in
                    switch RequestStatus(rawValue: status) {
                    case .pending: day.requests.pending += count
                    case .approved: if undone == 1 { day.requests.undone += count } else { day.requests.approved += count }
                    case .rejected: day.requests.rejected += count
                    case .cancelled: day.requests.cancelled += count
                    case .expired: day.requests.expired += count
                    case nil: break
                    }
                }
            }
            for (day, count) in try await connection.query("""
                SELECT (added_at + ?) / 86400000, count(*) FROM cards
                WHERE store_id = ? AND added_at >= ? AND added_at < ?
                GROUP BY 1
                """, offset, storeId, from, to, row: { (try $0.get(0, as: Int64.self), try $0.get(1, as: Int.self)) }) {
                update(day) { $0.newCustomers += count }
            }
            for (day, count) in try await connection.query("""
                SELECT (l.at + ?) / 86400000, count(DISTINCT l.customer_id) FROM ledger l
                JOIN cards c ON c.customer_id = l.customer_id AND c.store_id = l.store_id
                WHERE l.store_id = ? AND l.at >= ? AND l.at < ? AND l.kind IN ('stamp_added', 'manual_stamp', 'reward_used')
                  AND c.added_at < ((l.at + ?) / 86400000) * 86400000 - ?
                GROUP BY 1
                """, offset, storeId, from, to, offset, offset, row: { (try $0.get(0, as: Int64.self), try $0.get(1, as: Int.self)) }) {
                update(day) { $0.returningCustomers += count }
            }
            return StoreSummary(utcOffsetMinutes: utcOffsetMinutes, days: summary)
        }
    }

    static func floorDiv(_ value: Int64, _ divisor: Int64) -> Int64 {
        value >= 0 ? value / divisor : -((-value + divisor - 1) / divisor)
    }

    /// `YYYY-MM-DD` of day number `day` since 1970-01-01.
    static func dayText(_ day: Int64) -> String {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(secondsFromGMT: 0)!
        let parts = calendar.dateComponents([.year, .month, .day], from: Date(timeIntervalSince1970: TimeInterval(day) * 86_400))
        return String(format: "%04d-%02d-%02d", parts.year ?? 0, parts.month ?? 0, parts.day ?? 0)
    }
}
