// A real stampd in the test process (real sockets on port 0, a real SQLite file, or a schema of
// its own in the PostgreSQL of STAMPD_TEST_POSTGRES_URL) and a small raw HTTP/1.1 client that
// can send anything, well-formed or not.
import Foundation
import Logging
import NIOCore
import NIOPosix
import PostgresDB
import SQLiteDB
import Storage
import ServiceLifecycle
import StampCore
import StampHTTP
import Synchronization
import Testing

final class TestServer: Sendable {
    let service: StampService
    let hub: EventHub
    let database: any Storage
    let clock: ManualClock
    /// Where the data is: a SQLite file, or a PostgreSQL schema. Start another server on it to restart.
    let databasePath: String
    let port: Int
    private let group: ServiceGroup
    private let task: Task<Void, any Error>

    static var migrations: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("migrations").path
    }

    /// With `forward`, the service reads the time as the executable's does, through a
    /// `ForwardClock` over `clock` (started no earlier than the newest time the database holds).
    static func start(databasePath: String? = nil, clock: ManualClock = ManualClock(Date()), forward: Bool = false,
                      configure: (inout ServerConfiguration, inout StampSettings) -> Void = { _, _ in },
                      maximumPollsPerAccount: Int = 16) async throws -> TestServer {
        let path = databasePath ?? TestStorage.newLocation()
        let database = try await TestStorage.open(path)
        try await database.migrate(folder: migrations + "/" + database.engine)
        var configuration = ServerConfiguration()
        configuration.port = 0
        configuration.shutdownGracePeriod = .seconds(5)
        var settings = StampSettings()
        // Every test client shares 127.0.0.1; the tests of the per-address limits set their own.
        settings.signUpsPerAddressPerHour = 100_000
        settings.passwordChecksPerAddressPerMinute = 100_000
        settings.passwordChecksInFlightPerAddress = 1_000
        settings.limits.pendingRequestsPerCustomerPerStore = 100_000
        settings.limits.requestsPerCustomerPerStorePerHour = 100_000
        // The per-visit rules have tests of their own, which set them on their stores.
        settings.newStoreRules = .off
        configure(&configuration, &settings)
        let hub = EventHub(maximumPerAccount: maximumPollsPerAccount)
        let forwardClock = forward ? clock.forward() : nil
        let service = StampService(database: database, hub: hub, hasher: PasswordHasher(cost: .insecureFast),
                                   clock: forwardClock ?? clock, settings: settings)
        if let forwardClock, let newest = try await service.newestRecordedTime() { forwardClock.notBefore(newest) }
        try await service.prepareEventHub()
        var logger = Logger(label: "test")
        // STAMPD_TEST_LOG_LEVEL=error shows what a failing test's server logged.
        logger.logLevel = ProcessInfo.processInfo.environment["STAMPD_TEST_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) } ?? .critical
        let responder = Application.responder(service: service, logger: logger)
        let server = HTTPServer(configuration: configuration, responder: responder, hub: hub, logger: logger)
        let group = ServiceGroup(services: [InstanceFeed(service: service), server], gracefulShutdownSignals: [], logger: logger)
        let task = Task { try await group.run() }
        let address = try await server.listeningAddress()
        // On a shared database, serve the test once the other instances' commits are heard.
        await hub.waitUntilFollowing()
        return TestServer(service: service, hub: hub, database: database, clock: clock, databasePath: path,
                          port: address.port!, group: group, task: task)
    }

    private init(service: StampService, hub: EventHub, database: any Storage, clock: ManualClock, databasePath: String,
                 port: Int, group: ServiceGroup, task: Task<Void, any Error>) {
        self.service = service
        self.hub = hub
        self.database = database
        self.clock = clock
        self.databasePath = databasePath
        self.port = port
        self.group = group
        self.task = task
    }

    /// Begins the graceful shutdown that SIGTERM starts in the executable.
    func beginShutdown() async {
        await group.triggerGracefulShutdown()
    }

    /// Shuts down, waits for the server to finish, closes the database.
    func stop() async throws {
        await group.triggerGracefulShutdown()
        try await task.value
        await database.close()
    }

    func connect(from address: String? = nil) async throws -> TestClient {
        try await TestClient.connect(port: port, from: address)
    }

    // MARK: - The stamp flow in one call each

    struct Person {
        let token: String
        let id: String
    }

    func signUp(_ role: String, _ login: String = "user-\(UUID().uuidString.prefix(8))", name: String = "Test") async throws -> Person {
        let client = try await connect()
        defer { client.close() }
        let response = try await client.request("POST", "/v1/accounts",
                                                json: ["role": role, "login": login, "password": "correct horse", "name": name])
        try #require(response.status == 201, "sign-up: \(response.text)")
        return Person(token: try response.string("token"), id: try response.string("account", "id"))
    }

    func createStore(_ owner: Person, _ fields: [String: Any] = [:]) async throws -> String {
        let client = try await connect()
        defer { client.close() }
        var body: [String: Any] = ["name": "Bean There", "rewardItem": "Americano", "stampsPerReward": 10]
        body.merge(fields) { $1 }
        let response = try await client.request("POST", "/v1/stores", token: owner.token, json: body)
        try #require(response.status == 201, "create store: \(response.text)")
        return try response.string("id")
    }

    func askForStamps(_ customer: Person, store: String, count: Int = 1) async throws -> String {
        let client = try await connect()
        defer { client.close() }
        let response = try await client.request("POST", "/v1/stores/\(store)/requests", token: customer.token,
                                                json: ["kind": "stamp", "count": count])
        try #require(response.status == 201, "ask for stamps: \(response.text)")
        return try response.string("id")
    }

    /// A store account that joins `store` as staff with an invitation its owner makes.
    func addStaff(to store: String, owner: Person, login: String = "staff-\(UUID().uuidString.prefix(8))",
                  name: String = "Barista") async throws -> Person {
        let staff = try await signUp("owner", login, name: name)
        let client = try await connect()
        defer { client.close() }
        let invitation = try await client.request("POST", "/v1/stores/\(store)/invitations", token: owner.token)
        try #require(invitation.status == 201, "invite: \(invitation.text)")
        let joined = try await client.request("POST", "/v1/me/stores", token: staff.token,
                                              json: ["invitationCode": try invitation.string("code")])
        try #require(joined.status == 201, "join: \(joined.text)")
        return staff
    }

    func approve(_ owner: Person, _ request: String) async throws -> TestResponse {
        let client = try await connect()
        defer { client.close() }
        return try await client.request("POST", "/v1/requests/\(request)/approve", token: owner.token)
    }
}

/// The engine the storage tests run on: SQLite, or PostgreSQL when STAMPD_TEST_POSTGRES_URL is
/// set (`scripts/test.sh` runs the suite once on each).
enum TestStorage {
    static let postgresURL: String? = {
        guard let url = ProcessInfo.processInfo.environment["STAMPD_TEST_POSTGRES_URL"], !url.isEmpty else { return nil }
        return url
    }()

    static var isPostgres: Bool { postgresURL != nil }

    /// A new, empty place for one server's data: a file, or a schema.
    static func newLocation() -> String {
        isPostgres ? "test_" + UUID().uuidString.prefix(12).lowercased().replacingOccurrences(of: "-", with: "")
            : temporaryDatabasePath()
    }

    static func open(_ location: String) async throws -> any Storage {
        guard let url = postgresURL else { return try Database(path: location) }
        var configuration = try PostgresConfiguration(url: url, tls: .disable, poolSize: 3)
        configuration.schema = location
        let storage = PostgresStorage(configuration: configuration)
        try await storage.write { try await $0.run("CREATE SCHEMA IF NOT EXISTS \(location)") }
        return storage
    }
}

func temporaryDatabasePath() -> String {
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent("stampd-test-\(UUID().uuidString)")
    try? FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
    return folder.appendingPathComponent("stampd.sqlite").path
}

struct TestResponse {
    let status: Int
    let headers: [String: String]
    let body: [UInt8]

    var text: String { String(decoding: body, as: UTF8.self) }

    func header(_ name: String) -> String? { headers[name.lowercased()] }

    var json: Any? { try? JSONSerialization.jsonObject(with: Data(body)) }

    /// The value at a path of object keys and array indexes.
    func value(_ path: Any...) -> Any? {
        var current = json
        for step in path {
            if let key = step as? String { current = (current as? [String: Any])?[key] }
            else if let index = step as? Int {
                guard let array = current as? [Any], array.indices.contains(index) else { return nil }
                current = array[index]
            }
        }
        return current
    }

    func string(_ path: Any...) throws -> String {
        var current = json
        for step in path {
            if let key = step as? String { current = (current as? [String: Any])?[key] }
            else if let index = step as? Int { current = (current as? [Any]).flatMap { $0.indices.contains(index) ? $0[index] : nil } }
        }
        return try #require(current as? String, "no string at \(path) in \(text)")
    }

    func int(_ path: Any...) -> Int? {
        var current = json
        for step in path {
            if let key = step as? String { current = (current as? [String: Any])?[key] }
            else if let index = step as? Int { current = (current as? [Any]).flatMap { $0.indices.contains(index) ? $0[index] : nil } }
        }
        return current as? Int
    }
}

/// One TCP connection that writes raw bytes and reads HTTP/1.1 answers (Content-Length framed).
final class TestClient: @unchecked Sendable {
    private let channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>
    private var inbound: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    private let outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    private var buffer = ByteBuffer()

    /// `from` binds the client to another loopback address (127.0.0.2, …): another "client
    /// address" for the per-address limits.
    static func connect(port: Int, host: String = "127.0.0.1", from: String? = nil) async throws -> TestClient {
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        if let from { bootstrap = bootstrap.bind(to: try SocketAddress(ipAddress: from, port: 0)) }
        let channel = try await bootstrap
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return TestClient(channel)
    }

    private init(_ channel: NIOAsyncChannel<ByteBuffer, ByteBuffer>) {
        self.channel = channel
        self.inbound = channel.inbound.makeAsyncIterator()
        self.outbound = channel.outbound
    }

    func send(_ text: String) async throws {
        try await outbound.write(ByteBuffer(string: text))
    }

    func send(_ bytes: [UInt8]) async throws {
        try await outbound.write(ByteBuffer(bytes: bytes))
    }

    static func raw(_ method: String, _ path: String, token: String? = nil, json: Any? = nil,
                    headers: [String: String] = [:]) -> String {
        var body = ""
        if let json { body = String(decoding: try! JSONSerialization.data(withJSONObject: json), as: UTF8.self) }
        var text = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if let token { text += "Authorization: Bearer \(token)\r\n" }
        if json != nil { text += "Content-Type: application/json\r\n" }
        if json != nil || ["POST", "PATCH", "PUT"].contains(method) { text += "Content-Length: \(body.utf8.count)\r\n" }
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        return text + "\r\n" + body
    }

    func request(_ method: String, _ path: String, token: String? = nil, json: Any? = nil,
                 headers: [String: String] = [:]) async throws -> TestResponse {
        try await send(Self.raw(method, path, token: token, json: json, headers: headers))
        return try await readResponse()
    }

    /// Reads one whole answer; throws when the server closes first.
    func readResponse() async throws -> TestResponse {
        while true {
            if let response = try parse() { return response }
            guard var more = try await inbound.next() else { throw ClosedBeforeAnswer(received: buffer.readableBytes) }
            buffer.writeBuffer(&more)
        }
    }

    /// Reads an interim `100 Continue` head: proof that the server has read the request head.
    func readContinue() async throws -> Int {
        while true {
            let view = buffer.readableBytesView
            if let end = view.firstRange(of: Array("\r\n\r\n".utf8)) {
                let head = String(decoding: view[view.startIndex..<end.lowerBound], as: UTF8.self)
                buffer.moveReaderIndex(forwardBy: end.upperBound - view.startIndex)
                buffer.discardReadBytes()
                return Int(head.split(separator: " ")[1]) ?? 0
            }
            guard var more = try await inbound.next() else { throw ClosedBeforeAnswer(received: buffer.readableBytes) }
            buffer.writeBuffer(&more)
        }
    }

    /// True once the server has closed the connection (after any unread answers, or with a reset);
    /// false when it is still open after `seconds`.
    func waitForClose(seconds: Double = 10) async -> Bool {
        let channel = self.channel.channel
        let timedOut = Atomic<Bool>(false)
        let deadline = Task {
            try await Task.sleep(for: .seconds(seconds))
            timedOut.store(true, ordering: .relaxed)
            channel.close(promise: nil)
        }
        defer { deadline.cancel() }
        do {
            while var more = try await inbound.next() { buffer.writeBuffer(&more) }
        } catch {
            // A reset is a close too; a close of our own at the deadline is not.
        }
        return !timedOut.load(ordering: .relaxed)
    }

    func close() {
        outbound.finish()
        channel.channel.close(promise: nil)
    }

    deinit {
        outbound.finish()
        channel.channel.close(promise: nil)
    }

    struct ClosedBeforeAnswer: Error {
        let received: Int
    }

    private func parse() throws -> TestResponse? {
        let view = buffer.readableBytesView
        guard let end = view.firstRange(of: Array("\r\n\r\n".utf8)) else { return nil }
        let headText = String(decoding: view[view.startIndex..<end.lowerBound], as: UTF8.self)
        var lines = headText.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { throw ClosedBeforeAnswer(received: -1) }
        var headers: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let length = Int(headers["content-length"] ?? "0") ?? 0
        let headLength = end.upperBound - view.startIndex
        guard view.count >= headLength + length else { return nil }
        buffer.moveReaderIndex(forwardBy: headLength)
        let body = buffer.readBytes(length: length) ?? []
        buffer.discardReadBytes()
        if status < 200 { return try parse() }  // 100 Continue: the real answer follows
        return TestResponse(status: status, headers: headers, body: body)
    }
}
