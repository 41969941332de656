// Stores: created and changed by their owner, found by everyone signed in.
import Foundation
import Storage

public struct StoreDraft: Sendable {
    public var name: String
    public var stampsPerReward: Int?
    public var rewardItem: String
    public var address: String?
    public var latitude: Double?
    public var longitude: Double?
    public var openHours: String?
    public var requestTtlSeconds: Int?
    public var menu: [MenuItem]?
    /// Unset rules take the server's defaults for new stores.
    public var rules = StoreRulesPatch()
    public init(name: String, rewardItem: String) {
        self.name = name
        self.rewardItem = rewardItem
    }
}

/// A change to a store: nil leaves a field alone; `.some(nil)` clears an optional field.
public struct StorePatch: Sendable {
    public var name: String?
    public var stampsPerReward: Int?
    public var rewardItem: String?
    public var address: String??
    public var latitude: Double??
    public var longitude: Double??
    public var openHours: String??
    public var requestTtlSeconds: Int?
    public var menu: [MenuItem]?
    public var rules = StoreRulesPatch()
    public init() {}
}

/// A change to a store's rules: nil leaves a rule alone.
public struct StoreRulesPatch: Sendable {
    public var requireCounterCode: Bool?
    public var autoApproveAtCounter: Bool?
    public var pendingPerCustomer: Int?
    public var stampCooldownSeconds: Int?
    public var dailyStampCap: Int?
    public init() {}

    func applied(to rules: StoreRules) throws -> StoreRules {
        var rules = rules
        if let requireCounterCode { rules.requireCounterCode = requireCounterCode }
        if let autoApproveAtCounter { rules.autoApproveAtCounter = autoApproveAtCounter }
        if let pendingPerCustomer {
            rules.pendingPerCustomer = try Validate.range(pendingPerCustomer, field: "rules.pendingPerCustomer", 0...3)
        }
        if let stampCooldownSeconds {
            rules.stampCooldownSeconds = try Validate.range(stampCooldownSeconds, field: "rules.stampCooldownSeconds", 0...86_400)
        }
        if let dailyStampCap { rules.dailyStampCap = try Validate.range(dailyStampCap, field: "rules.dailyStampCap", 0...1_000) }
        return rules
    }
}

extension StampService {
    public func createStore(_ principal: Principal, _ draft: StoreDraft,
                            idempotency: IdempotencyKey? = nil) async throws -> Store {
        guard principal.role == .owner else { throw StampError(.forbidden, "only owners create stores") }
        let now = clock.now()
        var store = Store(
            id: Identifier.make("sto"), ownerId: principal.id,
            name: try Validate.text(draft.name, field: "name", max: 100),
            stampsPerReward: try Validate.range(draft.stampsPerReward ?? 10, field: "stampsPerReward", 1...100),
            rewardItem: try Validate.text(draft.rewardItem, field: "rewardItem", max: 100),
            address: try Validate.optionalText(draft.address, field: "address", max: 300),
            latitude: try Validate.coordinate(draft.latitude, field: "latitude", limit: 90),
            longitude: try Validate.coordinate(draft.longitude, field: "longitude", limit: 180),
            openHours: try Validate.optionalText(draft.openHours, field: "openHours", max: 200),
            requestTtlSeconds: try Validate.range(draft.requestTtlSeconds ?? settings.defaultRequestTTL,
                                                  field: "requestTtlSeconds", 10...86_400),
            menu: try Validate.menu(draft.menu ?? []),
            createdAt: now, updatedAt: now, rules: try draft.rules.applied(to: settings.newStoreRules))
        try Self.checkCoordinates(store)
        store.distanceMeters = nil
        let created = store
        let window = settings.idempotencyWindow
        let storesPerOwner = settings.limits.storesPerOwner
        return try await write { connection, _ in
            try await Self.idempotent(idempotency, account: principal.id, now: now, window: window, on: connection) {
                try await Self.claim("stores:" + principal.id, now: now, on: connection)
                let owned = try await connection.queryFirst("SELECT count(*) FROM stores WHERE owner_id = ?", principal.id) {
                    try $0.get(0, as: Int.self)
                } ?? 0
                if owned >= storesPerOwner {
                    throw StampError(.rateLimited, "an owner may have at most \(storesPerOwner) stores", retryAfter: 3600)
                }
                let rules = created.rules
                try await connection.run("""
                    INSERT INTO stores (id, owner_id, name, stamps_per_reward, reward_item, address, latitude,
                                        longitude, open_hours, request_ttl_seconds, created_at, updated_at, counter_secret,
                                        require_counter_code, auto_approve_at_counter, pending_per_customer,
                                        stamp_cooldown_seconds, daily_stamp_cap)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """, created.id, created.ownerId, created.name, created.stampsPerReward, created.rewardItem,
                    created.address, created.latitude, created.longitude, created.openHours,
                    created.requestTtlSeconds, now.millis, now.millis, CounterCode.newSecret(),
                    rules.requireCounterCode, rules.autoApproveAtCounter, rules.pendingPerCustomer,
                    rules.stampCooldownSeconds, rules.dailyStampCap)
                try await Self.replaceMenu(created.menu, of: created.id, on: connection)
                try await connection.run("""
                    INSERT INTO store_members (store_id, account_id, role, added_at, last_active_at) VALUES (?, ?, 'owner', ?, ?)
                    """, created.id, principal.id, now.millis, now.millis)
                return created
            }
        }
    }

    public func store(_ principal: Principal, id: String) async throws -> Store {
        let store = try await read { connection in try await Self.loadStore(id, on: connection) }
        guard let store else { throw StampError.notFound("store") }
        return store
    }

    public func updateStore(_ principal: Principal, id: String, _ patch: StorePatch) async throws -> Store {
        let now = clock.now()
        // Validate before taking the writer. The coordinates change together, whatever the store
        // holds now, so the rule does not depend on state the caller cannot see.
        if (patch.latitude == nil) != (patch.longitude == nil) {
            throw StampError.invalid(patch.latitude == nil ? "latitude" : "longitude", "latitude and longitude change together")
        }
        let name = try patch.name.map { try Validate.text($0, field: "name", max: 100) }
        let perReward = try patch.stampsPerReward.map { try Validate.range($0, field: "stampsPerReward", 1...100) }
        let rewardItem = try patch.rewardItem.map { try Validate.text($0, field: "rewardItem", max: 100) }
        let address = try patch.address.map { try Validate.optionalText($0, field: "address", max: 300) }
        let latitude = try patch.latitude.map { try Validate.coordinate($0, field: "latitude", limit: 90) }
        let longitude = try patch.longitude.map { try Validate.coordinate($0, field: "longitude", limit: 180) }
        let openHours = try patch.openHours.map { try Validate.optionalText($0, field: "openHours", max: 200) }
        let ttl = try patch.requestTtlSeconds.map { try Validate.range($0, field: "requestTtlSeconds", 10...86_400) }
        let menu = try patch.menu.map { try Validate.menu($0) }
        let rulesPatch = patch.rules
        _ = try rulesPatch.applied(to: .cafe)  // validated before the writer is taken
        if let latitude, let longitude, (latitude == nil) != (longitude == nil) {
            throw StampError.invalid(latitude == nil ? "latitude" : "longitude", "latitude and longitude go together")
        }
        let changesPerHour = settings.limits.storeChangesPerHour
        let (store, more) = try await write { connection, outbox -> (Store, Bool) in
            guard var store = try await Self.loadStore(id, on: connection) else { throw StampError.notFound("store") }
            try await Self.requireOwner(principal, of: id, on: connection, touching: now)
            try await Self.countStoreChange(id, limit: changesPerHour, now: now, on: connection)
            if let name { store.name = name }
            if let perReward { store.stampsPerReward = perReward }
            if let rewardItem { store.rewardItem = rewardItem }
            if let address { store.address = address }
            if let latitude { store.latitude = latitude }
            if let longitude { store.longitude = longitude }
            if let openHours { store.openHours = openHours }
            if let ttl { store.requestTtlSeconds = ttl }
            store.rules = try rulesPatch.applied(to: store.rules)
            try Self.checkCoordinates(store)
            store.updatedAt = now
            try await connection.run("""
                UPDATE stores SET name = ?, stamps_per_reward = ?, reward_item = ?, address = ?, latitude = ?,
                    longitude = ?, open_hours = ?, request_ttl_seconds = ?, updated_at = ?, require_counter_code = ?,
                    auto_approve_at_counter = ?, pending_per_customer = ?, stamp_cooldown_seconds = ?, daily_stamp_cap = ?
                WHERE id = ?
                """, store.name, store.stampsPerReward, store.rewardItem, store.address, store.latitude,
                store.longitude, store.openHours, store.requestTtlSeconds, now.millis, store.rules.requireCounterCode,
                store.rules.autoApproveAtCounter, store.rules.pendingPerCustomer, store.rules.stampCooldownSeconds,
                store.rules.dailyStampCap, store.id)
            if let menu {
                try await Self.replaceMenu(menu, of: store.id, on: connection)
                store.menu = menu
            }
            // The first cards convert with the change; the rest follow in batches of their own
            // transactions (below), so that a store with many cards does not stall other writes.
            let converted = try await Self.convertExcessStamps(of: store.id, limit: Self.conversionBatch, now: now,
                                                         on: connection, outbox: &outbox)
            return (store, converted == Self.conversionBatch)
        }
        if more { try await convertExcessStamps(of: id) }
        return store
    }

    /// Cards converted per transaction after `stampsPerReward` is lowered. Each card is a few
    /// statements (the card, its ledger row, its event), so a batch of 50 keeps one transaction
    /// short enough not to hold up a busy store's other writes (on SQLite, every store's).
    static let conversionBatch = 50

    /// Converts the cards of `storeId` holding a full set or more, a batch per transaction.
    /// Returns how many it converted.
    @discardableResult
    func convertExcessStamps(of storeId: String) async throws -> Int {
        var total = 0
        while true {
            let now = clock.now()
            let converted = try await write { connection, outbox in
                try await Self.convertExcessStamps(of: storeId, limit: Self.conversionBatch, now: now, on: connection, outbox: &outbox)
            }
            total += converted
            if converted < Self.conversionBatch { return total }
        }
    }

    /// Finishes conversions a restart interrupted (a read finds the stores concerned). Returns
    /// how many cards it converted.
    public func convertPendingCards() async throws -> Int {
        let stores = try await read { connection in
            try await connection.query("""
                SELECT DISTINCT c.store_id FROM cards c JOIN stores s ON s.id = c.store_id WHERE c.stamps >= s.stamps_per_reward
                """) { try $0.get(0, as: String.self) }
        }
        var total = 0
        for store in stores { total += try await convertExcessStamps(of: store) }
        return total
    }

    /// Stores whose name or a menu item contains `query`; nearest first when a point is given.
    public func searchStores(_ principal: Principal, query: String?, latitude: Double?, longitude: Double?,
                             limit: Int, cursor: String?) async throws -> Page<Store> {
        let query = try Validate.optionalText(query, field: "q", max: 100)
        let limit = try Validate.range(limit, field: "limit", 1...100)
        let latitude = try Validate.coordinate(latitude, field: "lat", limit: 90)
        let longitude = try Validate.coordinate(longitude, field: "lon", limit: 180)
        if (latitude == nil) != (longitude == nil) {
            throw StampError.invalid(latitude == nil ? "lat" : "lon", "lat and lon go together")
        }
        let offset = try cursor.map { try OffsetCursor.decode($0, field: "cursor") } ?? 0
        var sql = Self.storeSelect
        var parameters: [any SQLBindable] = []
        if let query {
            let pattern = "%" + Self.escapeLike(query) + "%"
            sql += """
                 WHERE s.name {LIKE} ? ESCAPE '\\' OR EXISTS (
                    SELECT 1 FROM menu_items m WHERE m.store_id = s.id AND m.name {LIKE} ? ESCAPE '\\')
                """
            parameters += [pattern, pattern]
        }
        if let latitude, let longitude {
            // Equirectangular distance orders well at city scale; the answer carries the haversine.
            let scale = cos(latitude * .pi / 180)
            sql += """
                 ORDER BY s.latitude IS NULL,
                    (s.latitude - ?) * (s.latitude - ?) + ((s.longitude - ?) * ?) * ((s.longitude - ?) * ?), s.id
                """
            parameters += [latitude, latitude, longitude, scale, longitude, scale]
        } else {
            sql += " ORDER BY {NAME}, s.id"
        }
        sql += " LIMIT ? OFFSET ?"
        parameters += [limit + 1, offset]
        // Case-insensitive matching and order: SQLite's LIKE and NOCASE fold ASCII; PostgreSQL
        // spells them ILIKE and lower() (the stores_name index is on lower(name) there).
        let finalSQL = SQL(
            sqlite: sql.replacingOccurrences(of: "{LIKE}", with: "LIKE").replacingOccurrences(of: "{NAME}", with: "s.name COLLATE NOCASE"),
            postgres: sql.replacingOccurrences(of: "{LIKE}", with: "ILIKE").replacingOccurrences(of: "{NAME}", with: "lower(s.name)"))
        let finalParameters = parameters
        // Two queries whatever the page size: the stores, then all their menus.
        var stores = try await read { connection -> [Store] in
            let stores = try await connection.query(finalSQL, parameters: finalParameters) { try Self.storeRow($0) }
            return try await Self.withMenus(stores, on: connection)
        }
        let more = stores.count > limit
        if more { stores.removeLast() }
        if let latitude, let longitude {
            for index in stores.indices {
                if let lat = stores[index].latitude, let lon = stores[index].longitude {
                    stores[index].distanceMeters = (Self.haversine(latitude, longitude, lat, lon) * 10).rounded() / 10
                }
            }
        }
        return Page(items: stores, nextCursor: more ? OffsetCursor.encode(offset + limit) : nil)
    }

    static let storeSelect = """
        SELECT s.id, s.owner_id, s.name, s.stamps_per_reward, s.reward_item, s.address, s.latitude, s.longitude,
               s.open_hours, s.request_ttl_seconds, s.created_at, s.updated_at, s.require_counter_code,
               s.auto_approve_at_counter, s.pending_per_customer, s.stamp_cooldown_seconds, s.daily_stamp_cap FROM stores s
        """
    /// The columns of `storeSelect`: a query that adds its own reads them after these.
    static let storeColumns = 17

    static func storeRow(_ row: borrowing Row) throws -> Store {
        Store(id: try row.get(0), ownerId: try row.get(1), name: try row.get(2),
              stampsPerReward: try row.get(3), rewardItem: try row.get(4), address: try row.optional(5),
              latitude: try row.optional(6), longitude: try row.optional(7), openHours: try row.optional(8),
              requestTtlSeconds: try row.get(9), menu: [], createdAt: Date(millis: try row.get(10)),
              updatedAt: Date(millis: try row.get(11)), distanceMeters: nil,
              rules: StoreRules(requireCounterCode: try row.get(12), autoApproveAtCounter: try row.get(13),
                                pendingPerCustomer: try row.get(14), stampCooldownSeconds: try row.get(15),
                                dailyStampCap: try row.get(16)))
    }

    static func loadStore(_ id: String, on connection: any SQLSession) async throws -> Store? {
        guard let store = try await connection.queryFirst(storeSelect + " WHERE s.id = ?", id, row: { try storeRow($0) }) else { return nil }
        return try await withMenus([store], on: connection)[0]
    }

    /// The stores with their menus filled in, by one query.
    static func withMenus(_ stores: [Store], on connection: any SQLSession) async throws -> [Store] {
        guard !stores.isEmpty else { return stores }
        let placeholders = Array(repeating: "?", count: stores.count).joined(separator: ", ")
        var menus: [String: [MenuItem]] = [:]
        for (store, item) in try await connection.query("""
            SELECT store_id, name, price FROM menu_items WHERE store_id IN (\(placeholders)) ORDER BY store_id, position
            """, parameters: stores.map(\.id), row: { (try $0.get(0, as: String.self), MenuItem(name: try $0.get(1), price: try $0.get(2))) }) {
            menus[store, default: []].append(item)
        }
        return stores.map { store in
            var store = store
            store.menu = menus[store.id] ?? []
            return store
        }
    }

    /// After `stampsPerReward` is lowered, cards holding that many stamps or more turn them into
    /// rewards (up to `limit` cards per call), so 0 ≤ stamps < stampsPerReward holds for every
    /// card once the batches are done. Reads the store's current rule, whoever changed it last.
    static func convertExcessStamps(of storeId: String, limit: Int, now: Date, on connection: any SQLSession,
                                    outbox: inout Outbox) async throws -> Int {
        let cards = try await connection.query(cardSelect + " WHERE c.store_id = ? AND c.stamps >= s.stamps_per_reward LIMIT ?",
                                         storeId, limit) { try cardRow($0) }
        for card in cards {
            let card = try await convertAndSave(card, adding: 0, now: now, on: connection)
            if try await !isHeld(card.customerId, on: connection) {
                try outbox.emit("card.updated", to: [card.customerId], data: CardChange(card: card, reason: "stampsPerRewardLowered"),
                                at: now)
            }
        }
        return cards.count
    }

    static func replaceMenu(_ menu: [MenuItem], of store: String, on connection: any SQLSession) async throws {
        try await connection.run("DELETE FROM menu_items WHERE store_id = ?", store)
        for (position, item) in menu.enumerated() {
            try await connection.run("INSERT INTO menu_items (store_id, position, name, price) VALUES (?, ?, ?, ?)",
                               store, position, item.name, item.price)
        }
    }

    static func checkCoordinates(_ store: Store) throws {
        if (store.latitude == nil) != (store.longitude == nil) {
            throw StampError.invalid(store.latitude == nil ? "latitude" : "longitude",
                                     "latitude and longitude go together")
        }
    }

    static func escapeLike(_ text: String) -> String {
        var out = ""
        for character in text {
            if character == "%" || character == "_" || character == "\\" { out.append("\\") }
            out.append(character)
        }
        return out
    }

    static func haversine(_ lat1: Double, _ lon1: Double, _ lat2: Double, _ lon2: Double) -> Double {
        let radians = Double.pi / 180
        let dLat = (lat2 - lat1) * radians
        let dLon = (lon2 - lon1) * radians
        let a = sin(dLat / 2) * sin(dLat / 2)
            + cos(lat1 * radians) * cos(lat2 * radians) * sin(dLon / 2) * sin(dLon / 2)
        return 6_371_000 * 2 * atan2(a.squareRoot(), (1 - a).squareRoot())
    }
}

/// An opaque page cursor holding an offset.
enum OffsetCursor {
    static func encode(_ offset: Int) -> String {
        Data("o:\(offset)".utf8).base64EncodedString()
    }

    static func decode(_ cursor: String, field: String) throws -> Int {
        guard let data = Data(base64Encoded: cursor), let text = String(data: data, encoding: .utf8),
              text.hasPrefix("o:"), let offset = Int(text.dropFirst(2)), offset >= 0, offset <= 1_000_000
        else { throw StampError.invalid(field, "\(field) is not a cursor this server issued") }
        return offset
    }
}
