// Event positions per account: what an upgrade from global ids keeps, and what a cursor means.
import Foundation
import SQLiteDB
import Storage
@testable import StampCore
import Testing

@Suite(.timeLimit(.minutes(2))) struct EventPositionTests {
    /// A database from before positions (migrations 0001–0003) with events of two accounts,
    /// interleaved, the oldest pruned; then the upgrade.
    @Test(.enabled(if: !TestStorage.isPostgres, "an upgrade of SQLite databases from before positions"))
    func cursorsHeldBeforeTheUpgradeStayValid() async throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("stampd-old-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let all = URL(fileURLWithPath: TestServer.migrations).appendingPathComponent("sqlite")
        for name in ["0001_initial.sql", "0002_walk_ins_and_gifts.sql", "0003_held_cards.sql"] {
            try FileManager.default.copyItem(at: all.appendingPathComponent(name), to: folder.appendingPathComponent(name))
        }
        let path = temporaryDatabasePath()
        let old = try Database(path: path)
        try await old.migrate(folder: folder.path)
        try await old.write { session in
            // ids 1…10: a gets the odd ones, b the even ones; 1…4 were pruned.
            for id in 5...10 {
                try await session.run("INSERT INTO events (id, account_id, type, at, data) VALUES (?, ?, 'test', 0, '{}')",
                                      id, id % 2 == 1 ? "acc_a" : "acc_b")
            }
            try await session.run("UPDATE event_retention SET pruned_through = 4")
        }
        await old.close()

        let server = try await TestServer.start(databasePath: path)
        let positions = try await server.database.read { session in
            try await session.query("SELECT account_id, pruned_through FROM event_positions ORDER BY account_id") {
                "\(try $0.get(0, as: String.self)) \(try $0.get(1, as: Int.self))"
            }
        }
        #expect(positions == ["acc_a 4", "acc_b 4"])
        // a had seen 5: 7 and 9 follow; b had seen 6: 8 and 10 follow; a cursor from before the
        // pruning resets; new events continue each account's numbers.
        let fromFive = try await server.service.events(for: "acc_a", after: 5, limit: 10)
        #expect(fromFive.events.map(\.id) == [7, 9])
        let fromSix = try await server.service.events(for: "acc_b", after: 6, limit: 10)
        #expect(fromSix.events.map(\.id) == [8, 10])
        #expect(try await server.service.events(for: "acc_a", after: 3, limit: 10).reset)
        try await server.database.write { session in
            var outbox = Outbox()
            try outbox.emit("test", to: ["acc_a", "acc_b"], data: ["n": 1], at: Date())
            return try await outbox.commit(on: session, dense: false)
        }
        #expect(try await server.service.events(for: "acc_a", after: 9, limit: 10).events.map(\.id) == [10])
        #expect(try await server.service.events(for: "acc_b", after: 10, limit: 10).events.map(\.id) == [11])
        try await server.stop()
    }

    /// Positions count the caller's own events: another account's traffic moves nobody else's cursor.
    @Test func positionsCountEachAccountsOwnEvents() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let store = try await server.createStore(owner)
        let busy = try await server.signUp("customer")
        let quiet = try await server.signUp("customer")
        for _ in 0..<3 { _ = try await server.askForStamps(busy, store: store) }
        _ = try await server.askForStamps(quiet, store: store)
        let ownerEvents = try await server.service.events(for: owner.id, after: nil, limit: 10).events.map(\.id)
        #expect(ownerEvents.count == 4 && ownerEvents == ownerEvents.sorted() && Set(ownerEvents).count == 4)
        if !TestStorage.isPostgres { #expect(ownerEvents == [1, 2, 3, 4]) }  // SQLite numbers each stream densely
        #expect(try await server.service.events(for: quiet.id, after: nil, limit: 10).cursor == 0)
        // A cursor beyond the caller's own stream was never issued to it: reset.
        let beyond = try await server.service.events(for: quiet.id, after: ownerEvents.last!, limit: 10)
        #expect(beyond.reset && beyond.cursor == 0)
        try await server.stop()
    }
}
