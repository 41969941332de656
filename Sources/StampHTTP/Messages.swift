// Requests as endpoints see them, and the answers they give.
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import StampCore

/// A complete request: head and body, with its path split and its query decoded.
public struct Request: Sendable {
    public let method: HTTPMethod
    public let uri: String
    /// Percent-decoded path segments, without empty ones.
    public let pathSegments: [String]
    public let query: [String: String]
    public let headers: HTTPHeaders
    public let body: ByteBuffer
    public let id: String
    /// The TCP peer's address (per-address limits use it).
    public let clientAddress: String
    public let logger: Logger
    /// Filled in by the router from the route template, e.g. `storeId`.
    public internal(set) var parameters: [String: String] = [:]

    public var bodyBytes: [UInt8] { Array(body.readableBytesView) }

    public func parameter(_ name: String) -> String { parameters[name] ?? "" }

    /// Splits and decodes the target; nil when its percent-encoding or UTF-8 is broken.
    static func parseTarget(_ uri: String) -> (segments: [String], query: [String: String])? {
        let target = uri.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let parts = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        let path = parts.first.map(String.init) ?? ""
        guard path.hasPrefix("/") else { return nil }
        var segments: [String] = []
        for raw in path.split(separator: "/") {
            guard let segment = percentDecode(raw, plusIsSpace: false) else { return nil }
            segments.append(segment)
        }
        var query: [String: String] = [:]
        if parts.count == 2 {
            for pair in parts[1].split(separator: "&") where !pair.isEmpty {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard let key = percentDecode(kv[0], plusIsSpace: true),
                      let value = percentDecode(kv.count > 1 ? kv[1] : "", plusIsSpace: true) else { return nil }
                if query[key] == nil { query[key] = value }
            }
        }
        return (segments, query)
    }

    static func percentDecode(_ text: Substring, plusIsSpace: Bool) -> String? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            switch byte {
            case UInt8(ascii: "%"):
                guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                    return nil
                }
                bytes.append(high << 4 | low)
            case UInt8(ascii: "+") where plusIsSpace:
                bytes.append(UInt8(ascii: " "))
            default:
                bytes.append(byte)
            }
        }
        guard let decoded = String(validating: bytes, as: UTF8.self), !decoded.utf8.contains(0) else { return nil }
        return decoded
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

public struct Response: Sendable {
    public var status: HTTPResponseStatus
    public var headers: HTTPHeaders
    public var body: ByteBuffer
    /// A refusal counted by a metric of its own (load shed): not logged one by one, which a crowd
    /// would turn into thousands of lines a second.
    var countedElsewhere = false

    public init(status: HTTPResponseStatus, headers: HTTPHeaders = [:], body: ByteBuffer = ByteBuffer()) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A JSON answer; API answers are never cached.
    public static func json<T: Encodable>(_ value: T, status: HTTPResponseStatus = .ok) -> Response {
        do {
            return Response(status: status,
                            headers: ["Content-Type": "application/json", "Cache-Control": "no-store"],
                            body: ByteBuffer(bytes: try StampJSON.bytes(value)))
        } catch {
            return .problem(HTTPError(.internalServerError, detail: "the answer could not be encoded"))
        }
    }

    /// An RFC 9457 problem document.
    public static func problem(_ error: HTTPError) -> Response {
        var object: [String: String] = ["type": error.type, "title": error.status.reasonPhrase, "detail": error.detail]
        if let field = error.field { object["field"] = field }
        var json = "{"
        for (index, key) in ["type", "title", "detail", "field"].enumerated() where object[key] != nil {
            if index > 0 { json += "," }
            json += "\"\(key)\":\(jsonString(object[key]!))"
        }
        json += ",\"status\":\(error.status.code)"
        if let current = error.current { json += ",\(jsonString(current.name)):\(current.json)" }
        json += "}"
        var headers: HTTPHeaders = ["Content-Type": "application/problem+json", "Cache-Control": "no-store"]
        for (name, value) in error.headers { headers.add(name: name, value: value) }
        return Response(status: error.status, headers: headers, body: ByteBuffer(string: json))
    }

    public static func text(_ text: String, contentType: String = "text/plain; charset=utf-8",
                            status: HTTPResponseStatus = .ok) -> Response {
        Response(status: status, headers: ["Content-Type": contentType], body: ByteBuffer(string: text))
    }

    static func jsonString(_ value: String) -> String {
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

/// An error answered as `application/problem+json`.
public struct HTTPError: Error, Sendable {
    public var status: HTTPResponseStatus
    public var detail: String
    public var field: String?
    public var headers: [(String, String)]
    /// A resource's current state, as a member of the document (see `StampError.current`).
    public var current: StampError.Current?

    public init(_ status: HTTPResponseStatus, detail: String, field: String? = nil, headers: [(String, String)] = []) {
        self.status = status
        self.detail = detail
        self.field = field
        self.headers = headers
    }

    /// `https://stampd.dev/problems/not-found` style: stable, one per status.
    public var type: String {
        let slug = status.reasonPhrase.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "-" }
        return "https://stampd.dev/problems/" + String(slug)
    }

    static func invalid(_ field: String, _ detail: String) -> HTTPError {
        HTTPError(.badRequest, detail: detail, field: field)
    }

    init(_ error: StampError) {
        let status: HTTPResponseStatus
        var headers: [(String, String)] = []
        switch error.kind {
        case .invalid: status = .badRequest
        case .unauthenticated:
            status = .unauthorized
            headers.append(("WWW-Authenticate", "Bearer"))
        case .forbidden: status = .forbidden
        case .notFound: status = .notFound
        case .conflict: status = .conflict
        case .unprocessable: status = .unprocessableEntity
        case .rateLimited: status = .tooManyRequests
        case .unavailable: status = .serviceUnavailable
        }
        if let retryAfter = error.retryAfter { headers.append(("Retry-After", String(retryAfter))) }
        self.init(status, detail: error.detail, field: error.field, headers: headers)
        current = error.current
    }
}

/// What an endpoint gives back, and what the connection does with it: write an answer, park a
/// long poll, or run work as a task on the connection's event loop and then do what it gives back.
public enum Reply: Sendable {
    case response(Response)
    case poll(LongPoll)
    /// Its errors are problem answers already (the router settles them).
    case later(@Sendable () async -> Reply)
}
