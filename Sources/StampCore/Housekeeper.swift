// Background upkeep: expires requests nobody decided in time, prunes what is past its time,
// finishes card conversions a restart interrupted.
import Logging
import ServiceLifecycle

public struct Housekeeper: Service {
    let service: StampService
    let expiryInterval: Duration
    let pruneInterval: Duration
    let logger: Logger

    public init(service: StampService, expiryInterval: Duration = .seconds(1), pruneInterval: Duration = .seconds(60),
                logger: Logger = Logger(label: "stampd.housekeeper")) {
        self.service = service
        self.expiryInterval = expiryInterval
        self.pruneInterval = pruneInterval
        self.logger = logger
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            // A lowered stampsPerReward converts cards in batches after its change commits; a
            // restart in between leaves some to finish.
            do {
                let converted = try await service.convertPendingCards()
                if converted > 0 { logger.info("finished converting cards to a lowered stampsPerReward", metadata: ["cards": "\(converted)"]) }
            } catch {
                logger.warning("card conversion failed", metadata: ["error": "\(error)"])
            }
            var sincePrune = pruneInterval
            while !Task.isCancelled {
                do {
                    // One process at a time does this on a shared database; if it dies, its
                    // claim ends with its connection and another takes the next round.
                    let prune = sincePrune >= pruneInterval
                    if prune { sincePrune = .zero }
                    let logger = self.logger
                    try await service.database.exclusively("housekeeping") {
                        while try await service.expireDueRequests() > 0 {}
                        if prune {
                            let removed = try await service.pruneExpired()
                            if removed > 0 { logger.info("pruned expired rows", metadata: ["rows.removed": "\(removed)"]) }
                        }
                    }
                } catch {
                    logger.warning("housekeeping failed", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: expiryInterval)
                sincePrune += expiryInterval
            }
        }
    }
}
