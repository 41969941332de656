// Password hashing (scrypt on a bounded pool of its own threads) and bearer tokens.
import Blocking
import Crypto
import _CryptoExtras
import Foundation
import Synchronization

/// scrypt parameters, stored with every hash so they can be raised later without
/// invalidating existing passwords.
public struct PasswordCost: Sendable, Equatable {
    public var logN: Int
    public var r: Int
    public var p: Int

    /// About 32 MiB and 0.1 s per hash on this class of machine (OWASP's minimum is N = 2^17
    /// with r = 8 for interactive logins on faster CPUs; raise `logN` when hardware allows).
    public static let standard = PasswordCost(logN: 15, r: 8, p: 1)
    /// Only for tests and benchmarks, chosen explicitly with a flag: cheap, not safe.
    public static let insecureFast = PasswordCost(logN: 4, r: 1, p: 1)
}

public final class PasswordHasher: Sendable {
    public let cost: PasswordCost
    /// The most hashes that wait for a thread; past it a hash is refused at once (503), so a
    /// flood cannot make an honest sign-in wait behind it for long.
    public let maximumWaiting: Int
    private let threads: BlockingPool

    /// `threads` bounds how many hashes run at once; up to `maximumWaiting` more wait in line,
    /// so a burst of logins cannot take the event loops or the cooperative pool.
    public init(cost: PasswordCost = .standard, threads: Int = 2, maximumWaiting: Int = 16) {
        self.cost = cost
        self.maximumWaiting = maximumWaiting
        self.threads = BlockingPool(name: "password-hash", threads: threads)
    }

    /// Hashes waiting for a thread now, and hashes running.
    public var waiting: Int { line.withLock { $0.count } }
    public var running: Int { line.withLock { $0.running } }

    /// The hashes waiting, per client address, newest last: when the line is full, a newcomer
    /// from an address with fewer waiting takes the place of the newest from the address with the
    /// most, so a flood spread over many addresses still lets an honest sign-in through.
    private struct Line {
        var byClient: [String: [(id: UInt64, handle: JobHandle)]] = [:]
        var count = 0
        var running = 0
        var nextID: UInt64 = 0

        mutating func remove(_ id: UInt64, of client: String) {
            guard var entries = byClient[client], let index = entries.firstIndex(where: { $0.id == id }) else { return }
            entries.remove(at: index)
            byClient[client] = entries.isEmpty ? nil : entries
            count -= 1
        }
    }

    private let line = Mutex(Line())

    /// Runs one hash on the pool for `client`; a full line (no place to take) or a stopped pool
    /// is `unavailable` with `Retry-After`. A caller cancelled while waiting (its client hung up)
    /// is never hashed for, and its place is freed at once.
    private func onPool<T: Sendable>(client: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        let handle = JobHandle()
        let maximum = maximumWaiting
        let admitted = line.withLock { line -> (UInt64, JobHandle?)? in
            var shed: JobHandle?
            if line.count >= maximum {
                let mine = line.byClient[client]?.count ?? 0
                guard let (heaviest, entries) = line.byClient.max(by: { $0.value.count < $1.value.count }),
                      entries.count > mine + 1, let victim = entries.last else { return nil }
                line.remove(victim.id, of: heaviest)
                shed = victim.handle
            }
            line.nextID &+= 1
            line.byClient[client, default: []].append((line.nextID, handle))
            line.count += 1
            return (line.nextID, shed)
        }
        guard let (id, shed) = admitted else { throw Self.busy }
        shed?.withdraw(with: Self.busy)
        defer { line.withLock { $0.remove(id, of: client) } }
        do {
            return try await threads.run(handle: handle) { [self] in
                self.line.withLock { line in
                    line.remove(id, of: client)  // started: no longer a place in the line
                    line.running += 1
                }
                defer { self.line.withLock { $0.running -= 1 } }
                return try body()
            }
        } catch BlockingPoolError.shutDown {
            throw StampError(.unavailable, "the server is shutting down", retryAfter: 1)
        }
    }

    private static let busy = StampError(.unavailable, "too many sign-ins are being checked right now; try again shortly",
                                         retryAfter: 1)

    /// `scrypt$logN$r$p$salt$hash`, salt and hash in base64.
    public func hash(_ password: String, for client: String = "local") async throws -> String {
        let cost = self.cost
        return try await onPool(client: client) {
            var salt = [UInt8](repeating: 0, count: 16)
            var generator = SystemRandomNumberGenerator()
            for i in salt.indices { salt[i] = generator.next() }
            let key = try Self.derive(password, salt: salt, cost: cost)
            return "scrypt$\(cost.logN)$\(cost.r)$\(cost.p)$\(Data(salt).base64EncodedString())$\(Data(key).base64EncodedString())"
        }
    }

    /// True when `password` matches `stored`, whatever cost `stored` was made with.
    public func verify(_ password: String, against stored: String, for client: String = "local") async throws -> Bool {
        let parts = stored.split(separator: "$").map(String.init)
        guard parts.count == 6, parts[0] == "scrypt",
              let logN = Int(parts[1]), let r = Int(parts[2]), let p = Int(parts[3]),
              let salt = Data(base64Encoded: parts[4]), let expected = Data(base64Encoded: parts[5]),
              (1...20).contains(logN), (1...32).contains(r), (1...16).contains(p)
        else {
            // No password opens it (a held card's row); spend the time a real check takes anyway.
            try await verifyDecoy(password, for: client)
            return false
        }
        let cost = PasswordCost(logN: logN, r: r, p: p)
        return try await onPool(client: client) {
            let key = try Self.derive(password, salt: Array(salt), cost: cost)
            return constantTimeEqual(key, Array(expected))
        }
    }

    /// A hash of a random password, to spend the same time on an unknown login as on a known one.
    public func verifyDecoy(_ password: String, for client: String = "local") async throws {
        let cost = self.cost
        _ = try await onPool(client: client) { try Self.derive(password, salt: [UInt8](repeating: 7, count: 16), cost: cost) }
    }

    public func shutdown() { threads.shutdown() }

    private static func derive(_ password: String, salt: [UInt8], cost: PasswordCost) throws -> [UInt8] {
        let key = try KDF.Scrypt.deriveKey(
            from: Array(password.utf8), salt: salt, outputByteCount: 32,
            rounds: 1 << cost.logN, blockSize: cost.r, parallelism: cost.p)
        return key.withUnsafeBytes { Array($0) }
    }
}

func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var difference: UInt8 = 0
    for i in a.indices { difference |= a[i] ^ b[i] }
    return difference == 0
}

/// Bearer tokens: 32 random bytes in base64url; only their SHA-256 is stored.
public enum BearerToken {
    public static func generate() -> String {
        var bytes = [UInt8](repeating: 0, count: 32)
        var generator = SystemRandomNumberGenerator()
        for i in bytes.indices { bytes[i] = generator.next() }
        return Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    public static func digest(_ token: String) -> [UInt8] {
        Array(SHA256.hash(data: Array(token.utf8)))
    }
}
