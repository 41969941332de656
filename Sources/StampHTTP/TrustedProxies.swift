// Who the client is behind a load balancer: the TCP peer is the proxy, and the client's own
// address is in X-Forwarded-For. That header is believed only from proxies the operator names,
// and only up to the first hop that is not one of them (a client can write any header itself).
import Foundation

public struct TrustedProxies: Sendable, Equatable {
    /// An address range: bytes of the network (4 or 16) and the prefix length.
    struct Range: Sendable, Equatable {
        let network: [UInt8]
        let prefix: Int

        func contains(_ address: [UInt8]) -> Bool {
            guard address.count == network.count else { return false }
            var left = prefix
            for (a, b) in zip(address, network) {
                if left <= 0 { return true }
                let bits = min(8, left)
                let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
                if a & mask != b & mask { return false }
                left -= bits
            }
            return true
        }
    }

    let ranges: [Range]

    public static let none = TrustedProxies(ranges: [])

    /// Reads "127.0.0.1, 10.0.0.0/8, fd00::/8": addresses or CIDR ranges, comma separated.
    public init(parsing text: String) throws {
        var ranges: [Range] = []
        for item in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !item.isEmpty {
            let parts = item.split(separator: "/", maxSplits: 1)
            guard let network = Self.bytes(of: String(parts[0])) else { throw TrustedProxiesError(item: item) }
            let prefix = parts.count == 2 ? Int(parts[1]) : network.count * 8
            guard let prefix, (0...(network.count * 8)).contains(prefix) else { throw TrustedProxiesError(item: item) }
            ranges.append(Range(network: network, prefix: prefix))
        }
        self.ranges = ranges
    }

    init(ranges: [Range]) { self.ranges = ranges }

    public var isEmpty: Bool { ranges.isEmpty }

    func trusts(_ address: String) -> Bool {
        guard !ranges.isEmpty, let bytes = Self.bytes(of: address) else { return false }
        return ranges.contains { $0.contains(bytes) }
    }

    /// The client's address: the peer's, unless the peer is a trusted proxy; then the nearest
    /// address in X-Forwarded-For that is not a trusted proxy (the farthest one if all are).
    func client(peer: String, forwardedFor values: [String]) -> String {
        guard trusts(peer) else { return peer }
        let hops = values.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }
        guard !hops.isEmpty else { return peer }
        for hop in hops.reversed() {
            guard Self.bytes(of: hop) != nil else { return peer }  // a malformed list is not believed
            if !trusts(hop) { return hop }
        }
        return hops[0]
    }

    static func bytes(of address: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, address, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, address, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }
}

public struct TrustedProxiesError: Error, CustomStringConvertible {
    let item: String
    public var description: String { "\(item) is not an IP address or CIDR range" }
}
