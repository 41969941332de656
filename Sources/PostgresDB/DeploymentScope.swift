// What one deployment shares on its database besides its tables: the notification channels and
// the advisory locks. Both are database-wide in PostgreSQL, while a deployment's tables live in
// one schema, so deployments in two schemas of one database (staging beside production, every
// test server of a test run) would otherwise wake, lock and migrate one another: each commit
// notified to every deployment's listener, every start waiting for every other's migrations.
// A named schema therefore scopes both; the server's default schema keeps the bare names.

struct DeploymentScope: Sendable {
    /// The schema the deployment's tables are in; nil is the connection's default.
    let schema: String?

    /// The name to LISTEN and NOTIFY on for `channel`: within PostgreSQL's 63 bytes whatever the
    /// schema is called (a digest of the name, not the name).
    func channel(_ channel: String) -> String {
        guard let schema else { return channel }
        return channel + "_" + Self.digest(schema)
    }

    /// The text an advisory lock's key is hashed from (`hashtext`), for `key` in this deployment.
    func lockKey(_ key: String) -> String {
        guard let schema else { return key }
        return schema + "\u{1F}" + key
    }

    /// FNV-1a, 64 bits, in hex: the same on every instance and every build (Swift's `hashValue`
    /// is seeded per process), and short. Two schemas sharing a digest share wake-ups, never data.
    static func digest(_ text: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex
    }
}
