// Load shedding: a bound on the requests doing work at once, decided on the event loop before
// any of the work (authentication, decoding, the database, the hasher). Past the bound a request
// is answered 503 with Retry-After at the cost of a /healthz, so a crowd gets quick refusals
// while the work admitted keeps its latency, instead of every request waiting in the writer's
// queue until all of them time out.
import Metrics
import Synchronization

/// How a route's work is admitted while the server is busy.
public enum Admission: Sendable {
    /// New work: refused once `AdmissionGate.limit` requests are at work.
    case normal
    /// Work that finishes what was admitted before (a decision on a request, an undo): it may use
    /// the reserve above the limit, so that a flow once begun can end even while new ones are
    /// refused. The reserve can be as large as the limit: such work follows work that was admitted.
    case finishing
    /// Never refused: long polls (a parked poll costs no work; refusing it would only make its
    /// client come back sooner) and health checks (they must answer while the rest is refused).
    case always
}

/// The requests at work (an endpoint's task is running; a parked poll is not at work) in one
/// process, and the bound on them.
public final class AdmissionGate: Sendable {
    /// New work is refused while this many requests are at work.
    public let limit: Int
    /// Finishing work is refused while `limit + reserve` are.
    public let reserve: Int
    private let atWork = Atomic<Int>(0)
    private let refusedNormal = Counter(label: "stampd_http_requests_shed_total", dimensions: [("admission", "normal")])
    private let refusedFinishing = Counter(label: "stampd_http_requests_shed_total", dimensions: [("admission", "finishing")])

    /// The seconds a refused client is asked to wait.
    static let retryAfterSeconds = 1

    /// `limit` requests at work at once, and as many again for finishing work.
    public init(limit: Int) {
        precondition(limit > 0, "the admission limit must be positive")
        self.limit = limit
        self.reserve = limit
    }

    /// Takes a place for a request of `admission` (`.normal` or `.finishing`; the responder never
    /// asks for `.always`), or says no. A place taken is given back with `leave`.
    func enter(_ admission: Admission) -> Bool {
        let finishing = admission == .finishing
        // Add first and take it back when over: two requests racing for the last place never both get it.
        if atWork.wrappingAdd(1, ordering: .relaxed).newValue <= (finishing ? limit + reserve : limit) { return true }
        atWork.wrappingSubtract(1, ordering: .relaxed)
        (finishing ? refusedFinishing : refusedNormal).increment()
        return false
    }

    func leave() {
        atWork.wrappingSubtract(1, ordering: .relaxed)
    }

    /// The requests at work now.
    public var current: Int { atWork.load(ordering: .relaxed) }

    static let busy = {
        var response = Response.problem(HTTPError(
            .serviceUnavailable, detail: "the server is busy: try again in a second",
            headers: [("Retry-After", String(retryAfterSeconds))]))
        response.countedElsewhere = true
        return response
    }()
}
