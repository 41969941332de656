// Small shared pieces: the clock, random identifiers, the JSON coding of the API.
import Foundation
import Synchronization

/// Where use cases read the time. Tests move a `ManualClock` instead of sleeping.
public protocol StampClock: Sendable {
    func now() -> Date
}

/// A wall clock and a monotonic clock that tests move: `advance` is time passing (both move),
/// `stepWall` is the wall clock set (only it moves). As a `StampClock` it is the bare wall clock;
/// `forward()` is a `ForwardClock` over the two, as a running server has.
public final class ManualClock: StampClock {
    private let current: Mutex<(wall: Date, monotonic: UInt64)>
    public init(_ start: Date = Date(timeIntervalSince1970: 1_800_000_000)) { current = Mutex((start, 1_000_000_000)) }
    public func now() -> Date { current.withLock { $0.wall } }
    public func advance(by seconds: TimeInterval) {
        precondition(seconds >= 0, "time passing does not go back: set the wall clock with stepWall(by:)")
        current.withLock {
            $0.wall += seconds
            $0.monotonic += UInt64(seconds * 1e9)
        }
    }
    public func stepWall(by seconds: TimeInterval) { current.withLock { $0.wall += seconds } }

    public func forward(stepped: @escaping @Sendable (Double) -> Void = { _ in }) -> ForwardClock {
        ForwardClock(wall: { Int64((self.now().timeIntervalSince1970 * 1e9).rounded()) },
                     monotonic: { self.current.withLock { $0.monotonic } }, stepped: stepped)
    }
}

extension Date {
    /// Milliseconds since 1970, as stored in SQLite.
    var millis: Int64 { Int64((timeIntervalSince1970 * 1000).rounded(.down)) }
    init(millis: Int64) { self.init(timeIntervalSince1970: Double(millis) / 1000) }
}

enum Identifier {
    /// A prefixed random identifier: 80 bits, so ids reveal neither counts nor order.
    static func make(_ prefix: String) -> String {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("0123456789abcdefghjkmnpqrstvwxyz".utf8)  // Crockford base32
        var out = [UInt8](prefix.utf8)
        out.append(UInt8(ascii: "_"))
        for _ in 0..<16 { out.append(alphabet[Int(generator.next() % 32)]) }
        return String(decoding: out, as: UTF8.self)
    }
}

/// The JSON coding shared by answers, stored event data and idempotent replays:
/// timestamps are RFC 3339 UTC with milliseconds.
public enum StampJSON {
    public static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes, .sortedKeys]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(formatTimestamp(date))
        }
        return encoder
    }

    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let text = try decoder.singleValueContainer().decode(String.self)
            guard let date = parseTimestamp(text) else {
                throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a timestamp"))
            }
            return date
        }
        return decoder
    }

    /// One configured encoder, shared: encoding does not mutate it, and making one per event
    /// showed up inside the write transaction.
    private static let sharedEncoder = encoder()

    public static func encode<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try bytes(value), as: UTF8.self)
    }

    /// The value's JSON: written directly for the types of a stamp flow (`JSONWriting.swift`),
    /// by the shared encoder for the rest.
    public static func bytes<T: Encodable>(_ value: T) throws -> [UInt8] {
        if let writable = value as? any JSONWritable {
            var json = JSONWriter()
            writable.write(to: &json)
            return json.bytes
        }
        return Array(try sharedEncoder.encode(value))
    }

    /// Always the shared encoder: what the direct writers must match.
    static func encodedByFoundation<T: Encodable>(_ value: T) throws -> [UInt8] {
        Array(try sharedEncoder.encode(value))
    }

    /// `2026-11-29T23:05:01.123Z`
    public static func formatTimestamp(_ date: Date) -> String {
        let millis = date.millis
        let seconds = millis >= 0 ? millis / 1000 : (millis - 999) / 1000
        let fraction = Int(millis - seconds * 1000)
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(fraction), 3))Z"
    }

    public static func parseTimestamp(_ text: String) -> Date? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return date }
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text)
    }
}
