// The counter code: a short number only people at the counter can see, which changes every
// minute. It is an HMAC of the minute under a per-store secret (as TOTP is), so any instance
// computes it without shared state, and the secret never leaves the database. The previous
// minute's code is accepted too, so a code read just before it changes still works.
import Crypto
import Foundation
import Storage

/// The code the store's page shows now.
public struct CounterCodeNow: Codable, Sendable, Equatable {
    public var code: String
    /// When the page shows the next code (this one is accepted for one more period after).
    public var changesAt: Date
    public var periodSeconds: Int
}

enum CounterCode {
    static let periodSeconds: Int64 = 60
    static let digits = 6

    static func newSecret() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    /// The period `date` falls in.
    static func window(_ date: Date) -> Int64 {
        let seconds = date.millis / 1000
        return seconds >= 0 ? seconds / periodSeconds : (seconds - periodSeconds + 1) / periodSeconds
    }

    static func code(secret: [UInt8], window: Int64) -> String {
        let mac = HMAC<SHA256>.authenticationCode(for: Array("counter:\(window)".utf8), using: SymmetricKey(data: secret))
        let bytes = Array(mac)
        let number = (UInt32(bytes[0]) << 24 | UInt32(bytes[1]) << 16 | UInt32(bytes[2]) << 8 | UInt32(bytes[3])) % 1_000_000
        let text = String(number)
        return String(repeating: "0", count: digits - text.count) + text
    }

    /// True when `typed` is this period's code or the previous one's.
    static func accepts(_ typed: String, secret: [UInt8], at now: Date) -> Bool {
        let current = window(now)
        var matched = false
        for candidate in [current, current - 1] {
            // Both compared, in constant time, whichever matches.
            if constantTimeEqual(Array(code(secret: secret, window: candidate).utf8), Array(typed.utf8)) { matched = true }
        }
        return matched
    }

    /// A code as typed: 6 ASCII digits, spaces ignored.
    static func digits(_ text: String) throws -> String {
        let typed = text.filter { $0 != " " && $0 != "-" }
        guard typed.count == digits, typed.allSatisfy({ $0.isASCII && $0.isNumber }) else {
            throw StampError.invalid("counterCode", "the counter code is the 6 digits shown at the counter")
        }
        return typed
    }
}

extension StampService {
    /// The counter code to show now, for the store's members.
    public func counterCode(_ principal: Principal, storeId: String) async throws -> CounterCodeNow {
        let now = clock.now()
        let secret = try await read { connection in
            try await Self.requireMember(principal, of: storeId, on: connection)
            return try await Self.counterSecret(of: storeId, on: connection)
        }
        let window = CounterCode.window(now)
        return CounterCodeNow(code: CounterCode.code(secret: secret, window: window),
                              changesAt: Date(millis: (window + 1) * CounterCode.periodSeconds * 1000),
                              periodSeconds: Int(CounterCode.periodSeconds))
    }

    static func counterSecret(of storeId: String, on connection: any SQLSession) async throws -> [UInt8] {
        guard let secret = try await connection.queryFirst("SELECT counter_secret FROM stores WHERE id = ?", storeId,
                                                     row: { try $0.optional(0, as: [UInt8].self) }) ?? nil,
              secret.count == 32 else {
            throw StampError(.unavailable, "the store has no counter secret")
        }
        return secret
    }
}
