// stampd-bench: a NIO HTTP/1.1 load client for stampd and for nginx + nchan. See BENCHMARKS.md.
//
//   stampd-bench run --stampd 127.0.0.1:8080 --stampd-pid PID [--nchan 127.0.0.1:8090 --nchan-pid PID] ...
//   stampd-bench report --results results.tsv
import ArgumentParser
import Foundation
import NIOCore
import NIOPosix

@main
struct StampdBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stampd-bench",
        abstract: "Load client for stampd (and nginx + nchan as the reference).",
        subcommands: [Run.self, Report.self],
        defaultSubcommand: Run.self)
}

struct RunOptions: Sendable {
    var levels: [Int]
    var latencyParked: Int
    var rate: Int
    var latencySeconds: Double
    var flowPairs: Int
    var flowSeconds: Double
    var flowKeepParked: Bool
    var customers: Int
    var setupConnections: Int
    var connectConcurrency: Int
    var settleSeconds: Double
    var threads: Int
    var quietWait: Double
    var quietThreshold: Double
    var noisyThreshold: Double
    var noisyRetries: Int
}

func parseAddress(_ text: String) throws -> (String, Int) {
    guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else {
        throw ValidationError("\(text) is not host:port")
    }
    return (String(text[..<colon]), port)
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the measurements against running servers.")

    @Option(help: "stampd's host:port (loopback).") var stampd: String?
    @Option(help: "stampd's process id, for VmRSS and CPU time.") var stampdPid: Int32?
    @Option(help: "stampd's metrics listener, host:port (its --metrics-port).") var stampdMetrics: String?
    @Option(help: "nginx + nchan's host:port; the config must have /sub/<ch>, /pub/<ch> and /nchan_status.") var nchan: String?
    @Option(help: "The nginx worker's process id, for VmRSS.") var nchanPid: Int32?
    @Option(help: "Parked-poll levels for memory and capacity, comma separated.") var levels = "1000,5000,10000,18000"
    @Option(help: "Parked polls during the latency phase.") var latencyParked = 10_000
    @Option(help: "Stamp requests (publishes) per second in the latency phase.") var rate = 1_000
    @Option(help: "Seconds of the latency phase.") var latencySeconds = 10.0
    @Option(help: "Owner/customer pairs in the full-flow phase (closed loop, one flow in flight per pair).") var flowPairs = 128
    @Option(help: "Seconds of the full-flow phase; 0 skips it.") var flowSeconds = 30.0
    @Flag(inversion: .prefixedNo, help: "Keep the latency phase's owners parked during the full-flow phase.")
    var flowKeepParked = true
    @Option(help: "Customer (publisher) connections in the latency phase.") var customers = 32
    @Option(help: "Connections used to create accounts and stores.") var setupConnections = 64
    @Option(help: "Connections opened at once while parking.") var connectConcurrency = 256
    @Option(help: "Seconds to wait after parking before reading VmRSS.") var settleSeconds = 2.0
    @Option(help: "Client event-loop threads.") var threads = 2
    @Option(help: "Before each timed phase, wait up to this many seconds for other processes to go quiet (0: don't).")
    var quietWait = 0.0
    @Option(help: "Cores other processes may use for the machine to count as quiet.") var quietThreshold = 0.15
    @Option(help: "A timed phase during which other processes used more cores than this is run again.") var noisyThreshold = 0.25
    @Option(help: "How many times a noisy phase is run again (the quietest attempt counts).") var noisyRetries = 0
    @Option(help: "Second octet of the client's loopback source addresses (127.N.x.y); default from the pid.")
    var sourcePrefix: Int?
    @Option(help: "Append key<TAB>value results to this file.") var results: String?
    @Option(help: "Hard limit on the whole run, in seconds.") var maxSeconds = 1_500.0

    func validate() throws {
        guard stampd != nil || nchan != nil else { throw ValidationError("give --stampd and/or --nchan") }
        if stampd != nil && stampdMetrics == nil { throw ValidationError("--stampd needs --stampd-metrics") }
        guard threads >= 1, customers >= 1, setupConnections >= 1 else { throw ValidationError("counts must be positive") }
        guard levels.split(separator: ",").allSatisfy({ Int($0).map { $0 > 0 } ?? false }) else {
            throw ValidationError("--levels must be positive integers, comma separated")
        }
    }

    func run() async throws {
        let options = RunOptions(
            levels: levels.split(separator: ",").compactMap { Int($0) }, latencyParked: latencyParked, rate: rate,
            latencySeconds: latencySeconds, flowPairs: flowPairs, flowSeconds: flowSeconds, flowKeepParked: flowKeepParked,
            customers: customers, setupConnections: setupConnections, connectConcurrency: connectConcurrency,
            settleSeconds: settleSeconds, threads: threads, quietWait: quietWait, quietThreshold: quietThreshold,
            noisyThreshold: noisyThreshold, noisyRetries: noisyRetries)
        let limit = maxSeconds
        Thread.detachNewThread {
            Thread.sleep(forTimeInterval: limit)
            log("the run took longer than --max-seconds \(limit): giving up")
            Foundation.exit(3)
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let sources = SourceAddresses(prefix: sourcePrefix ?? Int(10 + getpid() % 200))
        let results = Results(path: self.results)
        var errors = 0

        if let stampd {
            let (host, port) = try parseAddress(stampd)
            let (metricsHost, metricsPort) = try parseAddress(stampdMetrics ?? "")
            let bench = StampdBench(connector: Connector(group: group, host: host, port: port, sources: sources),
                                    metrics: Connector(group: group, host: metricsHost, port: metricsPort, sources: sources),
                                    pid: stampdPid, results: results, options: options)
            do {
                try await bench.setUp()
                try await bench.parkLevels()
                results.set("a.stampd.errors", bench.tally.errors)
                try await bench.latency()
                results.set("b.stampd.errors", bench.tally.errors)
                try await bench.flows()
            } catch {
                bench.tally.error("stampd run stopped: \(error)")
            }
            bench.finish()
            await sleep(seconds: 1)  // closing callbacks land before the count
            results.set("errors.stampd", bench.tally.errors)
            errors += bench.tally.errors
            await sleep(seconds: 1)
        }

        if let nchan {
            sources.skipToNextAddress()
            let (host, port) = try parseAddress(nchan)
            let bench = NchanBench(connector: Connector(group: group, host: host, port: port, sources: sources),
                                   pid: nchanPid, results: results, options: options)
            do {
                try await bench.setUp()
                try await bench.parkLevels()
                results.set("a.nchan.errors", bench.tally.errors)
                try await bench.latency()
            } catch {
                bench.tally.error("nchan run stopped: \(error)")
            }
            bench.finish()
            await sleep(seconds: 1)
            results.set("errors.nchan", bench.tally.errors)
            errors += bench.tally.errors
            await sleep(seconds: 1)
        }

        try? await group.shutdownGracefully()
        if errors > 0 {
            log("\(errors) errors")
            throw ExitCode(1)
        }
    }
}

struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the table of figures, ratios and targets from a results file.")

    @Option(help: "The key<TAB>value file written by `run` (and by run.sh for wrk).") var results: String
    @Flag(help: "Sizes were too small for the targets to mean anything.") var smoke = false

    func run() throws {
        let text = try String(contentsOfFile: results, encoding: .utf8)
        var values: [String: Double] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "\t", maxSplits: 1)
            if parts.count == 2, let value = Double(parts[1]) { values[String(parts[0])] = value }
        }
        print(ReportTable(values: values, smoke: smoke).render())
    }
}

struct ReportTable {
    let values: [String: Double]
    let smoke: Bool

    func v(_ key: String) -> Double? { values[key] }

    func fmt(_ value: Double?, _ digits: Int = 0, _ unit: String = "") -> String {
        guard let value, value.isFinite else { return "–" }
        return String(format: "%.\(digits)f", value) + unit
    }

    func ratio(_ a: Double?, _ b: Double?) -> String {
        guard let a, let b, b != 0, a.isFinite, b.isFinite else { return "–" }
        return String(format: "%.2f", a / b)
    }

    func met(_ ok: Bool?) -> String {
        guard let ok else { return "–" }
        if smoke { return "(smoke)" }
        return ok ? "yes" : "**no**"
    }

    func render() -> String {
        var rows: [[String]] = [["Figure", "stampd", "nchan / nginx", "stampd / nchan", "Target", "Met"]]
        let levels = Set(values.keys.compactMap { key -> Int? in
            let parts = key.split(separator: ".")
            guard parts.count == 4, parts[0] == "a", parts[3] == "bytes_per_poll" else { return nil }
            return Int(parts[2])
        }).sorted()
        for level in levels {
            let s = v("a.stampd.\(level).bytes_per_poll").map { $0 / 1024 }
            let n = v("a.nchan.\(level).bytes_per_poll").map { $0 / 1024 }
            rows.append(["Memory per parked poll at \(level.formatted()) (VmRSS Δ / count)", fmt(s, 2, " KiB"),
                         fmt(n, 2, " KiB"), ratio(s, n), "≤ 4 KiB", met(s.map { $0 <= 4 })])
        }
        if levels.count >= 2 {
            let (low, top) = (levels[levels.count - 2], levels[levels.count - 1])
            func marginal(_ target: String) -> Double? {
                guard let a = v("a.\(target).\(low).rss_kib"), let b = v("a.\(target).\(top).rss_kib") else { return nil }
                return (b - a) / Double(top - low)
            }
            let s = marginal("stampd"), n = marginal("nchan")
            rows.append(["Memory per parked poll, marginal \(low.formatted())→\(top.formatted())", fmt(s, 2, " KiB"),
                         fmt(n, 2, " KiB"), ratio(s, n), "≤ 4 KiB", met(s.map { $0 <= 4 })])
            func split(_ target: String) -> String {
                guard let idle = v("a.\(target).\(top).idle_connection_bytes"),
                      let poll = v("a.\(target).\(top).poll_on_connection_bytes") else { return "–" }
                return "\(fmt(idle)) B + \(fmt(poll)) B"
            }
            rows.append(["… of which: idle connection + the poll parked on it (last step)", split("stampd"), split("nchan"),
                         "", "", ""])
        }
        if let top = levels.last {
            let parked = v("a.stampd.\(top).parked")
            let errors = v("a.stampd.errors")
            rows.append(["Parked polls held at once, one process (errors while parking)",
                         "\(fmt(parked)) (\(fmt(errors)) errors)",
                         "\(fmt(v("a.nchan.\(top).parked"))) (\(fmt(v("a.nchan.errors"))) errors)",
                         ratio(parked, v("a.nchan.\(top).parked")), "≥ 18,000, 0 errors",
                         met(parked.map { $0 >= 18_000 && (errors ?? 1) == 0 })])
            rows.append(["Time to park \(top.formatted()) (from the previous level)", fmt(v("a.stampd.\(top).park_seconds"), 1, " s"),
                         fmt(v("a.nchan.\(top).park_seconds"), 1, " s"),
                         ratio(v("a.stampd.\(top).park_seconds"), v("a.nchan.\(top).park_seconds")), "", ""])
        }
        if v("b.stampd.p99_ms") != nil || v("b.nchan.p99_ms") != nil {
            let parked = fmt(v("b.stampd.parked") ?? v("b.nchan.parked"))
            let rate = fmt(v("b.stampd.achieved_rate") ?? v("b.nchan.achieved_rate"))
            for (label, key) in [("p50", "p50_ms"), ("p99", "p99_ms"), ("max", "max_ms")] {
                let s = v("b.stampd.\(key)"), n = v("b.nchan.\(key)")
                rows.append(["Publish→deliver \(label) at \(parked) parked, \(rate)/s", fmt(s, 2, " ms"), fmt(n, 2, " ms"),
                             ratio(s, n), key == "p99_ms" ? "≤ nchan's p99" : "",
                             key == "p99_ms" ? met(s.flatMap { s in n.map { s <= $0 } }) : ""])
            }
            rows.append(["POST answered (stamp request: durable write / nchan publish) p50 / p99",
                         "\(fmt(v("b.stampd.post_p50_ms"), 2)) / \(fmt(v("b.stampd.post_p99_ms"), 2)) ms",
                         "\(fmt(v("b.nchan.post_p50_ms"), 2)) / \(fmt(v("b.nchan.post_p99_ms"), 2)) ms",
                         ratio(v("b.stampd.post_p99_ms"), v("b.nchan.post_p99_ms")), "", ""])
            rows.append(["Server CPU per published event", fmt(v("b.stampd.server_cpu_per_request_us"), 0, " µs"),
                         fmt(v("b.nchan.server_cpu_per_request_us"), 0, " µs"),
                         ratio(v("b.stampd.server_cpu_per_request_us"), v("b.nchan.server_cpu_per_request_us")), "", ""])
        }
        if let flows = v("c.stampd.flows_per_s") {
            rows.append(["Full durable flows per second (\(fmt(v("c.stampd.pairs"))) pairs, \(fmt(v("c.stampd.parked_bystanders"))) others parked)",
                         fmt(flows), "–", "–", "≥ 5,000/s", met(flows >= 5_000)])
            rows.append(["Full flow latency p50 / p99", "\(fmt(v("c.stampd.flow_p50_ms"), 1)) / \(fmt(v("c.stampd.flow_p99_ms"), 1)) ms",
                         "–", "–", "", ""])
            rows.append(["Server CPU per flow (cores busy)",
                         "\(fmt(v("c.stampd.server_cpu_per_flow_us"))) µs (\(fmt(v("c.stampd.server_cpu_cores"), 2)))",
                         "–", "–", "", ""])
        }
        func spread(_ key: String) -> String {
            let rounds = values.filter { $0.key.hasPrefix(key + ".round") }.map(\.value).sorted()
            guard let median = v(key) else { return "–" }
            guard rounds.count > 1 else { return fmt(median) }
            return "\(fmt(median)) (\(fmt(rounds.first)) – \(fmt(rounds.last)))"
        }
        let wrk = "wrk -t\(fmt(v("d.wrk_threads"))) -c\(fmt(v("d.wrk_connections"))) -d\(fmt(v("d.wrk_seconds")))s"
        if let health = v("d.stampd.healthz_rps") {
            let nginx = v("d.nginx.healthz_rps")
            rows.append(["GET /healthz req/s, median of rounds (nginx: return 200), \(wrk)", spread("d.stampd.healthz_rps"),
                         spread("d.nginx.healthz_rps"), ratio(health, nginx),
                         "≥ 0.9 × nginx", met(nginx.map { health >= 0.9 * $0 })])
        }
        if v("d.stampd.healthz_server_us") != nil {
            rows.append(["Server CPU per /healthz request (median of rounds)", fmt(v("d.stampd.healthz_server_us"), 1, " µs"),
                         fmt(v("d.nginx.healthz_server_us"), 1, " µs"),
                         ratio(v("d.stampd.healthz_server_us"), v("d.nginx.healthz_server_us")), "", ""])
        }
        if v("d.stampd.cards_rps") != nil {
            rows.append(["GET /v1/cards req/s (Bearer token), \(wrk)", spread("d.stampd.cards_rps"), "–", "–", "", ""])
        }
        let others = [("before the run", v("machine.other_cores_before")), ("latency phase", v("b.stampd.other_cores")),
                      ("full flows", v("c.stampd.other_cores")), ("nchan latency", v("b.nchan.other_cores")),
                      ("just before wrk", v("d.other_cores_before"))]
            .compactMap { label, value in value.map { "\(label) \(fmt($0, 2))" } }
        if !others.isEmpty {
            rows.append(["CPU cores used by other processes (interference; the machine has 2)", others.joined(separator: ", "),
                         "", "", "≈ 0", ""])
        }
        rows.append(["Errors (client-side, all phases)", fmt(v("errors.stampd")), fmt(v("errors.nchan")), "–", "0",
                     met(((v("errors.stampd") ?? 0) + (v("errors.nchan") ?? 0) + (v("errors.wrk") ?? 0)) == 0)])
        var lines: [String] = []
        for (index, row) in rows.enumerated() {
            lines.append("| " + row.joined(separator: " | ") + " |")
            if index == 0 { lines.append("|" + String(repeating: "---|", count: row.count)) }
        }
        return lines.joined(separator: "\n")
    }
}
