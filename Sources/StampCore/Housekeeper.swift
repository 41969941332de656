// Background upkeep: expires requests nobody decided in time, prunes events past retention.
import Logging
import ServiceLifecycle

public struct Housekeeper: Service {
    let service: StampService
    let expiryInterval: Duration
    let pruneInterval: Duration
    let logger: Logger

    public init(service: StampService, expiryInterval: Duration = .seconds(1), pruneInterval: Duration = .seconds(600),
                logger: Logger = Logger(label: "stampd.housekeeper")) {
        self.service = service
        self.expiryInterval = expiryInterval
        self.pruneInterval = pruneInterval
        self.logger = logger
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            var sincePrune = pruneInterval
            while !Task.isCancelled {
                do {
                    while try await service.expireDueRequests() > 0 {}
                    if sincePrune >= pruneInterval {
                        sincePrune = .zero
                        let removed = try await service.pruneEvents()
                        if removed > 0 { logger.info("pruned events", metadata: ["events.removed": "\(removed)"]) }
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
