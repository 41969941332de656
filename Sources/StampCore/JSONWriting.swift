// JSON for the few values every stamp flow encodes (a request, a card, an approval), written
// straight into bytes. Foundation's JSONEncoder builds a tree of boxed values, sorts each
// object's keys and then serializes it: under full flows that was a quarter of the SQLite
// writer's time, because an event's data is encoded inside the write transaction. These
// writers give the same bytes as `StampJSON.encoder()` (keys sorted, absent optionals left out,
// slashes not escaped); `JSONWritingTests` compares the two for every type here.
import Foundation

/// A value that writes its own JSON, with its keys in sorted order.
protocol JSONWritable {
    func write(to json: inout JSONWriter)
}

/// Bytes of JSON being written: an object at a time, keys given in sorted order by the caller.
struct JSONWriter {
    private(set) var bytes: [UInt8] = []
    /// Whether the object being written has a member yet (a comma goes before the next).
    private var hasMember = false

    init(capacity: Int = 512) {
        bytes.reserveCapacity(capacity)
    }

    mutating func object(_ members: (inout JSONWriter) -> Void) {
        bytes.append(UInt8(ascii: "{"))
        let outer = hasMember
        hasMember = false
        members(&self)
        hasMember = outer
        bytes.append(UInt8(ascii: "}"))
    }

    private mutating func key(_ name: StaticString) {
        if hasMember { bytes.append(UInt8(ascii: ",")) }
        hasMember = true
        bytes.append(UInt8(ascii: "\""))
        name.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
    }

    mutating func member(_ name: StaticString, _ value: String) {
        key(name)
        string(value)
    }

    mutating func member(_ name: StaticString, _ value: String?) {
        if let value { member(name, value) }
    }

    mutating func member(_ name: StaticString, _ value: Int) {
        key(name)
        bytes.append(contentsOf: String(value).utf8)
    }

    mutating func member(_ name: StaticString, _ value: Bool) {
        key(name)
        bytes.append(contentsOf: value ? Array("true".utf8) : Array("false".utf8))
    }

    mutating func member(_ name: StaticString, _ value: Date) {
        key(name)
        bytes.append(UInt8(ascii: "\""))
        bytes.append(contentsOf: StampJSON.formatTimestamp(value).utf8)
        bytes.append(UInt8(ascii: "\""))
    }

    mutating func member(_ name: StaticString, _ value: Date?) {
        if let value { member(name, value) }
    }

    mutating func member<Value: JSONWritable>(_ name: StaticString, _ value: Value?) {
        guard let value else { return }
        key(name)
        value.write(to: &self)
    }

    /// A string as JSONEncoder writes one: `"` and `\` escaped, the control characters as
    /// `\b \f \n \r \t` or `\u00XX`, everything else (slashes, non-ASCII) as it is.
    private mutating func string(_ value: String) {
        bytes.append(UInt8(ascii: "\""))
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""): bytes.append(contentsOf: [0x5C, 0x22])
            case UInt8(ascii: "\\"): bytes.append(contentsOf: [0x5C, 0x5C])
            case 0x08: bytes.append(contentsOf: [0x5C, UInt8(ascii: "b")])
            case 0x0C: bytes.append(contentsOf: [0x5C, UInt8(ascii: "f")])
            case 0x0A: bytes.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: bytes.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: bytes.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: [0x5C, UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"),
                                          hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
            default: bytes.append(byte)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}

// Members in sorted key order (as `.sortedKeys` orders them: these keys sort the same by bytes
// and without case).

extension MemberRef: JSONWritable {
    func write(to json: inout JSONWriter) {
        json.object {
            $0.member("id", id)
            $0.member("name", name)
        }
    }
}

extension CustomerCard: JSONWritable {
    func write(to json: inout JSONWriter) {
        json.object {
            $0.member("memberSince", memberSince)
            $0.member("rewards", rewards)
            $0.member("stamps", stamps)
            $0.member("visits", visits)
        }
    }
}

extension StampRequest: JSONWritable {
    func write(to json: inout JSONWriter) {
        json.object {
            $0.member("atCounter", atCounter)
            $0.member("count", count)
            $0.member("createdAt", createdAt)
            $0.member("customerCard", customerCard)
            $0.member("customerId", customerId)
            $0.member("customerName", customerName)
            $0.member("decidedAt", decidedAt)
            $0.member("decidedBy", decidedBy)
            $0.member("expiresAt", expiresAt)
            $0.member("id", id)
            $0.member("kind", kind.rawValue)
            $0.member("reason", reason)
            $0.member("reversedAt", reversedAt)
            $0.member("reversedBy", reversedBy)
            $0.member("status", status.rawValue)
            $0.member("storeId", storeId)
            $0.member("storeName", storeName)
        }
    }
}

extension Card: JSONWritable {
    func write(to json: inout JSONWriter) {
        json.object {
            $0.member("customerId", customerId)
            $0.member("rewardItem", rewardItem)
            $0.member("rewards", rewards)
            $0.member("stamps", stamps)
            $0.member("stampsPerReward", stampsPerReward)
            $0.member("storeId", storeId)
            $0.member("storeName", storeName)
            $0.member("updatedAt", updatedAt)
        }
    }
}

extension Approval: JSONWritable {
    func write(to json: inout JSONWriter) {
        json.object {
            $0.member("card", card)
            $0.member("request", request)
        }
    }
}

extension RequestChange: JSONWritable {
    func write(to json: inout JSONWriter) {
        json.object { $0.member("request", request) }
    }
}
