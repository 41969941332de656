// The JSON a stamp flow writes directly (JSONWriting.swift) is byte for byte what Foundation's
// encoder, as stampd configures it, writes for the same values: every optional present and
// absent, strings with every character JSON escapes, slashes, non-ASCII and emoji.
import Foundation
@testable import StampCore
import Testing

@Suite(.timeLimit(.minutes(1))) struct JSONWritingTests {
    static let awkward = ["", "Kim \"the\" barista", "back\\slash / and /slashes/", "tab\tnew\nline\rret",
                          String((0..<32).map { Character(Unicode.Scalar(UInt8($0))) }) + "\u{7F}",
                          "Café ☕️ 카페 👩🏽‍🍳", "\u{2028}\u{2029}", "</script>"]

    static func requests() -> [StampRequest] {
        let at = Date(millis: 1_796_000_123_456)
        var all: [StampRequest] = []
        for (index, text) in awkward.enumerated() {
            let member = MemberRef(id: "acc_\(index)", name: text)
            var request = StampRequest(
                id: "req_\(index)", storeId: "sto_x", storeName: text, customerId: "acc_c", customerName: text,
                kind: index % 2 == 0 ? .stamp : .reward, count: index + 1, status: .pending, reason: nil,
                createdAt: at, expiresAt: at.addingTimeInterval(600), decidedAt: nil, decidedBy: nil)
            all.append(request)
            request.status = .approved
            request.reason = text
            request.decidedAt = at.addingTimeInterval(1.5)
            request.decidedBy = member
            request.atCounter = true
            request.reversedAt = Date(millis: -1_234)  // before 1970: the timestamp's own path
            request.reversedBy = member
            request.customerCard = CustomerCard(stamps: -3, rewards: Int.max, visits: 0, memberSince: at)
            all.append(request)
        }
        return all
    }

    @Test func everyFlowTypeIsWrittenAsFoundationEncodesIt() throws {
        for request in Self.requests() {
            let card = Card(customerId: request.customerId, storeId: request.storeId, storeName: request.storeName,
                            rewardItem: request.customerName, stampsPerReward: 10, stamps: request.count,
                            rewards: Int.min, updatedAt: request.createdAt)
            try expectSame(request)
            try expectSame(card)
            try expectSame(Approval(request: request, card: card))
            try expectSame(RequestChange(request: request))
            if let by = request.decidedBy { try expectSame(by) }
            if let customerCard = request.customerCard { try expectSame(customerCard) }
        }
    }

    @Test func whatIsWrittenDirectlyDecodesToTheSameValue() throws {
        for request in Self.requests() {
            let decoded = try StampJSON.decoder().decode(StampRequest.self, from: Data(try StampJSON.bytes(request)))
            #expect(decoded == request)
        }
    }

    private func expectSame<T: Encodable & JSONWritable>(_ value: T, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let direct = try StampJSON.bytes(value)
        let foundation = try StampJSON.encodedByFoundation(value)
        #expect(String(decoding: direct, as: UTF8.self) == String(decoding: foundation, as: UTF8.self),
                sourceLocation: sourceLocation)
    }
}
