// The stampd executable: configuration from flags and STAMPD_* variables, logging, metrics,
// the database and its migrations, and the services run until SIGTERM or SIGINT.
import ArgumentParser
import Foundation
import Logging
import Metrics
import NIOCore
import NIOPosix
import PostgresDB
import Prometheus
import SQLiteDB
import Storage
import ServiceLifecycle
import StampCore
import StampHTTP

@main
struct Stampd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stampd",
        abstract: "A real-time coupon stamp server: REST over HTTP/1.1, long-poll events, SQLite or PostgreSQL.",
        discussion: "Every option can also be set with the STAMPD_* environment variable named beside it; a flag wins.")

    @Option(help: "Address to listen on. [STAMPD_HOST]") var host: String?
    @Option(help: "Port to listen on; 0 picks a free one. [STAMPD_PORT]") var port: Int?
    @Option(help: "Address of the metrics listener (GET /metrics); keep it private. [STAMPD_METRICS_HOST]") var metricsHost: String?
    @Option(help: "Port of the metrics listener; 0 picks a free one (logged). [STAMPD_METRICS_PORT]") var metricsPort: Int?
    @Option(help: "A SQLite database file (or :memory:), or a postgres:// URL (postgres://user:password@host:port/db). [STAMPD_DATABASE]")
    var database: String?
    @Option(help: "Folder holding sqlite/ and postgres/, each of NNNN_name.sql migrations. [STAMPD_MIGRATIONS]") var migrations: String?
    @Option(help: "PostgreSQL: most pooled connections. [STAMPD_DB_POOL_SIZE]") var dbPoolSize: Int?
    @Option(help: "PostgreSQL: seconds one connection attempt may take. [STAMPD_DB_CONNECT_TIMEOUT]") var dbConnectTimeout: Int?
    @Option(help: "PostgreSQL: seconds one read or write transaction may take before its connection is closed (503). [STAMPD_DB_QUERY_TIMEOUT]")
    var dbQueryTimeout: Int?
    @Option(help: "PostgreSQL: TLS mode, disable, prefer or require (a sslmode in the URL wins). [STAMPD_DB_TLS]") var dbTls: String?
    @Option(help: "trace, debug, info, notice, warning, error or critical. [STAMPD_LOG_LEVEL]") var logLevel: String?
    @Option(help: "Load balancers whose X-Forwarded-For names the client: addresses or CIDR ranges, comma separated. [STAMPD_TRUSTED_PROXIES]")
    var trustedProxies: String?
    @Option(help: "Largest request body in bytes (413 above). [STAMPD_MAX_BODY_BYTES]") var maxBodyBytes: Int?
    @Option(help: "Largest request header block in bytes (431 above). [STAMPD_MAX_HEADER_BYTES]") var maxHeaderBytes: Int?
    @Option(help: "Seconds a keep-alive connection may sit idle. [STAMPD_IDLE_TIMEOUT]") var idleTimeout: Int?
    @Option(help: "Seconds a request may take to arrive (408 after). [STAMPD_REQUEST_TIMEOUT]") var requestTimeout: Int?
    @Option(help: "Most open connections. [STAMPD_MAX_CONNECTIONS]") var maxConnections: Int?
    @Option(help: "Most requests at work at once (parked polls do not count); more get 503 with Retry-After; decisions on requests may use as many again; 0: no bound. [STAMPD_MAX_REQUESTS_AT_WORK]")
    var maxRequestsAtWork: Int?
    @Option(help: "Most parked polls per account. [STAMPD_MAX_POLLS_PER_ACCOUNT]") var maxPollsPerAccount: Int?
    @Option(help: "Most parked polls in all. [STAMPD_MAX_POLLS]") var maxPolls: Int?
    @Option(help: "Days events are kept. [STAMPD_EVENT_RETENTION_DAYS]") var eventRetentionDays: Int?
    @Option(help: "Seconds events are kept, instead of days (0: the days): for soak tests that want many retention windows in a run. [STAMPD_EVENT_RETENTION_SECONDS]")
    var eventRetentionSeconds: Int?
    @Flag(help: "Start on the wall clock even when the database holds later times (after a wrong forward step of the clock that has since been corrected). [STAMPD_IGNORE_RECORDED_TIME=1]")
    var ignoreRecordedTime = false
    @Option(help: "Seconds between housekeeping rounds that prune old events, keys, sessions and marks. [STAMPD_PRUNE_INTERVAL]")
    var pruneInterval: Int?
    @Option(help: "Seconds in-flight requests get at shutdown. [STAMPD_SHUTDOWN_GRACE]") var shutdownGrace: Int?
    @Option(help: "Reader threads for SQLite. [STAMPD_DB_READERS]") var dbReaders: Int?
    @Option(help: "WAL pages after which SQLite's log is copied into the database (default 10000; small values let the fault tests cut into checkpoints). [STAMPD_DB_CHECKPOINT_PAGES]")
    var dbCheckpointPages: Int?
    @Option(help: "Threads for password hashing. [STAMPD_HASH_THREADS]") var hashThreads: Int?
    @Option(help: "Hashes that may wait for a hashing thread; more get 503. [STAMPD_HASH_QUEUE]") var hashQueue: Int?
    @Option(help: "Password checks (sign-ins, sign-ups) one client address may start per minute. [STAMPD_SIGN_INS_PER_ADDRESS]")
    var signInsPerAddress: Int?
    @Option(help: "Password checks one client address may have waiting or running at once. [STAMPD_SIGN_INS_AT_ONCE_PER_ADDRESS]")
    var signInsAtOncePerAddress: Int?
    @Option(help: "Accounts one client address may create per hour. [STAMPD_SIGN_UPS_PER_ADDRESS]") var signUpsPerAddress: Int?
    @Option(help: "Pending requests one customer may have at one store. [STAMPD_PENDING_REQUESTS_PER_CUSTOMER]")
    var pendingRequestsPerCustomer: Int?
    @Option(help: "Requests one customer may make at one store per hour. [STAMPD_REQUESTS_PER_CUSTOMER_PER_HOUR]")
    var requestsPerCustomerPerHour: Int?
    @Option(help: "The per-visit limits a new store starts with: cafe (1 pending request, 5 min between stamps, 10 stamps a day) or off (for load tests); owners change them. [STAMPD_NEW_STORE_LIMITS]")
    var newStoreLimits: String?
    @Flag(help: "Cheap password hashing, for tests and benchmarks only. [STAMPD_INSECURE_FAST_PASSWORD_HASHING=1]")
    var insecureFastPasswordHashing = false

    func run() async throws {
        let env = ProcessInfo.processInfo.environment
        func setting<T: LosslessStringConvertible>(_ flag: T?, _ name: String, _ fallback: T) throws -> T {
            if let flag { return flag }
            guard let text = env["STAMPD_" + name], !text.isEmpty else { return fallback }
            guard let value = T(text) else { throw ValidationError("STAMPD_\(name)=\(text) is not valid") }
            return value
        }

        let levelText = try setting(logLevel, "LOG_LEVEL", "info")
        guard let level = Logger.Level(rawValue: levelText) else { throw ValidationError("unknown log level \(levelText)") }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "stampd")

        let registry = PrometheusCollectorRegistry()
        var metricsFactory = PrometheusMetricsFactory(registry: registry)
        // A sync and a commit take tens of microseconds to tens of milliseconds: finer buckets
        // than the default's 5 ms at the bottom.
        let diskBuckets: [Duration] = [.microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500),
                                       .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
                                       .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
                                       .seconds(1)]
        for label in ["stampd_sqlite_sync_seconds", "stampd_db_commit_seconds"] { metricsFactory.durationHistogramBuckets[label] = diskBuckets }
        MetricsSystem.bootstrap(metricsFactory)

        let databaseSetting = try setting(database, "DATABASE", "./stampd.sqlite")
        let migrationsPath = migrations ?? env["STAMPD_MIGRATIONS"] ?? Self.defaultMigrationsFolder()
        let db: any Storage
        do {
            if PostgresConfiguration.isPostgresURL(databaseSetting) {
                let tlsText = try setting(dbTls, "DB_TLS", "prefer")
                guard let tls = PostgresConfiguration.TLSMode(rawValue: tlsText) else {
                    throw ValidationError("--db-tls must be disable, prefer or require")
                }
                let configuration = try PostgresConfiguration(
                    url: databaseSetting, tls: tls, poolSize: try setting(dbPoolSize, "DB_POOL_SIZE", 20),
                    connectTimeout: .seconds(try setting(dbConnectTimeout, "DB_CONNECT_TIMEOUT", 10)),
                    queryTimeout: .seconds(try setting(dbQueryTimeout, "DB_QUERY_TIMEOUT", 10)))
                let postgres = PostgresStorage(configuration: configuration, logger: Logger(label: "stampd.db"))
                // A database that is down at start is waited for (logged, with backoff), not a crash.
                try await postgres.waitUntilReachable()
                db = postgres
            } else {
                let checkpointPages = try setting(dbCheckpointPages, "DB_CHECKPOINT_PAGES", Database.checkpointPages)
                guard checkpointPages >= 1 else { throw ValidationError("--db-checkpoint-pages must be at least 1") }
                db = try Database(path: databaseSetting, readers: try setting(dbReaders, "DB_READERS", 2),
                                  checkpointPages: checkpointPages, logger: Logger(label: "stampd.db"))
            }
            let applied = try await db.migrate(folder: migrationsPath + "/" + db.engine)
            logger.info("database ready", metadata: [
                "database.engine": "\(db.engine)", "database": "\(db.location)", "migrations.path": "\(migrationsPath)",
                "migrations.applied": "\(applied.map(\.name))"])
        } catch let error as ValidationError {
            throw error
        } catch let error as PostgresConfigurationError {
            throw ValidationError("--database: \(error)")
        } catch let error as MigrationError {
            logger.critical("refusing to start: migrations do not match the database", metadata: ["error": "\(error)"])
            throw ExitCode(3)
        } catch {
            logger.critical("refusing to start: the database cannot be opened", metadata: ["error": "\(error)"])
            throw ExitCode(2)
        }

        let fast = insecureFastPasswordHashing || env["STAMPD_INSECURE_FAST_PASSWORD_HASHING"] == "1"
        if fast { logger.warning("password hashing is set to the insecure fast cost: for tests and benchmarks only") }
        let hasher = PasswordHasher(cost: fast ? .insecureFast : .standard,
                                    threads: try setting(hashThreads, "HASH_THREADS", 2),
                                    maximumWaiting: try setting(hashQueue, "HASH_QUEUE", 16))
        let hub = EventHub(maximumPerAccount: try setting(maxPollsPerAccount, "MAX_POLLS_PER_ACCOUNT", 16),
                           maximumTotal: try setting(maxPolls, "MAX_POLLS", 19_000))
        var settings = StampSettings()
        settings.eventRetention = TimeInterval(try setting(eventRetentionDays, "EVENT_RETENTION_DAYS", 7)) * 86_400
        let retentionSeconds = try setting(eventRetentionSeconds, "EVENT_RETENTION_SECONDS", 0)  // 0: the days
        guard retentionSeconds >= 0 else { throw ValidationError("--event-retention-seconds must be 0 or more") }
        guard settings.eventRetention >= 86_400 || retentionSeconds > 0 else {
            throw ValidationError("--event-retention-days must be at least 1")
        }
        if retentionSeconds > 0 { settings.eventRetention = TimeInterval(retentionSeconds) }
        let pruneSeconds = try setting(pruneInterval, "PRUNE_INTERVAL", 60)
        guard pruneSeconds >= 1 else { throw ValidationError("--prune-interval must be at least 1") }
        settings.passwordChecksPerAddressPerMinute = try setting(signInsPerAddress, "SIGN_INS_PER_ADDRESS",
                                                                 settings.passwordChecksPerAddressPerMinute)
        settings.passwordChecksInFlightPerAddress = try setting(signInsAtOncePerAddress, "SIGN_INS_AT_ONCE_PER_ADDRESS",
                                                                settings.passwordChecksInFlightPerAddress)
        settings.signUpsPerAddressPerHour = try setting(signUpsPerAddress, "SIGN_UPS_PER_ADDRESS", settings.signUpsPerAddressPerHour)
        settings.limits.pendingRequestsPerCustomerPerStore = try setting(
            pendingRequestsPerCustomer, "PENDING_REQUESTS_PER_CUSTOMER", settings.limits.pendingRequestsPerCustomerPerStore)
        settings.limits.requestsPerCustomerPerStorePerHour = try setting(
            requestsPerCustomerPerHour, "REQUESTS_PER_CUSTOMER_PER_HOUR", settings.limits.requestsPerCustomerPerStorePerHour)
        switch try setting(newStoreLimits, "NEW_STORE_LIMITS", "cafe") {
        case "cafe": settings.newStoreRules = .cafe
        case "off": settings.newStoreRules = .off
        case let other: throw ValidationError("--new-store-limits must be cafe or off, not \(other)")
        }
        for (name, value) in [("hash-queue", hasher.maximumWaiting), ("sign-ins-per-address", settings.passwordChecksPerAddressPerMinute),
                              ("sign-ins-at-once-per-address", settings.passwordChecksInFlightPerAddress),
                              ("sign-ups-per-address", settings.signUpsPerAddressPerHour),
                              ("pending-requests-per-customer", settings.limits.pendingRequestsPerCustomerPerStore),
                              ("requests-per-customer-per-hour", settings.limits.requestsPerCustomerPerStorePerHour)] where value < 1 {
            throw ValidationError("--\(name) must be at least 1")
        }
        // The wall clock, never run backwards: a step back is caught up slowly (ForwardClock).
        let clockLogger = Logger(label: "stampd.clock")
        let clock = ForwardClock(stepped: { seconds in
            Counter(label: "stampd_clock_steps_total", dimensions: [("direction", seconds < 0 ? "back" : "forward")]).increment()
            if seconds < 0 {
                clockLogger.warning("the wall clock stepped back; stampd's clock runs slow until it has caught up",
                                    metadata: ["seconds": "\(-seconds)", "catch_up.hours": "\(-seconds / ForwardClock.catchUpRate / 3600)"])
            } else {
                clockLogger.warning("the wall clock stepped forward; followed", metadata: ["seconds": "\(seconds)"])
            }
        })
        let service = StampService(database: db, hub: hub, hasher: hasher, clock: clock, settings: settings,
                                   logger: Logger(label: "stampd.core"))
        if !(ignoreRecordedTime || env["STAMPD_IGNORE_RECORDED_TIME"] == "1") {
            do {
                if let newest = try await service.newestRecordedTime() { clock.notBefore(newest) }
            } catch {
                logger.warning("could not read the newest recorded time; the clock starts from the wall clock",
                               metadata: ["error": "\(error)"])
            }
        }
        try await service.prepareEventHub()

        var server = ServerConfiguration()
        server.host = try setting(host, "HOST", "127.0.0.1")
        server.port = try setting(port, "PORT", 8080)
        server.limits.maximumBodyBytes = try setting(maxBodyBytes, "MAX_BODY_BYTES", server.limits.maximumBodyBytes)
        server.limits.maximumHeaderBytes = try setting(maxHeaderBytes, "MAX_HEADER_BYTES", server.limits.maximumHeaderBytes)
        server.limits.idleTimeout = .seconds(Int64(try setting(idleTimeout, "IDLE_TIMEOUT", 60)))
        server.limits.requestTimeout = .seconds(Int64(try setting(requestTimeout, "REQUEST_TIMEOUT", 10)))
        server.maximumConnections = try setting(maxConnections, "MAX_CONNECTIONS", server.maximumConnections)
        do {
            server.trustedProxies = try TrustedProxies(parsing: try setting(trustedProxies, "TRUSTED_PROXIES", ""))
        } catch {
            throw ValidationError("--trusted-proxies: \(error)")
        }
        // Connections past the descriptor limit would fail at accept; keep room for the
        // database files, the listening socket and the logs.
        var limit = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < UInt64(Int32.max) {
            let room = Int(limit.rlim_cur) - 64
            if server.maximumConnections > room {
                logger.warning("lowering the connection cap to fit the file-descriptor limit", metadata: [
                    "connections.requested": "\(server.maximumConnections)", "connections.cap": "\(max(room, 1))",
                    "fd.limit": "\(limit.rlim_cur)"])
                server.maximumConnections = max(room, 1)
            }
        }
        server.shutdownGracePeriod = .seconds(Int64(try setting(shutdownGrace, "SHUTDOWN_GRACE", 10)))

        let atWork = try setting(maxRequestsAtWork, "MAX_REQUESTS_AT_WORK", 256)
        guard atWork >= 0 else { throw ValidationError("--max-requests-at-work must be 0 or more") }
        let responder = Application.responder(service: service, gate: atWork > 0 ? AdmissionGate(limit: atWork) : nil,
                                              logger: Logger(label: "stampd.http"))
        let http = HTTPServer(configuration: server, responder: responder, hub: hub, logger: Logger(label: "stampd.http"))
        var metricsServer = ServerConfiguration()
        metricsServer.host = try setting(metricsHost, "METRICS_HOST", "127.0.0.1")
        metricsServer.port = try setting(metricsPort, "METRICS_PORT", 9464)
        metricsServer.maximumConnections = 64
        metricsServer.shutdownGracePeriod = .seconds(1)
        metricsServer.readyMessage = "metrics served"
        let metrics = HTTPServer(configuration: metricsServer,
                                 responder: Application.metricsResponder(metricsText: { registry.emitToString() },
                                                                         logger: Logger(label: "stampd.metrics")),
                                 hub: EventHub(maximumPerAccount: 0, maximumTotal: 0), logger: Logger(label: "stampd.metrics"))
        let group = ServiceGroup(
            services: [Housekeeper(service: service, pruneInterval: .seconds(pruneSeconds)), InstanceFeed(service: service), http, metrics],
            gracefulShutdownSignals: [.sigterm, .sigint],
            logger: logger)
        try await group.run()
        hasher.shutdown()
        await db.close()
        logger.info("database closed; exiting")
    }

    /// A folder that works for `swift run` from any directory, for the installed binary and for
    /// the docker image, in that order of preference after the flag and the variable.
    static func defaultMigrationsFolder() -> String {
        let fileManager = FileManager.default
        let executable = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let candidates = [
            URL(fileURLWithPath: fileManager.currentDirectoryPath).appendingPathComponent("migrations"),
            source.appendingPathComponent("migrations"),
            executable.appendingPathComponent("migrations"),
            executable.appendingPathComponent("../share/stampd/migrations"),
        ]
        for candidate in candidates where fileManager.fileExists(atPath: candidate.appendingPathComponent("sqlite/0001_initial.sql").path) {
            return candidate.standardizedFileURL.path
        }
        return "./migrations"
    }
}
