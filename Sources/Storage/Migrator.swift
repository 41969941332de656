// The numbered SQL files of an engine's migrations folder, and the check that refuses to run
// when a file that was applied has since been edited or removed. Each engine applies the rest
// in order, each file in its own transaction, and records it in `schema_migrations`.
import Crypto
import Foundation

/// One migration file: `NNNN_name.sql`.
public struct Migration: Sendable, Equatable {
    public let version: Int
    public let name: String
    public let checksum: String
    public let sql: String

    static func fileName(version: Int, name: String) -> String {
        let digits = String(version)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits + "_" + name + ".sql"
    }
}

public struct MigrationError: Error, Sendable, CustomStringConvertible {
    public let description: String
}

public struct Migrator: Sendable {
    public let migrations: [Migration]

    /// Reads every `NNNN_name.sql` file of `directory`. Any other `.sql` name is an error,
    /// so a misnamed file is never skipped silently.
    public init(directory: String) throws {
        let url = URL(fileURLWithPath: directory, isDirectory: true)
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: url.path)
        } catch {
            throw MigrationError(description: "cannot read the migrations folder \(url.path): \(error.localizedDescription)")
        }
        var migrations: [Migration] = []
        for name in names where name.hasSuffix(".sql") {
            let stem = name.dropLast(4)
            let parts = stem.split(separator: "_", maxSplits: 1)
            guard parts.count == 2, parts[0].count == 4, let version = Int(parts[0]), !parts[1].isEmpty else {
                throw MigrationError(description: "migration file \(name) is not named NNNN_name.sql")
            }
            let data = try Data(contentsOf: url.appendingPathComponent(name))
            guard let sql = String(data: data, encoding: .utf8) else {
                throw MigrationError(description: "migration file \(name) is not UTF-8")
            }
            let checksum = SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
            migrations.append(Migration(version: version, name: String(parts[1]), checksum: checksum, sql: sql))
        }
        migrations.sort { $0.version < $1.version }
        for (a, b) in zip(migrations, migrations.dropFirst()) where a.version == b.version {
            throw MigrationError(description: "two migration files share version \(a.version): \(a.name) and \(b.name)")
        }
        self.migrations = migrations
    }

    /// What `schema_migrations` records of an applied file.
    public struct Applied: Sendable {
        public let version: Int
        public let name: String
        public let checksum: String
        public init(version: Int, name: String, checksum: String) {
            self.version = version
            self.name = name
            self.checksum = checksum
        }
    }

    /// Checks the applied migrations against the files; returns the files still to apply, in order.
    public func pending(applied: [Applied]) throws -> [Migration] {
        let files = Dictionary(uniqueKeysWithValues: migrations.map { ($0.version, $0) })
        for record in applied {
            let label = Migration.fileName(version: record.version, name: record.name)
            guard let file = files[record.version] else {
                throw MigrationError(description: "applied migration \(label) is missing from the migrations folder")
            }
            guard file.checksum == record.checksum, file.name == record.name else {
                throw MigrationError(description: "applied migration \(label) was edited after it was applied (checksum \(record.checksum), file has \(file.checksum)); add a new migration instead")
            }
        }
        let appliedVersions = Set(applied.map(\.version))
        return migrations.filter { !appliedVersions.contains($0.version) }
    }
}
