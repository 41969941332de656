import Foundation

// The statements are written with `?` for each parameter, as SQLite takes them; PostgreSQL
// numbers its parameters. Quoted text, quoted names and comments keep their question marks.
// And a migration file holds several statements, which PostgreSQL's extended protocol takes
// one at a time.

enum Placeholders {
    /// `SELECT a FROM t WHERE b = ? AND c = '?'` → `SELECT a FROM t WHERE b = $1 AND c = '?'`
    static func numbered(_ sql: String) -> String {
        var out = ""
        out.reserveCapacity(sql.utf8.count + 8)
        var number = 0
        var quote: Character?
        var lineComment = false
        var previous: Character?
        for character in sql {
            defer { previous = character }
            if lineComment {
                out.append(character)
                if character == "\n" { lineComment = false }
                continue
            }
            if let open = quote {
                out.append(character)
                if character == open { quote = nil }  // a doubled quote closes and reopens: same result
                continue
            }
            switch character {
            case "'", "\"":
                quote = character
                out.append(character)
            case "-" where previous == "-":
                lineComment = true
                out.append(character)
            case "?":
                number += 1
                out.append("$\(number)")
            default:
                out.append(character)
            }
        }
        return out
    }
}

enum Statements {
    /// Splits SQL text at the semicolons that end statements (not those in quotes or comments);
    /// empty statements and comment-only ones are dropped. Dollar quoting is not supported.
    static func split(_ sql: String) -> [String] {
        var statements: [String] = []
        var current = ""
        var quote: Character?
        var lineComment = false
        var previous: Character?
        for character in sql {
            defer { previous = character }
            if lineComment {
                if character == "\n" { lineComment = false; current.append(character) }
                continue
            }
            if let open = quote {
                current.append(character)
                if character == open { quote = nil }
                continue
            }
            switch character {
            case "'", "\"":
                quote = character
                current.append(character)
            case "-" where previous == "-":
                current.removeLast()  // the first dash
                lineComment = true
            case ";":
                statements.append(current)
                current = ""
            default:
                current.append(character)
            }
        }
        statements.append(current)
        return statements.map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.filter { !$0.isEmpty }
    }
}
