// The statements are written with `?` for each parameter, as SQLite takes them; PostgreSQL
// numbers its parameters. And a migration file holds several statements, which PostgreSQL's
// extended protocol takes one at a time. Both read SQL text the same way: what is inside quotes
// ('text', "name") or a `--` comment is never a parameter or the end of a statement.
import Foundation

enum SQLText {
    enum Part { case code, quoted, comment }

    /// Calls `body` with each character and the part of the text it is in. Dollar quoting and
    /// /* */ comments are not used in stampd's SQL and not recognised.
    static func forEachCharacter(in sql: String, _ body: (Character, Part) -> Void) {
        var quote: Character?
        var lineComment = false
        var pendingDash = false  // a "-" that may begin a comment
        for character in sql {
            if pendingDash {
                pendingDash = false
                if character == "-" {
                    lineComment = true
                    body("-", .comment)
                    body(character, .comment)
                    continue
                }
                body("-", .code)
            }
            if lineComment {
                if character == "\n" {
                    lineComment = false
                    body(character, .code)
                } else {
                    body(character, .comment)
                }
            } else if let open = quote {
                body(character, .quoted)
                if character == open { quote = nil }  // a doubled quote closes and reopens: same result
            } else if character == "'" || character == "\"" {
                quote = character
                body(character, .quoted)
            } else if character == "-" {
                pendingDash = true
            } else {
                body(character, .code)
            }
        }
        if pendingDash { body("-", .code) }
    }
}

enum Placeholders {
    /// `SELECT a FROM t WHERE b = ? AND c = '?'` → `SELECT a FROM t WHERE b = $1 AND c = '?'`
    static func numbered(_ sql: String) -> String {
        var out = ""
        out.reserveCapacity(sql.utf8.count + 8)
        var number = 0
        SQLText.forEachCharacter(in: sql) { character, part in
            if part == .code && character == "?" {
                number += 1
                out.append("$\(number)")
            } else {
                out.append(character)
            }
        }
        return out
    }
}

enum Statements {
    /// Splits SQL text at the semicolons that end statements, without its comments; empty
    /// statements are dropped.
    static func split(_ sql: String) -> [String] {
        var statements: [String] = []
        var current = ""
        SQLText.forEachCharacter(in: sql) { character, part in
            switch part {
            case .code where character == ";":
                statements.append(current)
                current = ""
            case .comment:
                break
            default:
                current.append(character)
            }
        }
        statements.append(current)
        return statements.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty }
    }
}
