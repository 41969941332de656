// The PostgreSQL engine's own rules that need no server: its URL, placeholder numbering,
// statement splitting, and what it does when the database does not answer.
import Foundation
@testable import PostgresDB
import Storage
import Testing

@Suite(.timeLimit(.minutes(1))) struct PostgresEngineTests {
    @Test func aPostgresURLCarriesTheConnectionAndItsOptions() throws {
        let configuration = try PostgresConfiguration(url: "postgresql://stamp%40d:p%3Ass@db.example:6543/cafe?sslmode=require&search_path=s1")
        #expect(configuration.host == "db.example")
        #expect(configuration.port == 6543)
        #expect(configuration.username == "stamp@d")
        #expect(configuration.password == "p:ss")
        #expect(configuration.database == "cafe")
        #expect(configuration.tls == .require)
        #expect(configuration.schema == "s1")
        #expect(!configuration.location.contains("p:ss"))
        #expect(try PostgresConfiguration(url: "postgres://u@h/d").port == 5432)
        for bad in ["postgres://h/d", "postgres://u@h", "postgres://u@h/d?sslmode=maybe", "mysql://u@h/d"] {
            #expect(throws: PostgresConfigurationError.self, "\(bad)") { try PostgresConfiguration(url: bad) }
        }
    }

    @Test func questionMarksBecomeNumberedParametersOutsideQuotesAndComments() {
        #expect(Placeholders.numbered("SELECT a FROM t WHERE b = ? AND c = '?' AND \"d?\" = ? -- why?\nLIMIT ?")
                == "SELECT a FROM t WHERE b = $1 AND c = '?' AND \"d?\" = $2 -- why?\nLIMIT $3")
        #expect(Placeholders.numbered("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', $1")
    }

    @Test func aMigrationSplitsIntoItsStatements() {
        let sql = """
            -- a comment; with a semicolon
            CREATE TABLE a (x text DEFAULT ';');
            CREATE INDEX a_x ON a (x); -- trailing
            ;
            """
        #expect(Statements.split(sql) == ["CREATE TABLE a (x text DEFAULT ';')", "CREATE INDEX a_x ON a (x)"])
    }

    /// A database that does not answer is a storage fault that answers 503, and the start waits
    /// for it with backoff instead of crashing.
    @Test func aDatabaseThatDoesNotAnswerIsUnavailableAndWaitedFor() async throws {
        let configuration = try PostgresConfiguration(url: "postgres://stampd@127.0.0.1:1/stampd", tls: .disable,
                                                      connectTimeout: .seconds(1))
        let storage = PostgresStorage(configuration: configuration)
        let started = Date()
        let error = await #expect(throws: (any Error).self) { try await storage.waitUntilReachable(attempts: 2) }
        #expect((error as? any StorageFault)?.isStorageUnavailable == true, "\(String(describing: error))")
        #expect(Date().timeIntervalSince(started) >= 0.25)  // one pause between the two attempts
        await storage.close()
    }
}
