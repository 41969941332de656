// Several stampd processes on one database: what one commits, the others hear through the
// database's notifications (PostgreSQL's LISTEN/NOTIFY, sent in the writing transaction and
// delivered at its commit), so that polls parked on any process wake, and a session revoked on
// one is refused by all. A notification can be lost (the listening connection drops, a process
// starts after the commit): then every parked poll reads again and what the process remembered
// of the log and of sessions is forgotten. Late, never missed.
import Foundation
import Logging
import ServiceLifecycle
import Storage

enum InstanceChannels {
    /// "<instance> <account>:<position> <account>:<position> …": the newest positions a commit wrote.
    static let events = "stampd_events"
    /// "<instance> <account> <hex digest>,<hex digest>…" or "<instance> <account> *" (every session).
    static let revocations = "stampd_revocations"
    /// PostgreSQL refuses payloads of 8,000 bytes or more: longer lists go in several notifications.
    static let payloadLimit = 7_000

    static func eventPayloads(instance: String, newest: [String: Int64]) -> [String] {
        var payloads: [String] = []
        var current = instance
        for (account, position) in newest.sorted(by: { $0.key < $1.key }) {
            let item = " \(account):\(position)"
            if current.utf8.count + item.utf8.count > payloadLimit {
                payloads.append(current)
                current = instance
            }
            current += item
        }
        if current != instance { payloads.append(current) }
        return payloads
    }

    /// The sender and the positions; nil when the payload is not one of ours.
    static func parseEvents(_ payload: String) -> (instance: String, newest: [String: Int64])? {
        let parts = payload.split(separator: " ")
        guard let instance = parts.first else { return nil }
        var newest: [String: Int64] = [:]
        for part in parts.dropFirst() {
            guard let colon = part.lastIndex(of: ":"), let position = Int64(part[part.index(after: colon)...]) else { return nil }
            newest[String(part[..<colon]), default: 0] = max(newest[String(part[..<colon]), default: 0], position)
        }
        return (String(instance), newest)
    }

    static func revocationPayload(instance: String, account: String, sessions: [[UInt8]]?) -> String {
        let list = sessions.map { $0.map(hex).joined(separator: ",") } ?? "*"
        return "\(instance) \(account) \(list.isEmpty ? "-" : list)"
    }

    /// The sender, the account and its revoked sessions (nil: every one).
    static func parseRevocation(_ payload: String) -> (instance: String, account: String, sessions: Set<[UInt8]>?)? {
        let parts = payload.split(separator: " ")
        guard parts.count == 3 else { return nil }
        if parts[2] == "*" { return (String(parts[0]), String(parts[1]), nil) }
        if parts[2] == "-" { return (String(parts[0]), String(parts[1]), []) }
        var sessions = Set<[UInt8]>()
        for digest in parts[2].split(separator: ",") {
            guard let bytes = unhex(digest) else { return nil }
            sessions.insert(bytes)
        }
        return (String(parts[0]), String(parts[1]), sessions)
    }

    static func hex(_ bytes: [UInt8]) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    static func unhex(_ text: Substring) -> [UInt8]? {
        guard text.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        var index = text.startIndex
        while index < text.endIndex {
            let next = text.index(index, offsetBy: 2)
            guard let byte = UInt8(text[index..<next], radix: 16) else { return nil }
            bytes.append(byte)
            index = next
        }
        return bytes
    }
}

extension StampService {
    /// Tells the other processes on this database, in the transaction that revokes, that these
    /// sessions of `account` (every one when nil) ended.
    func announceRevocation(of account: String, sessions: [[UInt8]]?, on session: any SQLSession) async throws {
        guard database.isShared else { return }
        try await session.notify(InstanceChannels.revocations,
                                 InstanceChannels.revocationPayload(instance: instance, account: account, sessions: sessions))
    }

    /// What the database's listener heard.
    public func hear(_ notice: DatabaseNotice) {
        switch notice {
        case .listening:
            // Whatever was sent before may be lost: forget what was remembered and let every
            // parked poll read again.
            sessions.forgetAll(suspend: false)
            hub.notificationsFlowing()
            logger.info("following the other instances' commits")
        case .interrupted:
            sessions.forgetAll(suspend: true)
            hub.notificationsStopped()
            logger.warning("not hearing the other instances' commits; polls read the log until it resumes")
        case .message(InstanceChannels.events, let payload):
            guard let (sender, newest) = InstanceChannels.parseEvents(payload), sender != instance else { return }
            hub.publish(newest)
        case .message(InstanceChannels.revocations, let payload):
            guard let (sender, account, revoked) = InstanceChannels.parseRevocation(payload), sender != instance else { return }
            sessions.forget(account: account)
            hub.revoke(account: account, sessions: revoked)
        case .message:
            break
        }
    }
}

/// Follows the other instances' commits for as long as the server runs; nothing to do when the
/// database is this process's alone.
public struct InstanceFeed: Service {
    let service: StampService

    public init(service: StampService) {
        self.service = service
    }

    public func run() async throws {
        let service = self.service
        await cancelWhenGracefulShutdown {
            guard service.database.isShared else {
                // Nothing to follow; keep running so that the group does not end with this service.
                try? await gracefulShutdown()
                return
            }
            await service.database.listen(to: [InstanceChannels.events, InstanceChannels.revocations]) { notice in
                service.hear(notice)
            }
        }
    }
}
