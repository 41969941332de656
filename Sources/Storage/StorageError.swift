// What a use case needs to know about a storage failure, whichever engine raised it.

/// The kinds of failure a use case tells apart; engines map their own errors to these.
public protocol StorageFault: Error {
    /// A UNIQUE or PRIMARY KEY constraint was violated.
    var isUniqueViolation: Bool { get }
    /// The storage cannot serve right now (down, disk full, read-only, locked, too much contention);
    /// the request may succeed later.
    var isStorageUnavailable: Bool { get }
}

/// A failure raised by the storage layer itself rather than by an engine.
public struct StorageError: StorageFault, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// A column did not hold the type it was read as.
        case mismatch
        /// The database cannot be reached or refused to serve.
        case unavailable
        /// Concurrent writers kept conflicting after every retry.
        case contention
    }

    public let kind: Kind
    public let message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var isUniqueViolation: Bool { false }
    public var isStorageUnavailable: Bool { kind == .unavailable || kind == .contention }

    public var description: String { message }
}
