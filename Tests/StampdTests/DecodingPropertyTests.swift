// Property tests for request decoding and validation: seeded random and mutated inputs must
// never trap, and a live server must answer every one of them without a 5xx.
import Foundation
import NIOCore
import NIOHTTP1
import Testing
@testable import StampHTTP

/// A small deterministic generator (SplitMix64), so a failure names the seed that reproduces it.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

enum Mutations {
    static let seeds: [String] = [
        #"{"role":"customer","login":"someone@example.com","password":"long enough","name":"Sam"}"#,
        #"{"kind":"stamp","count":3}"#,
        #"{"name":"Bean","rewardItem":"Latte","stampsPerReward":10,"latitude":37.5,"longitude":127.0,"menu":[{"name":"Tea","price":3000}]}"#,
        #"{"to":"friend@example.com","count":2}"#,
        #"{"reason":"out of beans"}"#,
    ]
    static let interesting: [[UInt8]] = [
        Array("null".utf8), Array("true".utf8), Array("-1".utf8), Array("1e309".utf8), Array("9223372036854775808".utf8),
        Array("\"\\u0000\"".utf8), Array("\"\\ud800\"".utf8), [0xff], [0xc3], [0xe2, 0x82], Array("[[[[".utf8),
        Array("{}".utf8), Array("\"".utf8), Array(",".utf8), Array("3.0".utf8), Array("1.5".utf8),
    ]

    /// One random edit: flip, insert, delete, splice an interesting token, or duplicate a slice.
    static func mutate(_ input: [UInt8], using random: inout SeededGenerator) -> [UInt8] {
        var bytes = input
        for _ in 0..<Int.random(in: 1...4, using: &random) {
            let position = bytes.isEmpty ? 0 : Int.random(in: 0..<bytes.count, using: &random)
            switch Int.random(in: 0..<5, using: &random) {
            case 0 where !bytes.isEmpty: bytes[position] ^= UInt8.random(in: 1...255, using: &random)
            case 1: bytes.insert(UInt8.random(in: 0...255, using: &random), at: position)
            case 2 where !bytes.isEmpty: bytes.remove(at: position)
            case 3: bytes.insert(contentsOf: interesting.randomElement(using: &random)!, at: position)
            default:
                guard !bytes.isEmpty else { continue }
                let end = min(bytes.count, position + Int.random(in: 1...16, using: &random))
                bytes.insert(contentsOf: bytes[position..<end], at: position)
            }
        }
        return bytes
    }
}

@Suite(.timeLimit(.minutes(2))) struct DecodingPropertyTests {
    func request(body: [UInt8], target: String = "/v1/accounts") -> Request {
        Request(method: .POST, uri: target, pathSegments: [], query: [:],
                headers: ["Content-Type": "application/json"], body: ByteBuffer(bytes: body), id: "t",
                clientAddress: "127.0.0.1", logger: .init(label: "t"))
    }

    /// Every mutated body either decodes into fields or is refused with a 400 or 415 naming why.
    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func mutatedBodiesNeverTrapAndAreRefusedCleanly(seed: UInt64) throws {
        var random = SeededGenerator(state: seed)
        let allowed: Set<String> = ["role", "login", "password", "name", "kind", "count", "menu", "latitude", "to"]
        for _ in 0..<5_000 {
            let body = Mutations.mutate(Array(Mutations.seeds.randomElement(using: &random)!.utf8), using: &random)
            do {
                let input = try JSONInput(request(body: body), allowed: allowed)
                _ = try? input.string("login")
                _ = try? input.int("count")
                _ = try? input.double("latitude")
                _ = try? input.array("menu")
                _ = input.canonical
            } catch let error as HTTPError {
                #expect([400, 415].contains(error.status.code), "seed \(seed): \(error.status) for \(body)")
            }
        }
    }

    @Test(arguments: [5, 6] as [UInt64])
    func mutatedTargetsNeverTrap(seed: UInt64) {
        var random = SeededGenerator(state: seed)
        let targets = ["/v1/stores?q=latte&lat=37.5&lon=127&limit=5", "/v1/events?after=12&timeout=3",
                       "/v1/stores/sto_abc/requests?status=pending", "/v1/cards/%E2%98%95/ledger"]
        for _ in 0..<5_000 {
            let bytes = Mutations.mutate(Array(targets.randomElement(using: &random)!.utf8), using: &random)
            if let parsed = Request.parseTarget(String(decoding: bytes, as: UTF8.self)) {
                #expect(parsed.segments.allSatisfy { !$0.utf8.contains(0) })
            }
        }
    }

    /// Through a live server: mutated bodies against every JSON endpoint never get a 5xx,
    /// and the server keeps serving.
    @Test func aLiveServerAnswersMutatedRequestsWithoutA5xx() async throws {
        let server = try await TestServer.start()
        let owner = try await server.signUp("owner")
        let customer = try await server.signUp("customer")
        let store = try await server.createStore(owner)
        let request = try await server.askForStamps(customer, store: store)
        let endpoints: [(String, String, String)] = [
            ("POST", "/v1/accounts", ""), ("POST", "/v1/sessions", ""),
            ("POST", "/v1/stores", owner.token), ("PATCH", "/v1/stores/\(store)", owner.token),
            ("POST", "/v1/stores/\(store)/requests", customer.token),
            ("POST", "/v1/requests/\(request)/reject", owner.token),
            ("POST", "/v1/cards/\(store)/gifts", customer.token),
            ("POST", "/v1/stores/\(store)/stamps", owner.token),
        ]
        var random = SeededGenerator(state: 42)
        let client = try await server.connect()
        for _ in 0..<600 {
            let (method, path, token) = endpoints.randomElement(using: &random)!
            let body = Mutations.mutate(Array(Mutations.seeds.randomElement(using: &random)!.utf8), using: &random)
            var head = "\(method) \(path) HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n"
            if !token.isEmpty { head += "Authorization: Bearer \(token)\r\n" }
            try await client.send(Array((head + "\r\n").utf8) + body)
            let response = try await client.readResponse()
            #expect(response.status < 500, "\(method) \(path) with \(String(decoding: body, as: UTF8.self)): \(response.text)")
        }
        #expect(try await client.request("GET", "/healthz").status == 200)
        client.close()
        try await server.stop()
    }
}
