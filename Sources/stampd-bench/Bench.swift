// stampd-bench: a NIO HTTP/1.1 load client for stampd and for nginx + nchan. See BENCHMARKS.md.
//
//   stampd-bench run --stampd 127.0.0.1:8080 --stampd-pid PID [--nchan 127.0.0.1:8090 --nchan-pid PID] ...
//   stampd-bench run --stampd 127.0.0.1:8081 --stampd-pid PID --stampd-label postgres --postgres-pid PID --levels '' ...
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
    var overloadSeconds: Double
    var overloadFactor: Double
    var overloadPairs: Int
    var overloadBaseRate: Double
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

    @Option(help: "stampd's host:port (loopback); several instances comma separated, connections spread over them in turn.")
    var stampd: String?
    @Option(help: "stampd's process id, for VmRSS and CPU time; several comma separated (CPU is summed, memory is the first's).")
    var stampdPid: String?
    @Option(help: "stampd's metrics listener, host:port (its --metrics-port); one per instance, comma separated.")
    var stampdMetrics: String?
    @Option(help: "The label of stampd's result keys and log lines (a.<label>.*, c.<label>.flows, errors.<label>): another than stampd lets a second stampd's results sit beside the first's.")
    var stampdLabel = "stampd"
    @Option(help: "The postmaster's process id of stampd's PostgreSQL cluster: its processes' CPU counts as the server's.")
    var postgresPid: Int32?
    @Option(help: "A superuser URL of stampd's PostgreSQL database, to read pg_stat_statements, pg_stat_database and pg_stat_wal around each timed phase.")
    var postgresStatsUrl: String?
    @Option(help: "psql, for --postgres-stats-url.") var psql = "psql"
    @Option(help: "nginx + nchan's host:port; the config must have /sub/<ch>, /pub/<ch> and /nchan_status.") var nchan: String?
    @Option(help: "The nginx worker's process id, for VmRSS.") var nchanPid: Int32?
    @Option(help: "Parked-poll levels for memory and capacity, comma separated; empty skips the phase (the latency phase then parks its own).")
    var levels = "1000,5000,10000,18000"
    @Option(help: "Parked polls during the latency phase.") var latencyParked = 10_000
    @Option(help: "Stamp requests (publishes) per second in the latency phase.") var rate = 1_000
    @Option(help: "Seconds of the latency phase.") var latencySeconds = 10.0
    @Option(help: "Owner/customer pairs in the full-flow phase (closed loop, one flow in flight per pair).") var flowPairs = 128
    @Option(help: "Seconds of the full-flow phase; 0 skips it.") var flowSeconds = 30.0
    @Flag(inversion: .prefixedNo, help: "Keep the latency phase's owners parked during the full-flow phase.")
    var flowKeepParked = true
    @Option(help: "Seconds of the overload phase (full flows offered open loop at --overload-factor × the full-flow phase's rate); 0 skips it.")
    var overloadSeconds = 0.0
    @Option(help: "The overload phase offers this multiple of the sustained flow rate.") var overloadFactor = 5.0
    @Option(help: "Owner/customer pairs the overload phase starts its flows on.") var overloadPairs = 512
    @Option(help: "The sustained flow rate the overload phase multiplies, instead of the full-flow phase's.") var overloadBaseRate = 0.0
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
            throw ValidationError("--levels must be positive integers, comma separated (or empty)")
        }
        guard let first = stampdLabel.first, first.isLetter, first.isLowercase,
              stampdLabel.allSatisfy({ ($0.isLetter && $0.isLowercase) || $0.isNumber || $0 == "_" }),
              stampdLabel.allSatisfy(\.isASCII), stampdLabel != "nchan", stampdLabel != "nginx" else {
            throw ValidationError("--stampd-label must be lowercase letters, digits and _, not nchan or nginx")
        }
    }

    func run() async throws {
        let options = RunOptions(
            levels: levels.split(separator: ",").compactMap { Int($0) }, latencyParked: latencyParked, rate: rate,
            latencySeconds: latencySeconds, flowPairs: flowPairs, flowSeconds: flowSeconds, flowKeepParked: flowKeepParked,
            overloadSeconds: overloadSeconds, overloadFactor: overloadFactor, overloadPairs: overloadPairs,
            overloadBaseRate: overloadBaseRate,
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
            let servers = try stampd.split(separator: ",").map { try parseAddress(String($0)) }
            let metricsServers = try (stampdMetrics ?? "").split(separator: ",").map { try parseAddress(String($0)) }
            guard metricsServers.count == servers.count else {
                throw ValidationError("--stampd-metrics needs one listener per --stampd instance")
            }
            let pids = try (stampdPid ?? "").split(separator: ",").map { text -> Int32 in
                guard let pid = Int32(text) else { throw ValidationError("--stampd-pid: \(text) is not a process id") }
                return pid
            }
            let label = stampdLabel
            let database = postgresPid != nil || postgresStatsUrl != nil
                ? DatabaseWatch(postmaster: postgresPid, statsURL: postgresStatsUrl, psql: psql) : nil
            if let postmaster = postgresPid, ClusterCPU.read(postmaster: postmaster) == nil {
                throw ValidationError("--postgres-pid \(postmaster): no such process")
            }
            let bench = StampdBench(label: label,
                                    connector: Connector(group: group, servers: servers.map { (host: $0.0, port: $0.1) }, sources: sources),
                                    metrics: metricsServers.map { Connector(group: group, host: $0.0, port: $0.1, sources: sources) },
                                    pid: pids.first, otherPids: Array(pids.dropFirst()), database: database, results: results,
                                    options: options)
            do {
                try await bench.setUp()
                if !options.levels.isEmpty {
                    try await bench.parkLevels()
                    results.set("a.\(label).errors", bench.tally.errors)
                }
                try await bench.latency()
                results.set("b.\(label).errors", bench.tally.errors)
                try await bench.flows()
                try await bench.overload()
            } catch {
                bench.tally.error("\(label) run stopped: \(error)")
            }
            bench.finish()
            await sleep(seconds: 1)  // closing callbacks land before the count
            results.set("client.\(label).approvals_answered", bench.approvalsAnswered)
            results.set("errors.\(label)", bench.tally.errors)
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
    @Option(help: "The label of the stampd on PostgreSQL (run's --stampd-label); its column appears when the results have it.")
    var postgresLabel = "postgres"
    @Option(help: "The label of two stampd instances on that PostgreSQL (run's --stampd-label with two --stampd); a table of one against two instances follows when the results have it.")
    var twoLabel = "postgres2"
    @Flag(help: "Sizes were too small for the targets to mean anything.") var smoke = false

    func run() throws {
        let text = try String(contentsOfFile: results, encoding: .utf8)
        var values: [String: Double] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: "\t", maxSplits: 1)
            if parts.count == 2, let value = Double(parts[1]) { values[String(parts[0])] = value }
        }
        print(ReportTable(values: values, smoke: smoke, second: postgresLabel).render())
        if let table = ScaleOutTable(values: values, one: postgresLabel, two: twoLabel).render() {
            print("\nOne stampd and two stampd instances on one PostgreSQL (connections spread over both in turn):\n")
            print(table)
        }
    }
}

/// One instance on PostgreSQL against two on the same cluster, from the same run: the figures
/// that say whether a second instance adds capacity, and what each flow costs.
struct ScaleOutTable {
    let values: [String: Double]
    let one: String
    let two: String

    func render() -> String? {
        guard values.keys.contains(where: { $0.hasPrefix("c.\(two).") || $0.hasPrefix("b.\(two).") || $0.hasPrefix("a.\(two)_") })
        else { return nil }
        let table = ReportTable(values: values, smoke: false, second: one)
        func v(_ key: String) -> Double? { values[key] }
        func pair(_ a: String, _ b: String, _ digits: Int, _ unit: String) -> (String) -> String {
            { label in
                guard v("\(a.replacingOccurrences(of: "{t}", with: label))") != nil else { return "–" }
                return "\(table.fmt(v(a.replacingOccurrences(of: "{t}", with: label)), digits)) / "
                    + "\(table.fmt(v(b.replacingOccurrences(of: "{t}", with: label)), digits))\(unit)"
            }
        }
        var rows: [[String]] = []
        func add(_ figure: String, _ key: String, _ digits: Int = 0, _ unit: String = "") {
            let a = v(key.replacingOccurrences(of: "{t}", with: one)), b = v(key.replacingOccurrences(of: "{t}", with: two))
            rows.append([figure, table.fmt(a, digits, unit), table.fmt(b, digits, unit), table.ratio(b, a)])
        }
        func add(_ figure: String, _ text: (String) -> String) { rows.append([figure, text(one), text(two), ""]) }
        add("Full durable flows per second", "c.{t}.flows_per_s")
        add("Full flow latency p50 / p99", pair("c.{t}.flow_p50_ms", "c.{t}.flow_p99_ms", 1, " ms"))
        add("stampd CPU per flow, all instances", "c.{t}.server_cpu_per_flow_us", 0, " µs")
        add("PostgreSQL's processes per flow", "c.{t}.db_cpu_per_flow_us", 0, " µs")
        add("stampd + PostgreSQL per flow", "c.{t}.server_and_db_cpu_per_flow_us", 0, " µs")
        add("Cores busy: stampd / PostgreSQL (flows)", pair("c.{t}.server_cpu_cores", "c.{t}.db_cpu_cores", 2, ""))
        add("PostgreSQL statements per flow", "c.{t}.pg.statements_per", 1)
        add("Publish→deliver p50 / p99 (latency phase)", pair("b.{t}.p50_ms", "b.{t}.p99_ms", 2, " ms"))
        add("… at parked polls, publishes/s", pair("b.{t}.parked", "b.{t}.achieved_rate", 0, ""))
        add("Writes that kept conflicting (503)", "log.{t}.kept_conflicting")
        add("Approved requests in the database", "db.{t}.approved")
        add("Errors (client-side)", "errors.{t}")
        let levels = Set(values.keys.compactMap { key -> Int? in
            let parts = key.split(separator: ".")
            guard parts.count == 4, parts[0] == "a", parts[1].hasPrefix("\(two)_"), parts[3] == "parked" else { return nil }
            return Int(parts[2])
        }).sorted()
        if let top = levels.last {
            let instances = values.keys.compactMap { key -> String? in
                let parts = key.split(separator: ".")
                guard parts.count == 4, parts[0] == "a", parts[1].hasPrefix("\(two)_"), parts[2] == "\(top)", parts[3] == "parked"
                else { return nil }
                return String(parts[1])
            }.sorted()
            let held = instances.compactMap { v("a.\($0).\(top).parked") }
            let errors = instances.compactMap { v("a.\($0).errors") }.reduce(0, +)
            let perPoll = instances.compactMap { v("a.\($0).\(top).bytes_per_poll") }.map { table.fmt($0 / 1024, 2, " KiB") }
            rows.append(["Parked polls held at once, each instance its own client and fd limit (errors)",
                         table.fmt(v("a.\(one).\(top).parked") ?? v("a.stampd.\(top).parked")) + " (one process)",
                         held.map { table.fmt($0) }.joined(separator: " + ") + " = \(table.fmt(held.reduce(0, +))) (\(table.fmt(errors)) errors)",
                         ""])
            rows.append(["… memory per parked poll on each instance", "–", perPoll.joined(separator: ", "), ""])
        }
        var lines = ["| Figure | one instance | two instances | two / one |", "|---|---|---|---|"]
        for row in rows { lines.append("| " + row.joined(separator: " | ") + " |") }
        return lines.joined(separator: "\n")
    }
}

/// The table: stampd (on SQLite, label `stampd`), the same figures of a second stampd on
/// PostgreSQL (label `second`) when the results have them, and nginx + nchan.
struct ReportTable {
    let values: [String: Double]
    let smoke: Bool
    var second = "postgres"

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

    /// One row: the figure, the value for each stampd (SQLite, PostgreSQL) and nchan, the ratios
    /// to nchan, the target and whether each stampd met it.
    struct Row {
        var figure: String
        var sqlite: String
        var postgres = "–"
        var nchan = ""
        var sqliteRatio = ""
        var postgresRatio = ""
        var target = ""
        var sqliteMet = ""
        var postgresMet = ""
    }

    /// A row whose three values come from the same key pattern (`{t}` is the target's label).
    func row(_ figure: String, _ pattern: String, _ digits: Int = 0, _ unit: String = "", scale: Double = 1,
             target: String = "", meets: ((Double) -> Bool)? = nil, nchan: Bool = true) -> Row {
        func value(_ label: String) -> Double? { v(pattern.replacingOccurrences(of: "{t}", with: label)).map { $0 * scale } }
        let s = value("stampd"), p = value(second), n = nchan ? value("nchan") : nil
        return Row(figure: figure, sqlite: fmt(s, digits, unit), postgres: fmt(p, digits, unit),
                   nchan: nchan ? fmt(n, digits, unit) : "–", sqliteRatio: nchan ? ratio(s, n) : "–",
                   postgresRatio: nchan ? ratio(p, n) : "–", target: target,
                   sqliteMet: meets.map { test in met(s.map(test)) } ?? "",
                   postgresMet: meets.map { test in met(p.map(test)) } ?? "")
    }

    var hasSecond: Bool {
        values.keys.contains { $0.hasPrefix("b.\(second).") || $0.hasPrefix("c.\(second).") || $0 == "errors.\(second)" }
    }

    func render() -> String {
        var rows: [Row] = []
        let levels = Set(values.keys.compactMap { key -> Int? in
            let parts = key.split(separator: ".")
            guard parts.count == 4, parts[0] == "a", parts[3] == "bytes_per_poll" else { return nil }
            return Int(parts[2])
        }).sorted()
        for level in levels {
            rows.append(row("Memory per parked poll at \(level.formatted()) (VmRSS Δ / count)", "a.{t}.\(level).bytes_per_poll",
                            2, " KiB", scale: 1.0 / 1024, target: "≤ 4 KiB", meets: { $0 <= 4 }))
        }
        if levels.count >= 2 {
            let (low, top) = (levels[levels.count - 2], levels[levels.count - 1])
            func marginal(_ target: String) -> Double? {
                guard let a = v("a.\(target).\(low).rss_kib"), let b = v("a.\(target).\(top).rss_kib") else { return nil }
                return (b - a) / Double(top - low)
            }
            let s = marginal("stampd"), p = marginal(second), n = marginal("nchan")
            rows.append(Row(figure: "Memory per parked poll, marginal \(low.formatted())→\(top.formatted())", sqlite: fmt(s, 2, " KiB"),
                            postgres: fmt(p, 2, " KiB"), nchan: fmt(n, 2, " KiB"), sqliteRatio: ratio(s, n),
                            postgresRatio: ratio(p, n), target: "≤ 4 KiB", sqliteMet: met(s.map { $0 <= 4 }),
                            postgresMet: p == nil ? "" : met(p.map { $0 <= 4 })))
            func split(_ target: String) -> String {
                guard let idle = v("a.\(target).\(top).idle_connection_bytes"),
                      let poll = v("a.\(target).\(top).poll_on_connection_bytes") else { return "–" }
                return "\(fmt(idle)) B + \(fmt(poll)) B"
            }
            rows.append(Row(figure: "… of which: idle connection + the poll parked on it (last step)", sqlite: split("stampd"),
                            postgres: split(second), nchan: split("nchan")))
        }
        if let top = levels.last {
            func held(_ target: String) -> String {
                guard v("a.\(target).\(top).parked") != nil || v("a.\(target).errors") != nil else { return "–" }
                return "\(fmt(v("a.\(target).\(top).parked"))) (\(fmt(v("a.\(target).errors"))) errors)"
            }
            func ok(_ target: String) -> Bool? {
                v("a.\(target).\(top).parked").map { $0 >= 18_000 && (v("a.\(target).errors") ?? 1) == 0 }
            }
            let parked = v("a.stampd.\(top).parked"), n = v("a.nchan.\(top).parked")
            rows.append(Row(figure: "Parked polls held at once, one process (errors while parking)", sqlite: held("stampd"),
                            postgres: held(second), nchan: held("nchan"), sqliteRatio: ratio(parked, n),
                            postgresRatio: ratio(v("a.\(second).\(top).parked"), n), target: "≥ 18,000, 0 errors",
                            sqliteMet: met(ok("stampd")), postgresMet: ok(second) == nil ? "" : met(ok(second))))
            rows.append(row("Time to park \(top.formatted()) (from the previous level)", "a.{t}.\(top).park_seconds", 1, " s"))
        }
        if v("b.stampd.p99_ms") != nil || v("b.nchan.p99_ms") != nil || v("b.\(second).p99_ms") != nil {
            let parked = fmt(v("b.stampd.parked") ?? v("b.\(second).parked") ?? v("b.nchan.parked"))
            let rate = fmt(v("b.stampd.achieved_rate") ?? v("b.\(second).achieved_rate") ?? v("b.nchan.achieved_rate"))
            if hasSecond {
                func at(_ target: String) -> String {
                    guard let count = v("b.\(target).parked") else { return "–" }
                    return "\(fmt(count)) at \(fmt(v("b.\(target).achieved_rate")))/s"
                }
                rows.append(Row(figure: "Latency phase: parked polls, achieved publish rate", sqlite: at("stampd"),
                                postgres: at(second), nchan: at("nchan")))
            }
            for (label, key) in [("p50", "p50_ms"), ("p99", "p99_ms"), ("max", "max_ms")] {
                let isP99 = key == "p99_ms"
                var r = row("Publish→deliver \(label) at \(parked) parked, \(rate)/s", "b.{t}.\(key)", 2, " ms",
                            target: isP99 ? "≤ nchan's p99" : "")
                if isP99, let n = v("b.nchan.p99_ms") {
                    r.sqliteMet = met(v("b.stampd.p99_ms").map { $0 <= n })
                    r.postgresMet = v("b.\(second).p99_ms") == nil ? "" : met(v("b.\(second).p99_ms").map { $0 <= n })
                }
                rows.append(r)
            }
            // The disk's share, measured by stampd in the same phase, and the goal it sets: stampd's
            // own overhead below nchan's whole latency, delivery pN ≤ nchan's pN + the WAL sync's pN.
            func disk(_ target: String) -> String {
                guard v("b.\(target).commit_p50_ms") != nil else { return "–" }
                let sync = v("b.\(target).sync_p50_ms") == nil ? ""
                    : " (WAL sync \(fmt(v("b.\(target).sync_p50_ms"), 2)) / \(fmt(v("b.\(target).sync_p99_ms"), 2)))"
                return "\(fmt(v("b.\(target).commit_p50_ms"), 2)) / \(fmt(v("b.\(target).commit_p99_ms"), 2)) ms\(sync)"
            }
            rows.append(Row(figure: "COMMIT p50 / p99 in the latency phase (of which the WAL's sync), from stampd's /metrics",
                            sqlite: disk("stampd"), postgres: disk(second), nchan: "–", sqliteRatio: "–", postgresRatio: "–"))
            for label in ["p50", "p99"] {
                guard let n = v("b.nchan.\(label)_ms"), let d = v("b.stampd.\(label)_ms"), let s = v("b.stampd.sync_\(label)_ms") else { continue }
                rows.append(Row(figure: "Goal: delivery \(label) ≤ nchan's \(label) + the WAL sync's \(label)",
                                sqlite: "\(fmt(d, 2)) ms (goal ≤ \(fmt(n + s, 2)))", postgres: "–", nchan: fmt(n, 2, " ms"),
                                sqliteRatio: "–", postgresRatio: "–", target: "≤ nchan + sync", sqliteMet: met(d <= n + s)))
            }
            func posts(_ target: String) -> String {
                guard v("b.\(target).post_p50_ms") != nil else { return "–" }
                return "\(fmt(v("b.\(target).post_p50_ms"), 2)) / \(fmt(v("b.\(target).post_p99_ms"), 2)) ms"
            }
            rows.append(Row(figure: "POST answered (stamp request: durable write / nchan publish) p50 / p99", sqlite: posts("stampd"),
                            postgres: posts(second), nchan: posts("nchan"),
                            sqliteRatio: ratio(v("b.stampd.post_p99_ms"), v("b.nchan.post_p99_ms")),
                            postgresRatio: ratio(v("b.\(second).post_p99_ms"), v("b.nchan.post_p99_ms"))))
            rows.append(row(hasSecond ? "Server CPU per published event (the stampd process)" : "Server CPU per published event",
                            "b.{t}.server_cpu_per_request_us", 0, " µs"))
            if hasSecond {
                let p = v("b.\(second).server_cpu_per_request_us"), d = v("b.\(second).db_cpu_per_request_us")
                let total = p.flatMap { p in d.map { p + $0 } }
                rows.append(Row(figure: "… PostgreSQL's processes per published event", sqlite: "(inside stampd)",
                                postgres: fmt(d, 0, " µs"), nchan: "–"))
                rows.append(Row(figure: "… stampd + its database per published event", sqlite: fmt(v("b.stampd.server_cpu_per_request_us"), 0, " µs"),
                                postgres: fmt(total, 0, " µs"), nchan: fmt(v("b.nchan.server_cpu_per_request_us"), 0, " µs"),
                                sqliteRatio: ratio(v("b.stampd.server_cpu_per_request_us"), v("b.nchan.server_cpu_per_request_us")),
                                postgresRatio: ratio(total, v("b.nchan.server_cpu_per_request_us"))))
            }
        }
        if v("c.stampd.flows_per_s") != nil || v("c.\(second).flows_per_s") != nil {
            let pairs = fmt(v("c.stampd.pairs") ?? v("c.\(second).pairs"))
            let bystanders = fmt(v("c.stampd.parked_bystanders") ?? v("c.\(second).parked_bystanders"))
            rows.append(row("Full durable flows per second (\(pairs) pairs, \(bystanders) others parked)", "c.{t}.flows_per_s",
                            target: "≥ 5,000/s", meets: { $0 >= 5_000 }, nchan: false))
            func latency(_ target: String) -> String {
                guard v("c.\(target).flow_p50_ms") != nil else { return "–" }
                return "\(fmt(v("c.\(target).flow_p50_ms"), 1)) / \(fmt(v("c.\(target).flow_p99_ms"), 1)) ms"
            }
            rows.append(Row(figure: "Full flow latency p50 / p99", sqlite: latency("stampd"), postgres: latency(second), nchan: "–",
                            sqliteRatio: "–", postgresRatio: "–"))
            func cpu(_ target: String) -> String {
                guard v("c.\(target).server_cpu_per_flow_us") != nil else { return "–" }
                return "\(fmt(v("c.\(target).server_cpu_per_flow_us"))) µs (\(fmt(v("c.\(target).server_cpu_cores"), 2)))"
            }
            rows.append(Row(figure: hasSecond ? "Server CPU per flow, the stampd process (cores busy)" : "Server CPU per flow (cores busy)",
                            sqlite: cpu("stampd"), postgres: cpu(second), nchan: "–", sqliteRatio: "–", postgresRatio: "–"))
            if hasSecond {
                let d = v("c.\(second).db_cpu_per_flow_us")
                let database = d == nil ? "–"
                    : "\(fmt(d)) µs (\(fmt(v("c.\(second).db_cpu_cores"), 2)); client backends \(fmt(v("c.\(second).db_backend_cpu_per_flow_us"))) µs)"
                rows.append(Row(figure: "… PostgreSQL's processes per flow (cores busy; of which client backends)",
                                sqlite: "(inside stampd)", postgres: database, nchan: "–", sqliteRatio: "–", postgresRatio: "–"))
                rows.append(Row(figure: "… stampd + its database per flow", sqlite: fmt(v("c.stampd.server_cpu_per_flow_us"), 0, " µs"),
                                postgres: fmt(v("c.\(second).server_and_db_cpu_per_flow_us"), 0, " µs"), nchan: "–",
                                sqliteRatio: "–", postgresRatio: "–"))
                let pg = "c.\(second).pg."
                if v(pg + "statements_per") != nil {
                    rows.append(Row(figure: "PostgreSQL per flow: statements (data statements); write transactions, not committed (in all)",
                                    sqlite: "–",
                                    postgres: "\(fmt(v(pg + "statements_per"), 1)) (\(fmt(v(pg + "data_statements_per"), 1))); "
                                        + "\(fmt(v(pg + "write_transactions_per"), 2)), \(fmt(v(pg + "write_aborts_per"), 3)) (\(fmt(v(pg + "write_aborts"))))",
                                    nchan: "–", sqliteRatio: "–", postgresRatio: "–"))
                }
                if v(pg + "wal_syncs_per") != nil || v(pg + "wal_bytes_per") != nil {
                    rows.append(Row(figure: "PostgreSQL per flow: WAL syncs (ms each), WAL bytes", sqlite: "–",
                                    postgres: "\(fmt(v(pg + "wal_syncs_per"), 2)) (\(fmt(v(pg + "wal_sync_ms_each"), 2)) ms), \(fmt(v(pg + "wal_bytes_per"))) B",
                                    nchan: "–", sqliteRatio: "–", postgresRatio: "–"))
                }
                if let warnings = v("log.\(second).kept_conflicting") {
                    rows.append(Row(figure: "Writes that kept conflicting (503; server log warnings)", sqlite: "–", postgres: fmt(warnings),
                                    nchan: "–", sqliteRatio: "–", postgresRatio: "–", target: "0"))
                }
            }
        }
        if v("db.approved") != nil || v("db.\(second).approved") != nil {
            func durable(_ prefix: String, _ target: String) -> String {
                guard let approved = v("\(prefix).approved") else { return "–" }
                return "\(fmt(approved)) ≥ \(fmt(v("c.\(target).flows")))"
            }
            func ok(_ prefix: String, _ target: String) -> Bool? {
                v("\(prefix).approved").map { $0 >= (v("c.\(target).flows") ?? 0) }
            }
            rows.append(Row(figure: "Approved requests in the database ≥ flows the client counted", sqlite: durable("db", "stampd"),
                            postgres: durable("db.\(second)", second), nchan: "–", sqliteRatio: "–", postgresRatio: "–",
                            target: "yes", sqliteMet: met(ok("db", "stampd")),
                            postgresMet: ok("db.\(second)", second) == nil ? "" : met(ok("db.\(second)", second))))
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
            rows.append(Row(figure: "GET /healthz req/s, median of rounds (nginx: return 200), \(wrk)", sqlite: spread("d.stampd.healthz_rps"),
                            nchan: spread("d.nginx.healthz_rps"), sqliteRatio: ratio(health, nginx),
                            target: "≥ 0.9 × nginx", sqliteMet: met(nginx.map { health >= 0.9 * $0 })))
        }
        if v("d.stampd.healthz_server_us") != nil {
            rows.append(Row(figure: "Server CPU per /healthz request (median of rounds)", sqlite: fmt(v("d.stampd.healthz_server_us"), 1, " µs"),
                            nchan: fmt(v("d.nginx.healthz_server_us"), 1, " µs"),
                            sqliteRatio: ratio(v("d.stampd.healthz_server_us"), v("d.nginx.healthz_server_us"))))
        }
        if v("d.stampd.cards_rps") != nil {
            rows.append(Row(figure: "GET /v1/cards req/s (Bearer token), \(wrk)", sqlite: spread("d.stampd.cards_rps"), nchan: "–",
                            sqliteRatio: "–"))
        }
        let others = [("before the run", v("machine.other_cores_before")), ("latency phase", v("b.stampd.other_cores")),
                      ("full flows", v("c.stampd.other_cores")), ("nchan latency", v("b.nchan.other_cores")),
                      ("just before wrk", v("d.other_cores_before")),
                      ("PostgreSQL latency phase", v("b.\(second).other_cores")), ("PostgreSQL full flows", v("c.\(second).other_cores"))]
            .compactMap { label, value in value.map { "\(label) \(fmt($0, 2))" } }
        if !others.isEmpty {
            rows.append(Row(figure: "CPU cores used by other processes (interference; the machine has \(ProcessInfo.processInfo.activeProcessorCount))",
                            sqlite: others.joined(separator: ", "), postgres: "", target: "≈ 0"))
        }
        let allErrors = ["errors.stampd", "errors.nchan", "errors.wrk", "errors.\(second)"].reduce(0.0) { $0 + (v($1) ?? 0) }
        rows.append(Row(figure: "Errors (client-side, all phases)", sqlite: fmt(v("errors.stampd")), postgres: fmt(v("errors.\(second)")),
                        nchan: fmt(v("errors.nchan")), sqliteRatio: "–", postgresRatio: "–", target: "0", sqliteMet: met(allErrors == 0)))

        let header: [String]
        let cells: [[String]]
        if hasSecond {
            header = ["Figure", "stampd, SQLite", "stampd, PostgreSQL", "nchan / nginx", "SQLite / nchan", "PostgreSQL / nchan",
                      "Target", "Met (SQLite / PostgreSQL)"]
            cells = rows.map { r in
                let both = r.postgresMet.isEmpty ? r.sqliteMet : "\(r.sqliteMet) / \(r.postgresMet)"
                return [r.figure, r.sqlite, r.postgres, r.nchan, r.sqliteRatio, r.postgresRatio, r.target, both]
            }
        } else {
            header = ["Figure", "stampd", "nchan / nginx", "stampd / nchan", "Target", "Met"]
            cells = rows.map { [$0.figure, $0.sqlite, $0.nchan, $0.sqliteRatio, $0.target, $0.sqliteMet] }
        }
        var lines = ["| " + header.joined(separator: " | ") + " |", "|" + String(repeating: "---|", count: header.count)]
        for row in cells { lines.append("| " + row.joined(separator: " | ") + " |") }
        return lines.joined(separator: "\n")
    }
}
