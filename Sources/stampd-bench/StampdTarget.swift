// The stampd side: accounts and stores, parked owner polls, publish→deliver latency and the
// full request → approve flow.
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

struct BenchAccount: Sendable {
    var id: String
    var token: String
    var storeId: String?
    var auth: HTTPHeaders { ["Authorization": "Bearer \(token)"] }
}

/// Creates accounts (and a store for each owner) over `conns`.
func createAccounts(role: String, count: Int, prefix: String, conns: [Conn], tally: Tally,
                    deadline: Double) async throws -> [BenchAccount] {
    let made = Mutex([BenchAccount?](repeating: nil, count: count))
    let owner = role == "owner"
    let (ok, failed) = try await runJobs(over: conns, count: count, deadline: deadline) { index, conn, done in
        let body = #"{"role":"\#(role)","login":"\#(prefix)-\#(index)","password":"bench-password","name":"\#(role) \#(index)"}"#
        conn.request(.POST, "/v1/accounts", body: ByteBuffer(string: body)) { result in
            guard case .success(let answer) = result, answer.status == 201,
                  let token = stringValue(#""token":""#, in: answer.body),
                  let id = stringValue(#""id":""#, in: answer.body) else {
                tally.error("POST /v1/accounts: \(describe(result))")
                return done(false)
            }
            var account = BenchAccount(id: id, token: token)
            guard owner else {
                made.withLock { $0[index] = account }
                return done(true)
            }
            let store = #"{"name":"Cafe \#(index)","rewardItem":"Americano"}"#
            conn.request(.POST, "/v1/stores", headers: account.auth, body: ByteBuffer(string: store)) { result in
                guard case .success(let answer) = result, answer.status == 201,
                      let storeId = stringValue(#""id":""#, in: answer.body) else {
                    tally.error("POST /v1/stores: \(describe(result))")
                    return done(false)
                }
                account.storeId = storeId
                made.withLock { $0[index] = account }
                done(true)
            }
        }
    }
    guard failed == 0, ok == count else { throw BenchError.unexpected("\(failed) of \(count) \(role) accounts failed") }
    return made.withLock { $0.compactMap { $0 } }
}

func describe(_ result: Result<HTTPAnswer, any Error>) -> String {
    switch result {
    case .success(let answer): return "HTTP \(answer.status) \(answer.text.prefix(200))"
    case .failure(let error): return "\(error)"
    }
}

/// One account's long poll, re-issued after every answer until stopped. Loop-confined,
/// except `sent`, which the customers' loop writes.
final class StampdPoller: @unchecked Sendable {
    let conn: Conn
    let account: BenchAccount
    let tally: Tally
    private let auth: HTTPHeaders
    private var cursor: String?
    private var running = false
    private(set) var outstanding = false
    /// When the requests addressed to this owner were sent (publish→deliver latency).
    let sent = Mutex<[UInt64]>([])
    var onEvents: ((_ events: [PolledEvent], _ at: UInt64) -> Void)?
    var timeoutAnswers = 0
    var answersWithEvents = 0

    static let timeout = 50
    /// The first poll's timeout is drawn from this range: polls parked together would otherwise
    /// all time out and park again together every 50 s, as clients parked at different moments
    /// do not (and a run that samples the parked count would catch the herd in between).
    static let firstTimeouts = 25...50
    private var polled = false

    init(conn: Conn, account: BenchAccount, tally: Tally) {
        self.conn = conn
        self.account = account
        self.tally = tally
        self.auth = account.auth
    }

    /// From any thread.
    func start() { conn.loop.execute { self.running = true; self.poll() } }

    /// From any thread: stops and closes the connection.
    func stop() {
        conn.loop.execute { self.stopOnLoop() }
    }

    /// On the connection's loop.
    func stopOnLoop() {
        running = false
        onEvents = nil
        conn.close()
    }

    private func poll() {
        guard running else { return }
        var uri = "/v1/events?timeout=\(polled ? Self.timeout : Int.random(in: Self.firstTimeouts))"
        polled = true
        if let cursor { uri += "&after=" + cursor }
        outstanding = true
        conn.request(.GET, uri, headers: auth) { [self] result in
            outstanding = false
            guard running else { return }
            switch result {
            case .success(let answer) where answer.status == 200:
                let at = nowNanos()
                let parsed = EventsAnswer(answer.body)
                guard let next = parsed.cursor else {
                    tally.error("GET /v1/events: no cursor in \(answer.text.prefix(200))")
                    running = false
                    return
                }
                if parsed.reset { tally.error("GET /v1/events answered reset") }
                cursor = next
                if parsed.events.isEmpty {
                    timeoutAnswers += 1
                } else {
                    answersWithEvents += 1
                    onEvents?(parsed.events, at)
                }
                poll()
            default:
                tally.error("GET /v1/events: \(describe(result))")
                running = false
            }
        }
    }
}

/// Everything measured against one stampd. `name` is the label of its result keys and log lines
/// (`stampd` by default; another, such as `postgres`, for a second stampd in the same results).
final class StampdBench: ParkingTarget, @unchecked Sendable {
    let name: String
    let parkedNoun = "parked"
    let connector: Connector
    /// stampd's metrics listeners (their own ports, not the API's): one per instance.
    let metrics: [Connector]
    var metricsConns: [Conn?]
    /// The first instance's process: its memory and threads are reported. `otherPids` are the
    /// other instances, whose CPU counts with it.
    let pid: Int32?
    let otherPids: [Int32]
    /// The PostgreSQL cluster behind this stampd, if it has one: its CPU counts as the server's.
    let database: DatabaseWatch?
    var postmaster: Int32? { database?.postmaster }
    let tally: Tally
    let results: Results
    let options: RunOptions
    var control: Conn!
    var setupConns: [Conn] = []
    var owners: [BenchAccount] = []
    var customers: [BenchAccount] = []
    var flowOwners: [BenchAccount] = []
    var flowCustomers: [BenchAccount] = []
    var overloadOwners: [BenchAccount] = []
    var overloadCustomers: [BenchAccount] = []
    /// Flows per second of the full-flow phase: the overload phase offers a multiple of it.
    var sustainedFlowsPerSecond = 0.0
    /// Approvals answered 200 in every phase: the database must hold at least as many.
    var approvalsAnswered = 0
    var pollers: [StampdPoller] = []
    var baseline: Memory?
    var lastParked: Memory?

    init(label: String = "stampd", connector: Connector, metrics: [Connector], pid: Int32?, otherPids: [Int32] = [],
         database: DatabaseWatch? = nil, results: Results, options: RunOptions) {
        self.name = label
        self.tally = Tally(name: label)
        self.database = database
        self.connector = connector
        self.metrics = metrics
        self.metricsConns = metrics.map { _ in nil }
        self.pid = pid
        self.otherPids = otherPids
        self.results = results
        self.options = options
    }

    /// On the control connection, opened again when the server closed it (idle timeout).
    func get(_ uri: String, headers: HTTPHeaders = HTTPHeaders()) async throws -> HTTPAnswer {
        do {
            return try await wait(control.future(.GET, uri, headers: headers), seconds: 30, what: "GET \(uri)")
        } catch BenchError.closed {
            control = try await connector.connect().get()
            return try await wait(control.future(.GET, uri, headers: headers), seconds: 30, what: "GET \(uri)")
        }
    }

    /// Every instance's /metrics, as text (an instance that did not answer 200 is left out).
    func metricsTexts() async throws -> [String] {
        var texts: [String] = []
        for index in metrics.indices {
            if metricsConns[index] == nil { metricsConns[index] = try await metrics[index].connect().get() }
            let answer: HTTPAnswer
            do {
                answer = try await wait(metricsConns[index]!.future(.GET, "/metrics"), seconds: 30, what: "GET /metrics")
            } catch BenchError.closed {
                metricsConns[index] = try await metrics[index].connect().get()
                answer = try await wait(metricsConns[index]!.future(.GET, "/metrics"), seconds: 30, what: "GET /metrics")
            }
            if answer.status == 200 { texts.append(answer.text) }
        }
        return texts
    }

    /// The polls parked on every instance.
    func parkedOnServer() async throws -> Int {
        // The gauge appears once the first poll parks.
        try await metricsTexts().compactMap { prometheusValue($0, name: "stampd_parked_polls") }.reduce(0) { $0 + Int($1) }
    }

    /// The disk's share, as stampd measured it: its commit and (SQLite) WAL sync histograms.
    private func diskBuckets() async throws -> (commit: [(bound: Double, count: Double)], sync: [(bound: Double, count: Double)]) {
        let texts = try await metricsTexts()
        return (prometheusBuckets(texts, name: "stampd_db_commit_seconds", selector: "engine="),
                prometheusBuckets(texts, name: "stampd_sqlite_sync_seconds", selector: "file=\"wal\""))
    }

    /// The CPU time of every instance.
    func serverCPU() -> Double? { cpuSeconds(pids: (pid.map { [$0] } ?? []) + otherPids) }

    // MARK: Setup

    func setUp() async throws {
        let (controlConns, controlFailures) = await connector.connectMany(1)
        guard let first = controlConns.first else { throw BenchError.unexpected("cannot connect to stampd: \(controlFailures)") }
        control = first
        let health = try await get("/healthz")
        guard health.status == 200 else { throw BenchError.unexpected("stampd /healthz: HTTP \(health.status)") }

        let (conns, failures) = await connector.connectMany(options.setupConnections)
        guard failures.isEmpty else { throw BenchError.unexpected("setup connections failed: \(failures.prefix(3))") }
        setupConns = conns
        let nonce = String(UInt32.random(in: 0...UInt32.max), radix: 36)
        // Phase (a) parks up to the largest level; the latency phase parks its own when (a) is skipped.
        let ownersNeeded = max(options.levels.max() ?? 0, options.latencyParked)
        let started = nowNanos()
        owners = try await createAccounts(role: "owner", count: ownersNeeded, prefix: "o\(nonce)", conns: conns,
                                          tally: tally, deadline: 600)
        let ownerSeconds = Double(nowNanos() - started) / 1e9
        log(String(format: "%@: %d owners with stores in %.1f s (%.0f accounts+stores/s)", name, owners.count, ownerSeconds,
                   Double(owners.count) / ownerSeconds))
        results.set("setup.\(name).owner_setup_per_s", Double(owners.count) / ownerSeconds)
        customers = try await createAccounts(role: "customer", count: options.customers, prefix: "c\(nonce)", conns: conns,
                                             tally: tally, deadline: 120)
        if options.flowSeconds > 0 && options.flowPairs > 0 {
            flowOwners = try await createAccounts(role: "owner", count: options.flowPairs, prefix: "fo\(nonce)",
                                                  conns: conns, tally: tally, deadline: 120)
            flowCustomers = try await createAccounts(role: "customer", count: options.flowPairs, prefix: "fc\(nonce)",
                                                     conns: conns, tally: tally, deadline: 120)
        }
        if options.overloadSeconds > 0 && options.overloadPairs > 0 {
            overloadOwners = try await createAccounts(role: "owner", count: options.overloadPairs, prefix: "vo\(nonce)",
                                                      conns: conns, tally: tally, deadline: 300)
            overloadCustomers = try await createAccounts(role: "customer", count: options.overloadPairs, prefix: "vc\(nonce)",
                                                         conns: conns, tally: tally, deadline: 300)
        }
    }

    // MARK: (a) parked capacity and memory: parkLevels() is shared, in ParkingTarget

    func park(upTo level: Int) async throws {
        try await park(upTo: level, record: true)
    }

    /// Parks polls until `level` are parked; `record` writes phase (a)'s figures of the step.
    func park(upTo level: Int, record: Bool) async throws {
        let adding = level - pollers.count
        guard adding > 0 else { return }
        let started = nowNanos()
        let (conns, failures) = await connector.connectMany(adding, concurrency: options.connectConcurrency)
        for failure in failures.prefix(5) { tally.error("connect: \(failure)") }
        if failures.count > 5 { tally.error("connect: \(failures.count - 5) more connection failures") }
        var fresh: [StampdPoller] = []
        for (offset, conn) in conns.enumerated() {
            let poller = StampdPoller(conn: conn, account: owners[pollers.count + offset], tally: tally)
            fresh.append(poller)
        }
        pollers += fresh
        // What the connections cost before any request, then what the parked polls add.
        var idle: Memory?
        if record, let pid {
            await sleep(seconds: options.settleSeconds)
            idle = Memory.read(pid)
        }
        // Start in slices so the server's accept and first reads are not one burst of thousands.
        for slice in stride(from: 0, to: fresh.count, by: 500) {
            for poller in fresh[slice..<min(slice + 500, fresh.count)] { poller.start() }
            await Task.yield()
        }
        let deadline = nowNanos() + 120_000_000_000
        var parked = 0
        while nowNanos() < deadline {
            parked = try await parkedOnServer()
            if parked >= pollers.count { break }
            await sleep(seconds: 0.1)
        }
        let seconds = Double(nowNanos() - started) / 1e9
        log(String(format: "%@: parked %d of %d in %.1f s", name, parked, level, seconds))
        if record { results.set("a.\(name).\(level).park_seconds", seconds) }
        if parked < pollers.count {
            tally.error("only \(parked) of \(pollers.count) polls parked within 120 s")
        }
        if let pid, let idle, let before = lastParked ?? baseline {
            await sleep(seconds: options.settleSeconds)
            if let now = Memory.read(pid) {
                let connection = Double(idle.rss - before.rss) * 1024 / Double(conns.count)
                let poll = Double(now.rss - idle.rss) * 1024 / Double(conns.count)
                log(String(format: "%@: the %d new connections: %.0f bytes each while idle, then %.0f more each once parked", name,
                           conns.count, connection, poll))
                results.set("a.\(name).\(level).idle_connection_bytes", connection)
                results.set("a.\(name).\(level).poll_on_connection_bytes", poll)
            }
        }
    }

    /// Keeps the first `count` pollers, closes the rest.
    func trim(to count: Int) async throws {
        guard pollers.count > count else { return }
        for poller in pollers[count...] { poller.stop() }
        pollers.removeLast(pollers.count - count)
        let deadline = nowNanos() + 30_000_000_000
        while nowNanos() < deadline {
            if try await parkedOnServer() <= count { break }
            await sleep(seconds: 0.1)
        }
    }

    // MARK: (b) publish → deliver latency

    func latency() async throws {
        guard options.latencySeconds > 0 else { return }
        if pollers.count < options.latencyParked && options.latencySeconds > 0 {
            // Phase (a) was skipped or stopped below this count: park the latency phase's owners now.
            await waitForQuiet(serverPid: pid, postmaster: postmaster, threshold: options.quietThreshold,
                               maxSeconds: options.quietWait, label: name)
            try await park(upTo: min(options.latencyParked, owners.count), record: false)
        }
        let parkedCount = min(options.latencyParked, pollers.count)
        try await trim(to: parkedCount)
        guard parkedCount > 0 else { return }
        let owners = Array(pollers.prefix(parkedCount))
        let loop = connector.group.next()
        let (conns, failures) = await connector.connectMany(customers.count, loops: [loop])
        defer { conns.forEach { $0.close() } }
        guard failures.isEmpty else { throw BenchError.unexpected("customer connections failed: \(failures.prefix(3))") }
        let senders = zip(conns, customers).map { conn, customer in Sender(conn: conn, auth: customer.auth) }
        defer { for poller in owners { poller.conn.loop.execute { poller.onEvents = nil } } }
        let disk = try await diskBuckets()
        try await measured(label: "latency phase", prefix: "b.\(name)") { staged in
            try await self.latencyAttempt(owners: owners, senders: senders, loop: loop, into: staged)
        }
        // What the disk took meanwhile, from stampd's own histograms (over every attempt of the phase).
        let diskAfter = try await diskBuckets()
        for (key, before, after) in [("commit", disk.commit, diskAfter.commit), ("sync", disk.sync, diskAfter.sync)] {
            for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
                if let seconds = histogramQuantile(q, before: before, after: after) {
                    results.set("b.\(name).\(key)_\(label)_ms", seconds * 1000)
                }
            }
        }
    }

    /// One run of the latency phase; returns the cores other processes used meanwhile.
    private func latencyAttempt(owners: [StampdPoller], senders: [Sender], loop: any EventLoop,
                                into staged: Staged) async throws -> Double {
        let latencies = Latencies()
        let posts = Latencies()
        let delivered = Atomic<Int>(0)
        for poller in owners {
            poller.sent.withLock { $0.removeAll() }
            poller.conn.loop.execute {
                poller.onEvents = { [unowned poller] events, at in
                    for event in events where event.kind == .created {
                        let sent = poller.sent.withLock { $0.isEmpty ? nil : $0.removeFirst() }
                        guard let sent else { continue }
                        latencies.record(at &- sent)
                        delivered.add(1, ordering: .relaxed)
                    }
                }
            }
        }
        let total = Int(Double(options.rate) * options.latencySeconds)
        let tally = self.tally
        let body = ByteBuffer(string: #"{"kind":"stamp","count":1}"#)
        let dispatcher = Dispatcher(loop: loop, senders: senders, rate: Double(options.rate), total: total) { index, sender, done in
            let owner = owners[index % owners.count]
            let uri = "/v1/stores/\(owner.account.storeId!)/requests"
            let sent = nowNanos()
            owner.sent.withLock { $0.append(sent) }
            sender.conn.request(.POST, uri, headers: sender.auth, body: body) { result in
                guard case .success(let answer) = result, answer.status == 201 else {
                    tally.error("POST \(uri): \(describe(result))")
                    // Nothing will be delivered for it: later deliveries to this owner match later sends.
                    owner.sent.withLock { queue in queue.firstIndex(of: sent).map { _ = queue.remove(at: $0) } }
                    return done(false)
                }
                posts.record(nowNanos() &- sent)
                done(true)
            }
        }
        log("\(name): \(total) stamp requests at \(options.rate)/s to \(owners.count) parked owners")
        let statsBefore = database?.snapshot()
        let cpuBefore = serverCPU()
        let databaseBefore = postmaster.flatMap { ClusterCPU.read(postmaster: $0) }
        let threadsBefore = pid.map { ThreadTimes.read($0) }
        let clientCPUBefore = cpuSecondsSelf()
        let watch = CPUWatch(pid: pid, others: otherPids, postmaster: postmaster)
        let outcome = try await dispatcher.run(deadline: options.latencySeconds * 3 + 30)
        let (cpuText, other) = watch.record(staged, "b.\(name)")
        let databaseAfter = postmaster.flatMap { ClusterCPU.read(postmaster: $0) }
        let statsAfter = database?.snapshot()
        log("\(name): latency phase " + cpuText)
        if let pid, let threadsBefore {
            let threads = ThreadTimes.read(pid).busiest(since: threadsBefore)
            log("\(name): server threads during the latency phase (cores): \(threads)")
            staged.set("b.\(name).threads", threads)
        }
        let waitUntil = nowNanos() + 10_000_000_000
        while delivered.load(ordering: .relaxed) < outcome.ok && nowNanos() < waitUntil { await sleep(seconds: 0.05) }
        let postSummary = posts.summary()
        let summary = latencies.summary()
        log("\(name): POST /v1/stores/{id}/requests answered: \(postSummary)")
        log("\(name): publish→deliver at \(owners.count) parked: \(summary); sent \(outcome.ok) ok, \(outcome.failed) failed, most queued \(outcome.maxQueued)")
        log("\(name): slowest seconds of publish→deliver: \(latencies.worstSeconds())")
        log("\(name): slowest seconds of the POSTs: \(posts.worstSeconds())")
        if delivered.load(ordering: .relaxed) < outcome.ok {
            tally.error("\(outcome.ok - delivered.load(ordering: .relaxed)) created requests never reached their owner's poll")
        }
        staged.set("b.\(name).post_p50_ms", postSummary.p50)
        staged.set("b.\(name).post_p99_ms", postSummary.p99)
        staged.set("b.\(name).post_max_ms", postSummary.max)
        staged.set("b.\(name).most_queued", outcome.maxQueued)
        staged.set("b.\(name).parked", owners.count)
        staged.set("b.\(name).sent", outcome.ok)
        staged.set("b.\(name).delivered", summary.count)
        staged.set("b.\(name).p50_ms", summary.p50)
        staged.set("b.\(name).p99_ms", summary.p99)
        staged.set("b.\(name).max_ms", summary.max)
        staged.set("b.\(name).mean_ms", summary.mean)
        staged.set("b.\(name).achieved_rate", outcome.achievedRate)
        if let before = cpuBefore, let after = serverCPU() {
            staged.set("b.\(name).server_cpu_per_request_us", (after - before) / Double(max(outcome.ok, 1)) * 1e6)
        }
        if let before = databaseBefore, let after = databaseAfter {
            staged.set("b.\(name).db_cpu_per_request_us", (after.total - before.total) / Double(max(outcome.ok, 1)) * 1e6)
            staged.set("b.\(name).db_processes", after.processes)
        }
        if let before = statsBefore, let after = statsAfter {
            after.record(since: before, units: outcome.ok, unit: "stamp request", prefix: "b.\(name)", label: name, into: staged)
        }
        staged.set("b.\(name).client_cpu_per_request_us", (cpuSecondsSelf() - clientCPUBefore) / Double(max(outcome.ok, 1)) * 1e6)
        return other
    }

    /// Runs a timed phase after waiting for a quiet machine; when other processes still took more
    /// than `noisyThreshold` cores meanwhile, runs it again (at most `noisyRetries` times) and keeps
    /// the quietest attempt's figures.
    func measured(label: String, prefix: String, _ attempt: (Staged) async throws -> Double) async throws {
        try await measuredPhase(label: name, phase: label, prefix: prefix, pid: pid, postmaster: postmaster, options: options,
                                results: results, attempt)
    }

    // MARK: (c) full flow

    func flows() async throws {
        guard options.flowSeconds > 0, !flowOwners.isEmpty else { return }
        if !options.flowKeepParked { try await trim(to: 0) }
        let flowPairs = try await parkedPairs(owners: flowOwners, customers: flowCustomers)
        defer { for pair in flowPairs { pair.stop() } }
        try await measured(label: "full-flow phase", prefix: "c.\(name)") { staged in
            try await self.flowAttempt(flowPairs, into: staged)
        }
    }

    /// A pair per owner and customer, its four connections on one client loop (pair i on loop
    /// i mod threads), returned once both polls of every pair are parked.
    func parkedPairs(owners: [BenchAccount], customers: [BenchAccount]) async throws -> [FlowPair] {
        let loops = (0..<options.threads).map { _ in connector.group.next() }
        let pairs = owners.count
        var placement: [any EventLoop] = []
        for pair in 0..<pairs { placement += Array(repeating: loops[pair % loops.count], count: 4) }
        let (conns, failures) = await connector.connectMany(pairs * 4, loops: placement)
        guard failures.isEmpty else {
            conns.forEach { $0.close() }
            throw BenchError.unexpected("flow connections failed: \(failures.prefix(3))")
        }
        var flowPairs: [FlowPair] = []
        for index in 0..<pairs {
            let ownerPoll = StampdPoller(conn: conns[4 * index], account: owners[index], tally: tally)
            let customerPoll = StampdPoller(conn: conns[4 * index + 2], account: customers[index], tally: tally)
            flowPairs.append(FlowPair(ownerPoll: ownerPoll, ownerAPI: conns[4 * index + 1], customerPoll: customerPoll,
                                      customerAPI: conns[4 * index + 3], tally: tally))
        }
        for pair in flowPairs { pair.ownerPoll.start(); pair.customerPoll.start() }
        let deadline = nowNanos() + 60_000_000_000
        while try await parkedOnServer() < pollers.count + 2 * pairs && nowNanos() < deadline { await sleep(seconds: 0.1) }
        return flowPairs
    }

    private func flowAttempt(_ flowPairs: [FlowPair], into staged: Staged) async throws -> Double {
        let pairs = flowPairs.count
        log("\(name): \(pairs) owner/customer pairs parked; full flows for \(options.flowSeconds) s"
            + (pollers.isEmpty ? "" : " with \(pollers.count) other owners parked"))
        let state = FlowState(windowNanos: UInt64(options.flowSeconds * 1e9))
        let statsBefore = database?.snapshot()
        let cpuBefore = serverCPU()
        let databaseBefore = postmaster.flatMap { ClusterCPU.read(postmaster: $0) }
        let threadsBefore = pid.map { ThreadTimes.read($0) }
        let clientCPUBefore = cpuSecondsSelf()
        let watch = CPUWatch(pid: pid, others: otherPids, postmaster: postmaster)
        state.begin()
        for pair in flowPairs { pair.conn.loop.execute { pair.begin(state) } }
        await sleep(seconds: options.flowSeconds)
        let (cpuText, other) = watch.record(staged, "c.\(name)")
        let cpuAfter = serverCPU()
        let databaseAfter = postmaster.flatMap { ClusterCPU.read(postmaster: $0) }
        let completedInWindow = state.completed.load(ordering: .relaxed)
        let statsAfter = database?.snapshot()
        log("\(name): full-flow phase " + cpuText)
        let clientCPU = cpuSecondsSelf() - clientCPUBefore
        if let pid, let threadsBefore {
            let threads = ThreadTimes.read(pid).busiest(since: threadsBefore)
            log("\(name): server threads during the full flows (cores): \(threads)")
            staged.set("c.\(name).threads", threads)
        }
        // Flows in progress get a bounded time to finish; they do not count.
        let settle = nowNanos() + 15_000_000_000
        while state.inProgress.load(ordering: .relaxed) > 0 && nowNanos() < settle { await sleep(seconds: 0.05) }
        if state.inProgress.load(ordering: .relaxed) > 0 {
            tally.error("\(state.inProgress.load(ordering: .relaxed)) flows did not finish within 15 s after the window")
        }
        let completed = state.completed.load(ordering: .relaxed)
        let perSecond = Double(completed) / options.flowSeconds
        sustainedFlowsPerSecond = perSecond
        approvalsAnswered += state.approvalsAnswered.load(ordering: .relaxed)
        let summary = state.latencies.summary()
        log(String(format: "%@: %d full flows in %.0f s = %.0f flows/s; flow latency %@", name, completed,
                   options.flowSeconds, perSecond, summary.description))
        staged.set("c.\(name).pairs", pairs)
        staged.set("c.\(name).flows", completed)
        staged.set("c.\(name).refused_503", state.refused.load(ordering: .relaxed))
        staged.set("c.\(name).flows_per_s", perSecond)
        staged.set("c.\(name).flow_p50_ms", summary.p50)
        staged.set("c.\(name).flow_p99_ms", summary.p99)
        staged.set("c.\(name).flow_max_ms", summary.max)
        staged.set("c.\(name).parked_bystanders", pollers.count)
        if let before = cpuBefore, let after = cpuAfter {
            staged.set("c.\(name).server_cpu_cores", (after - before) / options.flowSeconds)
            staged.set("c.\(name).server_cpu_per_flow_us", (after - before) / Double(max(completed, 1)) * 1e6)
        }
        if let before = databaseBefore, let after = databaseAfter {
            let seconds = after.total - before.total
            staged.set("c.\(name).db_cpu_cores", seconds / options.flowSeconds)
            staged.set("c.\(name).db_cpu_per_flow_us", seconds / Double(max(completed, 1)) * 1e6)
            staged.set("c.\(name).db_backend_cpu_per_flow_us", (after.backends - before.backends) / Double(max(completed, 1)) * 1e6)
            staged.set("c.\(name).db_processes", after.processes)
            if let stampdBefore = cpuBefore, let stampdAfter = cpuAfter {
                staged.set("c.\(name).server_and_db_cpu_per_flow_us",
                           (stampdAfter - stampdBefore + seconds) / Double(max(completed, 1)) * 1e6)
            }
            log(String(format: "%@: PostgreSQL's %d processes used %.2f cores, %.0f µs per flow (client backends %.0f µs)",
                       name, after.processes, seconds / options.flowSeconds, seconds / Double(max(completed, 1)) * 1e6,
                       (after.backends - before.backends) / Double(max(completed, 1)) * 1e6))
        }
        if let before = statsBefore, let after = statsAfter {
            // Counted at the end of the window, as the CPU is: the flows finished by then.
            after.record(since: before, units: completedInWindow, unit: "flow", prefix: "c.\(name)", label: name, into: staged)
        }
        staged.set("c.\(name).client_cpu_cores", clientCPU / options.flowSeconds)
        return other
    }

    /// Approved requests and pending ones, as counted by the client (checked against the database by run.sh).
    func finish() {
        for poller in pollers { poller.stop() }
        pollers.removeAll()
        setupConns.forEach { $0.close() }
        control?.close()
        metricsConns.forEach { $0?.close() }
    }
}

/// One customer connection of the latency phase. Loop-confined.
final class Sender: @unchecked Sendable {
    let conn: Conn
    let auth: HTTPHeaders
    init(conn: Conn, auth: HTTPHeaders) {
        self.conn = conn
        self.auth = auth
    }
}

/// Sends `total` requests at a fixed rate (open loop, scheduled by intended start time) over
/// idle senders, all on one event loop. Requests wait in a queue when every sender is busy.
final class Dispatcher<S: AnyObject & Sendable>: @unchecked Sendable {
    typealias Send = (_ index: Int, _ sender: S, _ done: @escaping (Bool) -> Void) -> Void
    let loop: any EventLoop
    private var idle: [S]
    private let rate: Double
    private let total: Int
    private let send: Send
    private var issued = 0
    private var answered = 0
    private var ok = 0
    private var failed = 0
    private var maxQueued = 0
    private var start: UInt64 = 0
    private var lastSend: UInt64 = 0
    private var timer: RepeatedTask?
    private let promise: EventLoopPromise<Outcome>

    struct Outcome: Sendable {
        var ok: Int
        var failed: Int
        var maxQueued: Int
        var achievedRate: Double
    }

    init(loop: any EventLoop, senders: [S], rate: Double, total: Int, send: @escaping Send) {
        self.loop = loop
        self.idle = senders
        self.rate = rate
        self.total = total
        self.send = send
        self.promise = loop.makePromise(of: Outcome.self)
    }

    func run(deadline seconds: Double) async throws -> Outcome {
        loop.execute {
            self.start = nowNanos()
            self.timer = self.loop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(1)) { _ in self.tick() }
        }
        do {
            return try await wait(promise.futureResult, seconds: seconds, what: "\(total) requests at \(rate)/s")
        } catch {
            loop.execute { self.timer?.cancel() }
            throw error
        }
    }

    private func tick() {
        let due = min(total, Int(Double(nowNanos() - start) * rate / 1e9) + 1)
        while issued < due, let sender = idle.popLast() {
            let index = issued
            issued += 1
            lastSend = nowNanos()
            send(index, sender) { [self] success in
                if success { ok += 1 } else { failed += 1 }
                answered += 1
                idle.append(sender)
                if answered == total { finish() }
            }
        }
        maxQueued = max(maxQueued, due - issued)
        if issued == total { timer?.cancel() }
    }

    private func finish() {
        timer?.cancel()
        let seconds = Double(lastSend - start) / 1e9
        promise.succeed(Outcome(ok: ok, failed: failed, maxQueued: maxQueued,
                                achievedRate: seconds > 0 ? Double(total - 1) / seconds : Double(total)))
    }
}

/// Shared counters of the full-flow phase.
final class FlowState: Sendable {
    let completed = Atomic<Int>(0)
    let inProgress = Atomic<Int>(0)
    /// Writes answered 503 and sent again.
    let refused = Atomic<Int>(0)
    /// Open loop: stamp requests the server refused (503), ending their flow; those of them without Retry-After.
    let shed = Atomic<Int>(0)
    let shedWithoutRetryAfter = Atomic<Int>(0)
    /// Approvals answered 200, inside the window or after it.
    let approvalsAnswered = Atomic<Int>(0)
    let latencies = Latencies()
    /// Open loop: how long the admitted writes (201 and 200) and the refusals took to answer.
    let admitted = Latencies()
    let refusals = Latencies()
    private let window = Mutex<(start: UInt64, end: UInt64)>((0, 0))
    let windowNanos: UInt64

    init(windowNanos: UInt64) { self.windowNanos = windowNanos }

    func begin() {
        let now = nowNanos()
        window.withLock { $0 = (now, now + windowNanos) }
    }

    var end: UInt64 { window.withLock { $0.end } }
}

/// One owner with a store and one customer: the customer asks for a stamp, the owner's poll
/// hears of it and approves, both polls hear of the approval; then the next flow. All four
/// connections are on one event loop, so the pair needs no locks.
final class FlowPair: @unchecked Sendable {
    let ownerPoll: StampdPoller
    let ownerAPI: Conn
    let customerPoll: StampdPoller
    let customerAPI: Conn
    private var state = FlowState(windowNanos: 0)
    let tally: Tally
    var conn: Conn { ownerAPI }
    private var running = true
    private var active = false
    private var started: UInt64 = 0
    private var requestId: String?
    private var createdAnswer = false
    private var approvedAnswer = false
    private var ownerHeard = false
    private var customerHeard = false
    private var refusals = 0
    /// Open loop: where the pair goes once its flow ends (instead of starting the next one).
    var whenFree: ((FlowPair) -> Void)?
    private let createURI: String
    private let createBody = ByteBuffer(string: #"{"kind":"stamp","count":1}"#)

    init(ownerPoll: StampdPoller, ownerAPI: Conn, customerPoll: StampdPoller, customerAPI: Conn, tally: Tally) {
        self.ownerPoll = ownerPoll
        self.ownerAPI = ownerAPI
        self.customerPoll = customerPoll
        self.customerAPI = customerAPI
        self.tally = tally
        self.createURI = "/v1/stores/\(ownerPoll.account.storeId!)/requests"
        ownerPoll.onEvents = { [unowned self] events, _ in self.ownerEvents(events) }
        customerPoll.onEvents = { [unowned self] events, _ in self.customerEvents(events) }
    }

    /// Starts flows that count towards `state`, until its window ends. On the pair's loop.
    func begin(_ state: FlowState) {
        guard running, !active else { return }
        self.state = state
        start()
    }

    private func start() {
        guard running else { return }
        if nowNanos() >= state.end {
            whenFree?(self)
            return
        }
        active = true
        state.inProgress.add(1, ordering: .relaxed)
        started = nowNanos()
        requestId = nil
        createdAnswer = false
        approvedAnswer = false
        ownerHeard = false
        customerHeard = false
        refusals = 0
        create()
    }

    private func create() {
        guard running else { return }
        let sent = nowNanos()
        customerAPI.request(.POST, createURI, headers: customerPoll.account.auth, body: createBody) { [self] result in
            guard running else { return }
            if whenFree != nil, case .success(let answer) = result, answer.status == 503 {
                // Open loop: a refused request ends its flow, as a customer told "busy" would stop.
                state.refusals.record(nowNanos() &- sent)
                state.shed.add(1, ordering: .relaxed)
                if answer.headers.first(name: "Retry-After") == nil { state.shedWithoutRetryAfter.add(1, ordering: .relaxed) }
                active = false
                state.inProgress.add(-1, ordering: .relaxed)
                whenFree?(self)
                return
            }
            if refused(result, "POST \(createURI)", again: { self.create() }) { return }
            guard case .success(let answer) = result, answer.status == 201 else {
                return fail("POST \(createURI): \(describe(result))")
            }
            state.admitted.record(nowNanos() &- sent)
            createdAnswer = true
            check()
        }
    }

    private func approve(_ uri: String) {
        guard running else { return }
        let sent = nowNanos()
        ownerAPI.request(.POST, uri, headers: ownerPoll.account.auth) { [self] result in
            guard running else { return }
            if refused(result, "POST \(uri)", again: { self.approve(uri) }) { return }
            guard case .success(let answer) = result, answer.status == 200 else {
                return fail("POST \(uri): \(describe(result))")
            }
            state.admitted.record(nowNanos() &- sent)
            state.approvalsAnswered.add(1, ordering: .relaxed)
            approvedAnswer = true
            check()
        }
    }

    /// A 503 (the server gave up on a write, e.g. one that kept conflicting on PostgreSQL) is an
    /// error, but the write committed nothing: the pair sends it again after a few milliseconds,
    /// at most 20 times a flow, instead of stopping, so that one refusal does not take the pair
    /// out of the rest of the phase. The flow's latency includes the retries.
    private func refused(_ result: Result<HTTPAnswer, any Error>, _ what: String, again: @escaping () -> Void) -> Bool {
        guard case .success(let answer) = result, answer.status == 503 else { return false }
        refusals += 1
        state.refused.add(1, ordering: .relaxed)
        guard refusals <= 20 else {
            fail("\(what): \(describe(result)) (20 times in one flow)")
            return true
        }
        // Under overload (open loop) a refusal is the answer asked for, not an error.
        if whenFree == nil { tally.error("\(what): \(describe(result)) (sent again)") }
        conn.loop.assumeIsolated().scheduleTask(in: .milliseconds(Int64.random(in: 2...10))) { again() }
        return true
    }

    private func ownerEvents(_ events: [PolledEvent]) {
        for event in events {
            switch event.kind {
            case .created:
                guard active, requestId == nil, let id = event.requestId else {
                    return fail("owner: unexpected request.created")
                }
                requestId = id
                approve("/v1/requests/\(id)/approve")
            case .approved:
                guard active, event.requestId == requestId else { return fail("owner: unexpected request.approved") }
                ownerHeard = true
                check()
            case .other:
                fail("owner: unexpected event")
            }
        }
    }

    private func customerEvents(_ events: [PolledEvent]) {
        for event in events {
            guard event.kind == .approved, active, event.requestId == requestId else {
                return fail("customer: unexpected event")
            }
            customerHeard = true
            check()
        }
    }

    private func check() {
        guard active, createdAnswer, approvedAnswer, ownerHeard, customerHeard else { return }
        active = false
        let now = nowNanos()
        if now <= state.end {
            state.completed.add(1, ordering: .relaxed)
            state.latencies.record(now &- started)
        }
        state.inProgress.add(-1, ordering: .relaxed)
        if let whenFree { whenFree(self) } else { start() }
    }

    private func fail(_ message: String) {
        tally.error(message)
        if active { state.inProgress.add(-1, ordering: .relaxed) }
        active = false
        running = false
    }

    func stop() {
        conn.loop.execute {
            self.running = false
            self.ownerPoll.stopOnLoop()
            self.customerPoll.stopOnLoop()
            self.ownerAPI.close()
            self.customerAPI.close()
        }
    }
}
