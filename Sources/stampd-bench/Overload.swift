// Phase (d), overload: full flows offered at a multiple of the rate the full-flow phase sustained,
// open loop (a flow starts when it is due, whatever the server's state), for a while. A stamp
// request the server refuses (503) ends its flow; an approval it refuses is sent again. Measured:
// the goodput (flows finished inside the window) against the sustained rate, how quickly the
// admitted writes and the refusals were answered, whether every refusal said Retry-After, whether
// a parked poll was lost, and how the server answers a second after the load stops.
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// Starts flows on one event loop at a fixed rate over the pairs that are free; a flow due when
/// none is free is counted as not offered (the client's shortfall, not the server's). Loop-confined.
final class OpenLoopStarter: @unchecked Sendable {
    let loop: any EventLoop
    private var free: [FlowPair] = []
    private let rate: Double
    private let state: FlowState
    private var begun: UInt64 = 0
    private var timer: RepeatedTask?
    private(set) var started = 0
    private(set) var unoffered = 0

    init(loop: any EventLoop, pairs: [FlowPair], rate: Double, state: FlowState) {
        self.loop = loop
        self.rate = rate
        self.state = state
        self.free = pairs
        for pair in pairs { pair.whenFree = { [unowned self] in self.free.append($0) } }
    }

    func run() {
        loop.execute {
            self.begun = nowNanos()
            self.timer = self.loop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(1)) { _ in self.tick() }
        }
    }

    private func tick() {
        let now = nowNanos()
        guard now < state.end else {
            timer?.cancel()
            return
        }
        let due = Int(Double(now - begun) * rate / 1e9) + 1
        while started + unoffered < due {
            if let pair = free.popLast() {
                started += 1
                pair.begin(state)
            } else {
                unoffered += 1
            }
        }
    }

    /// A free pair, taken out of the rotation (for the probe after the load). On the loop.
    func takeFree() -> FlowPair? { free.popLast() }
}

extension StampdBench {
    func overload() async throws {
        guard options.overloadSeconds > 0, !overloadOwners.isEmpty else { return }
        let sustained = options.overloadBaseRate > 0 ? options.overloadBaseRate : sustainedFlowsPerSecond
        guard sustained > 0 else { throw BenchError.unexpected("overload: no sustained flow rate (run the full-flow phase or give --overload-base-rate)") }
        let offered = sustained * options.overloadFactor
        let pairs = overloadOwners.count
        let flowPairs = try await parkedPairs(owners: overloadOwners, customers: overloadCustomers)
        defer { for pair in flowPairs { pair.stop() } }
        // The pairs' loops, in the order parkedPairs placed them.
        let loops = (0..<min(options.threads, pairs)).map { flowPairs[$0].conn.loop }
        // The other owners' polls stay parked throughout (the pairs' own polls are answered and sent
        // again with every flow): each one answered other than 200 is an error of its poller.
        let expectedParked = pollers.count

        let seconds = options.overloadSeconds
        log(String(format: "%@: overload: %.0f flows/s offered (%.1f × the %.0f sustained) for %.0f s over %d pairs, %d polls parked",
                   name, offered, options.overloadFactor, sustained, seconds, pairs, pollers.count + 2 * pairs))
        let state = FlowState(windowNanos: UInt64(seconds * 1e9))
        let starters = loops.indices.map { index in
            OpenLoopStarter(loop: loops[index], pairs: flowPairs.enumerated().filter { $0.offset % loops.count == index }.map(\.element),
                            rate: offered / Double(loops.count), state: state)
        }
        let cpuBefore = serverCPU()
        let threadsBefore = pid.map { ThreadTimes.read($0) }
        let watch = CPUWatch(pid: pid, others: otherPids, postmaster: postmaster)
        state.begin()
        starters.forEach { $0.run() }
        // The parked polls, sampled while the load runs: never fewer than the other owners'.
        var fewestParked = Int.max
        while nowNanos() < state.end {
            fewestParked = min(fewestParked, try await parkedOnServer())
            await sleep(seconds: 0.5)
        }
        let cpuAfter = serverCPU()
        let stopped = nowNanos()
        let (cpuText, _) = watch.record(results, "o.\(name)")
        log("\(name): overload " + cpuText)
        if let pid, let threadsBefore {
            log("\(name): server threads during the overload (cores): \(ThreadTimes.read(pid).busiest(since: threadsBefore))")
        }
        let completed = state.completed.load(ordering: .relaxed)
        let (started, unoffered) = try await totals(starters)

        // A second after the load stops: is the server answering at once again?
        await sleep(seconds: max(0, 1 - Double(nowNanos() - stopped) / 1e9))
        let readyStart = nowNanos()
        let ready = try await get("/readyz")
        let readyMs = Double(nowNanos() - readyStart) / 1e6
        if ready.status != 200 { tally.error("overload: /readyz a second after the load: HTTP \(ready.status)") }
        let probeMs = try await probeFlow(starters)

        let settle = nowNanos() + 15_000_000_000
        while state.inProgress.load(ordering: .relaxed) > 0 && nowNanos() < settle { await sleep(seconds: 0.05) }
        if state.inProgress.load(ordering: .relaxed) > 0 {
            tally.error("overload: \(state.inProgress.load(ordering: .relaxed)) flows did not finish within 15 s after the window")
        }
        fewestParked = min(fewestParked, try await parkedOnServer())
        approvalsAnswered += state.approvalsAnswered.load(ordering: .relaxed)
        if fewestParked < expectedParked {
            tally.error("overload: \(fewestParked) polls parked at one moment, fewer than the \(expectedParked) other owners'")
        }
        let shed = state.shed.load(ordering: .relaxed)
        if state.shedWithoutRetryAfter.load(ordering: .relaxed) > 0 {
            tally.error("overload: \(state.shedWithoutRetryAfter.load(ordering: .relaxed)) refusals without Retry-After")
        }
        let goodput = Double(completed) / seconds
        let admitted = state.admitted.summary()
        let refusals = state.refusals.summary()
        let flowLatency = state.latencies.summary()
        log(String(format: "%@: overload: %d flows started (%.0f/s), %d not offered; %d finished in the window = %.0f flows/s"
                   + " (%.0f %% of %.0f sustained); %d stamp requests refused (%.0f/s), %d approvals refused and sent again",
                   name, started, Double(started) / seconds, unoffered, completed, goodput, goodput / sustained * 100, sustained,
                   shed, Double(shed) / seconds, state.refused.load(ordering: .relaxed)))
        log("\(name): overload: admitted writes answered \(admitted); refusals \(refusals); flows \(flowLatency)")
        log(String(format: "%@: overload: fewest parked %d (other owners %d); a second after: /readyz in %.1f ms, a whole flow in %.1f ms",
                   name, fewestParked, expectedParked, readyMs, probeMs))
        let key = "o.\(name)"
        results.set("\(key).seconds", seconds)
        results.set("\(key).pairs", pairs)
        results.set("\(key).sustained_flows_per_s", sustained)
        results.set("\(key).offered_flows_per_s", offered)
        results.set("\(key).started_flows_per_s", Double(started) / seconds)
        results.set("\(key).unoffered", unoffered)
        results.set("\(key).goodput_flows_per_s", goodput)
        results.set("\(key).goodput_ratio", goodput / sustained)
        results.set("\(key).shed", shed)
        results.set("\(key).shed_per_s", Double(shed) / seconds)
        results.set("\(key).approvals_refused", state.refused.load(ordering: .relaxed))
        results.set("\(key).admitted_p50_ms", admitted.p50)
        results.set("\(key).admitted_p99_ms", admitted.p99)
        results.set("\(key).admitted_max_ms", admitted.max)
        results.set("\(key).refusal_p50_ms", refusals.p50)
        results.set("\(key).refusal_p99_ms", refusals.p99)
        results.set("\(key).flow_p50_ms", flowLatency.p50)
        results.set("\(key).flow_p99_ms", flowLatency.p99)
        results.set("\(key).parked_expected", expectedParked)
        results.set("\(key).parked_fewest", fewestParked)
        results.set("\(key).readyz_after_ms", readyMs)
        results.set("\(key).flow_after_ms", probeMs)
        if let before = cpuBefore, let after = cpuAfter {
            results.set("\(key).server_cpu_cores", (after - before) / (Double(stopped - (state.end - UInt64(seconds * 1e9))) / 1e9))
        }
    }

    private func totals(_ starters: [OpenLoopStarter]) async throws -> (started: Int, unoffered: Int) {
        var started = 0, unoffered = 0
        for starter in starters {
            let (s, u) = try await starter.loop.submit { (starter.started, starter.unoffered) }.get()
            started += s
            unoffered += u
        }
        return (started, unoffered)
    }

    /// One flow from start to end on a free pair, after the load: its milliseconds.
    private func probeFlow(_ starters: [OpenLoopStarter]) async throws -> Double {
        let starter = starters[0]
        let deadline = nowNanos() + 10_000_000_000
        while nowNanos() < deadline {
            let done = starter.loop.makePromise(of: Void.self)
            let probe = FlowState(windowNanos: 10_000_000_000)
            let start = nowNanos()
            let begun = try await starter.loop.submit { () -> Bool in
                guard let pair = starter.takeFree() else { return false }
                probe.begin()
                pair.whenFree = { _ in done.succeed() }
                pair.begin(probe)
                return true
            }.get()
            guard begun else {
                done.succeed()
                await sleep(seconds: 0.01)
                continue
            }
            try await wait(done.futureResult, seconds: 10, what: "a flow after the overload")
            let milliseconds = Double(nowNanos() - start) / 1e6
            if probe.completed.load(ordering: .relaxed) != 1 {
                tally.error("overload: a flow a second after the load did not finish (refused: \(probe.shed.load(ordering: .relaxed)))")
            }
            return milliseconds
        }
        throw BenchError.unexpected("overload: no pair came free within 10 s after the load")
    }
}
