// The resources of the API, as they are encoded in answers and in event data.
import Foundation

public enum Role: String, Codable, Sendable, CaseIterable {
    case customer
    case owner
}

public struct Account: Codable, Sendable, Equatable {
    public var id: String
    public var role: Role
    public var login: String
    public var name: String
    public var createdAt: Date
}

/// A member's role at one store: its `owner` changes the store, its settings, menu and staff;
/// `staff` run the counter (the queue, decisions, stamps, walk-ins).
public enum MemberRole: String, Codable, Sendable, CaseIterable {
    case owner
    case staff
}

/// Who did something at a store: a member, or `counter-code` for a request the counter code
/// approved by itself.
public struct MemberRef: Codable, Sendable, Equatable {
    public var id: String
    public var name: String
    public init(id: String, name: String) {
        self.id = id
        self.name = name
    }
}

public struct MenuItem: Codable, Sendable, Equatable {
    public var name: String
    /// In the store's smallest currency unit (e.g. cents or won).
    public var price: Int
    public init(name: String, price: Int) {
        self.name = name
        self.price = price
    }
}

public struct Store: Codable, Sendable, Equatable {
    public var id: String
    public var ownerId: String
    public var name: String
    public var stampsPerReward: Int
    public var rewardItem: String
    public var address: String?
    public var latitude: Double?
    public var longitude: Double?
    public var openHours: String?
    public var requestTtlSeconds: Int
    public var menu: [MenuItem]
    public var createdAt: Date
    public var updatedAt: Date
    /// Only in search answers with `lat`/`lon`: metres from that point.
    public var distanceMeters: Double?
    /// The store's counter rules (see `StoreRules`).
    public var rules: StoreRules
}

/// How a store takes requests: the counter code, and the limits that mean "per visit".
public struct StoreRules: Codable, Sendable, Equatable {
    /// A stamp request without the counter code's current value is refused (422).
    public var requireCounterCode: Bool
    /// A stamp request with a valid counter code is approved at once, by "counter code".
    public var autoApproveAtCounter: Bool
    /// Pending requests one customer may have here (1–3; 0: only the server's own cap); one more is
    /// 409 with the pending one.
    public var pendingPerCustomer: Int
    /// Seconds after an approved stamp request before the same customer may ask again (0: none).
    public var stampCooldownSeconds: Int
    /// Stamps one customer may ask for here in any 24 hours (0: no cap).
    public var dailyStampCap: Int

    public init(requireCounterCode: Bool = false, autoApproveAtCounter: Bool = false, pendingPerCustomer: Int,
                stampCooldownSeconds: Int, dailyStampCap: Int) {
        self.requireCounterCode = requireCounterCode
        self.autoApproveAtCounter = autoApproveAtCounter
        self.pendingPerCustomer = pendingPerCustomer
        self.stampCooldownSeconds = stampCooldownSeconds
        self.dailyStampCap = dailyStampCap
    }

    /// What a new cafe starts with: one request at a time, 5 minutes between stamps, 10 a day.
    public static let cafe = StoreRules(pendingPerCustomer: 1, stampCooldownSeconds: 300, dailyStampCap: 10)
    /// No per-visit limits (the server-wide ones still hold): for load tests and benchmarks.
    public static let off = StoreRules(pendingPerCustomer: 0, stampCooldownSeconds: 0, dailyStampCap: 0)
}

/// The customer's card at the request's store, on a request row, so that two customers of one
/// name can be told apart.
public struct CustomerCard: Codable, Sendable, Equatable {
    public var stamps: Int
    public var rewards: Int
    /// Approved requests and direct stamps at this store.
    public var visits: Int
    public var memberSince: Date
}

public enum RequestKind: String, Codable, Sendable {
    case stamp
    case reward
}

public enum RequestStatus: String, Codable, Sendable, CaseIterable {
    case pending
    case approved
    case rejected
    case cancelled
    case expired
}

public struct StampRequest: Codable, Sendable, Equatable {
    public var id: String
    public var storeId: String
    public var storeName: String
    public var customerId: String
    public var customerName: String
    public var kind: RequestKind
    public var count: Int
    public var status: RequestStatus
    public var reason: String?
    public var createdAt: Date
    public var expiresAt: Date
    public var decidedAt: Date?
    /// The member who decided it (absent while pending, and for a cancellation or an expiry).
    public var decidedBy: MemberRef?
    /// It came with a valid counter code: the customer was at the counter.
    public var atCounter: Bool = false
    /// An approval a member reversed, and who.
    public var reversedAt: Date? = nil
    public var reversedBy: MemberRef? = nil
    /// The customer's card at this store now (absent before their first card there).
    public var customerCard: CustomerCard? = nil
}

public struct Card: Codable, Sendable, Equatable {
    public var customerId: String
    public var storeId: String
    public var storeName: String
    public var rewardItem: String
    public var stampsPerReward: Int
    public var stamps: Int
    public var rewards: Int
    public var updatedAt: Date
}

public enum LedgerKind: String, Codable, Sendable {
    case stampAdded = "stamp_added"
    case rewardEarned = "reward_earned"
    case rewardUsed = "reward_used"
    case giftSent = "gift_sent"
    case giftReceived = "gift_received"
    case manualStamp = "manual_stamp"
    case reversal
}

public struct LedgerEntry: Codable, Sendable, Equatable {
    public var id: Int64
    public var kind: LedgerKind
    public var stampsDelta: Int
    public var rewardsDelta: Int
    public var requestId: String?
    public var at: Date
    /// The member who made the change (absent for a customer's gift).
    public var member: MemberRef?
    /// For a `reversal`: the entry it undoes.
    public var reverses: Int64?
    /// For a gift: the name of the other person (who received it, or who gave it).
    public var counterpart: String? = nil
}

/// One delivered event: what `GET /v1/events` lists.
public struct Event: Sendable, Equatable {
    public var id: Int64
    public var type: String
    public var at: Date
    /// The event's `data` object, already encoded as JSON.
    public var data: String
}

/// Who is calling: the account behind a valid token.
public struct Principal: Sendable, Equatable {
    public var account: Account
    /// The SHA-256 of the bearer token it signed in with: its polls end when that session does.
    public var session: [UInt8]
    public var id: String { account.id }
    public var role: Role { account.role }
    /// The caller as a store's records name them.
    public var member: MemberRef { MemberRef(id: account.id, name: account.name) }
}

/// A page of results and the cursor that continues it, if there is more.
public struct Page<Item: Sendable & Encodable>: Sendable, Encodable {
    public var items: [Item]
    public var nextCursor: String?
}

extension Page {
    /// A page read with `LIMIT limit + 1 OFFSET offset`: the extra row only says there are more.
    init(overfetched rows: [Item], limit: Int, offset: Int) {
        let more = rows.count > limit
        self.init(items: more ? Array(rows.prefix(limit)) : rows, nextCursor: more ? OffsetCursor.encode(offset + limit) : nil)
    }
}
