// The reference: nginx + nchan, long-poll subscribers one per channel, a publisher location.
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// One long-poll subscriber of channel `c<channel>`, re-subscribing after every answer with
/// the If-Modified-Since / If-None-Match that nchan's last answer gave. Loop-confined, except `sent`.
final class NchanPoller: @unchecked Sendable {
    let conn: Conn
    let channel: Int
    let tally: Tally
    private let uri: String
    private var lastModified: String?
    private var etag: String?
    private var running = false
    let sent = Mutex<[UInt64]>([])
    var onMessage: ((_ at: UInt64) -> Void)?
    var timeoutAnswers = 0

    init(conn: Conn, channel: Int, tally: Tally) {
        self.conn = conn
        self.channel = channel
        self.tally = tally
        self.uri = "/sub/c\(channel)"
    }

    func start() { conn.loop.execute { self.running = true; self.poll() } }

    func stop() {
        conn.loop.execute {
            self.running = false
            self.onMessage = nil
            self.conn.close()
        }
    }

    private func poll() {
        guard running else { return }
        var headers = HTTPHeaders()
        if let lastModified { headers.add(name: "If-Modified-Since", value: lastModified) }
        if let etag { headers.add(name: "If-None-Match", value: etag) }
        conn.request(.GET, uri, headers: headers) { [self] result in
            guard running else { return }
            switch result {
            case .success(let answer) where answer.status == 200:
                let at = nowNanos()
                lastModified = answer.headers.first(name: "last-modified")
                etag = answer.headers.first(name: "etag")
                onMessage?(at)
                poll()
            case .success(let answer) where answer.status == 304 || answer.status == 408:
                timeoutAnswers += 1
                poll()
            default:
                tally.error("GET \(uri): \(describe(result))")
                running = false
            }
        }
    }
}

final class NchanBench: ParkingTarget, @unchecked Sendable {
    let name = "nchan"
    let parkedNoun = "subscribers"
    let connector: Connector
    let pid: Int32?
    let tally = Tally(name: "nchan")
    let results: Results
    let options: RunOptions
    var control: Conn!
    var pollers: [NchanPoller] = []
    var baseline: Memory?
    var lastParked: Memory?
    /// The size of a stampd request.created answer, so both servers carry the same payload.
    var payload = String(repeating: "x", count: 480)

    init(connector: Connector, pid: Int32?, results: Results, options: RunOptions) {
        self.connector = connector
        self.pid = pid
        self.results = results
        self.options = options
    }

    func get(_ uri: String) async throws -> HTTPAnswer {
        do {
            return try await wait(control.future(.GET, uri), seconds: 30, what: "GET \(uri)")
        } catch BenchError.closed {
            control = try await connector.connect().get()
            return try await wait(control.future(.GET, uri), seconds: 30, what: "GET \(uri)")
        }
    }

    func parkedOnServer() async throws -> Int { try await subscribersOnServer() }

    func subscribersOnServer() async throws -> Int {
        let answer = try await get("/nchan_status")
        guard answer.status == 200, let value = stubStatusValue(answer.text, name: "subscribers") else {
            throw BenchError.unexpected("nchan_stub_status: \(answer.status) \(answer.text.prefix(200))")
        }
        return Int(value)
    }

    func setUp() async throws {
        let (conns, failures) = await connector.connectMany(1)
        guard let first = conns.first else { throw BenchError.unexpected("cannot connect to nchan: \(failures)") }
        control = first
        _ = try await subscribersOnServer()
    }

    // MARK: (a) parked capacity and memory: parkLevels() is shared, in ParkingTarget

    func park(upTo level: Int) async throws {
        let adding = level - pollers.count
        guard adding > 0 else { return }
        let started = nowNanos()
        let (conns, failures) = await connector.connectMany(adding, concurrency: options.connectConcurrency)
        for failure in failures.prefix(5) { tally.error("connect: \(failure)") }
        var fresh: [NchanPoller] = []
        for (offset, conn) in conns.enumerated() {
            fresh.append(NchanPoller(conn: conn, channel: pollers.count + offset, tally: tally))
        }
        pollers += fresh
        var idle: Memory?
        if let pid {
            await sleep(seconds: options.settleSeconds)
            idle = Memory.read(pid)
        }
        for slice in stride(from: 0, to: fresh.count, by: 500) {
            for poller in fresh[slice..<min(slice + 500, fresh.count)] { poller.start() }
            await Task.yield()
        }
        let deadline = nowNanos() + 120_000_000_000
        var parked = 0
        while nowNanos() < deadline {
            parked = try await subscribersOnServer()
            if parked >= pollers.count { break }
            await sleep(seconds: 0.1)
        }
        let seconds = Double(nowNanos() - started) / 1e9
        log(String(format: "nchan: subscribed %d of %d in %.1f s", parked, level, seconds))
        results.set("a.nchan.\(level).park_seconds", seconds)
        if parked < pollers.count { tally.error("only \(parked) of \(pollers.count) subscribers parked within 120 s") }
        if let pid, let idle, let before = lastParked ?? baseline {
            await sleep(seconds: options.settleSeconds)
            if let now = Memory.read(pid) {
                let connection = Double(idle.rss - before.rss) * 1024 / Double(conns.count)
                let poll = Double(now.rss - idle.rss) * 1024 / Double(conns.count)
                log(String(format: "nchan: the %d new connections: %.0f bytes each while idle, then %.0f more each once subscribed",
                           conns.count, connection, poll))
                results.set("a.nchan.\(level).idle_connection_bytes", connection)
                results.set("a.nchan.\(level).poll_on_connection_bytes", poll)
            }
        }
    }

    // MARK: (b)

    func latency() async throws {
        let parkedCount = min(options.latencyParked, pollers.count)
        if pollers.count > parkedCount {
            for poller in pollers[parkedCount...] { poller.stop() }
            pollers.removeLast(pollers.count - parkedCount)
            let deadline = nowNanos() + 30_000_000_000
            while try await subscribersOnServer() > parkedCount && nowNanos() < deadline { await sleep(seconds: 0.1) }
        }
        guard parkedCount > 0 else { return }
        let subscribers = pollers
        let loop = connector.group.next()
        let (conns, failures) = await connector.connectMany(options.customers, loops: [loop])
        defer { conns.forEach { $0.close() } }
        guard failures.isEmpty else { throw BenchError.unexpected("publisher connections failed: \(failures.prefix(3))") }
        let senders = conns.map { Sender(conn: $0, auth: HTTPHeaders()) }
        defer { for poller in subscribers { poller.conn.loop.execute { poller.onMessage = nil } } }
        try await measuredPhase(label: "nchan", phase: "latency phase", prefix: "b.nchan", pid: pid, options: options,
                                results: results) { staged in
            try await self.latencyAttempt(subscribers: subscribers, senders: senders, loop: loop, into: staged)
        }
    }

    private func latencyAttempt(subscribers: [NchanPoller], senders: [Sender], loop: any EventLoop,
                                into staged: Staged) async throws -> Double {
        let latencies = Latencies()
        let posts = Latencies()
        let delivered = Atomic<Int>(0)
        for poller in subscribers {
            poller.sent.withLock { $0.removeAll() }
            poller.conn.loop.execute {
                poller.onMessage = { [unowned poller] at in
                    let sent = poller.sent.withLock { $0.isEmpty ? nil : $0.removeFirst() }
                    guard let sent else { return }
                    latencies.record(at &- sent)
                    delivered.add(1, ordering: .relaxed)
                }
            }
        }
        let total = Int(Double(options.rate) * options.latencySeconds)
        let body = ByteBuffer(string: payload)
        let tally = self.tally
        let dispatcher = Dispatcher(loop: loop, senders: senders, rate: Double(options.rate), total: total) { index, sender, done in
            let subscriber = subscribers[index % subscribers.count]
            let uri = "/pub/c\(subscriber.channel)"
            let sent = nowNanos()
            subscriber.sent.withLock { $0.append(sent) }
            sender.conn.request(.POST, uri, body: body) { result in
                guard case .success(let answer) = result, (200...202).contains(answer.status) else {
                    tally.error("POST \(uri): \(describe(result))")
                    return done(false)
                }
                posts.record(nowNanos() &- sent)
                done(true)
            }
        }
        log("nchan: \(total) publishes at \(options.rate)/s to \(subscribers.count) subscribers")
        let cpuBefore = pid.flatMap { cpuSeconds(pid: $0) }
        let clientCPUBefore = cpuSecondsSelf()
        let watch = CPUWatch(pid: pid)
        let outcome = try await dispatcher.run(deadline: options.latencySeconds * 3 + 30)
        let (cpuText, other) = watch.record(staged, "b.nchan")
        log("nchan: latency phase " + cpuText)
        let waitUntil = nowNanos() + 10_000_000_000
        while delivered.load(ordering: .relaxed) < outcome.ok && nowNanos() < waitUntil { await sleep(seconds: 0.05) }
        let postSummary = posts.summary()
        let summary = latencies.summary()
        log("nchan: POST /pub/<channel> answered: \(postSummary)")
        log("nchan: publish→deliver at \(subscribers.count) subscribers: \(summary); sent \(outcome.ok) ok, \(outcome.failed) failed, most queued \(outcome.maxQueued)")
        log("nchan: slowest seconds of publish→deliver: \(latencies.worstSeconds())")
        if delivered.load(ordering: .relaxed) < outcome.ok {
            tally.error("\(outcome.ok - delivered.load(ordering: .relaxed)) published messages never reached their subscriber")
        }
        staged.set("b.nchan.post_p50_ms", postSummary.p50)
        staged.set("b.nchan.post_p99_ms", postSummary.p99)
        staged.set("b.nchan.post_max_ms", postSummary.max)
        staged.set("b.nchan.most_queued", outcome.maxQueued)
        staged.set("b.nchan.parked", subscribers.count)
        staged.set("b.nchan.sent", outcome.ok)
        staged.set("b.nchan.delivered", summary.count)
        staged.set("b.nchan.p50_ms", summary.p50)
        staged.set("b.nchan.p99_ms", summary.p99)
        staged.set("b.nchan.max_ms", summary.max)
        staged.set("b.nchan.mean_ms", summary.mean)
        staged.set("b.nchan.achieved_rate", outcome.achievedRate)
        if let before = cpuBefore, let after = pid.flatMap({ cpuSeconds(pid: $0) }) {
            staged.set("b.nchan.server_cpu_per_request_us", (after - before) / Double(max(outcome.ok, 1)) * 1e6)
        }
        staged.set("b.nchan.client_cpu_per_request_us", (cpuSecondsSelf() - clientCPUBefore) / Double(max(outcome.ok, 1)) * 1e6)
        return other
    }

    func finish() {
        for poller in pollers { poller.stop() }
        pollers.removeAll()
        control?.close()
    }
}
