// Password hashing (scrypt on a bounded pool of its own threads) and bearer tokens.
import Blocking
import Crypto
import _CryptoExtras
import Foundation

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

    /// Hashes waiting for a thread now.
    public var waiting: Int { threads.waiting }

    /// Runs one hash on the pool; a full line or a stopped pool is `unavailable` with `Retry-After`.
    /// A caller cancelled while waiting (its client hung up) is never hashed for.
    private func onPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        do {
            return try await threads.run(limit: maximumWaiting, body)
        } catch BlockingPoolError.full {
            throw StampError(.unavailable, "too many sign-ins are being checked right now; try again shortly", retryAfter: 1)
        } catch BlockingPoolError.shutDown {
            throw StampError(.unavailable, "the server is shutting down", retryAfter: 1)
        }
    }

    /// `scrypt$logN$r$p$salt$hash`, salt and hash in base64.
    public func hash(_ password: String) async throws -> String {
        let cost = self.cost
        return try await onPool {
            var salt = [UInt8](repeating: 0, count: 16)
            var generator = SystemRandomNumberGenerator()
            for i in salt.indices { salt[i] = generator.next() }
            let key = try Self.derive(password, salt: salt, cost: cost)
            return "scrypt$\(cost.logN)$\(cost.r)$\(cost.p)$\(Data(salt).base64EncodedString())$\(Data(key).base64EncodedString())"
        }
    }

    /// True when `password` matches `stored`, whatever cost `stored` was made with.
    public func verify(_ password: String, against stored: String) async throws -> Bool {
        let parts = stored.split(separator: "$").map(String.init)
        guard parts.count == 6, parts[0] == "scrypt",
              let logN = Int(parts[1]), let r = Int(parts[2]), let p = Int(parts[3]),
              let salt = Data(base64Encoded: parts[4]), let expected = Data(base64Encoded: parts[5]),
              (1...20).contains(logN), (1...32).contains(r), (1...16).contains(p)
        else {
            // No password opens it (a held card's row); spend the time a real check takes anyway.
            try await verifyDecoy(password)
            return false
        }
        let cost = PasswordCost(logN: logN, r: r, p: p)
        return try await onPool {
            let key = try Self.derive(password, salt: Array(salt), cost: cost)
            return constantTimeEqual(key, Array(expected))
        }
    }

    /// A hash of a random password, to spend the same time on an unknown login as on a known one.
    public func verifyDecoy(_ password: String) async throws {
        let cost = self.cost
        _ = try await onPool { try Self.derive(password, salt: [UInt8](repeating: 7, count: 16), cost: cost) }
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
