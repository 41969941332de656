// Field rules shared by every interface: a broken rule names the field.
import Foundation

enum Validate {
    /// Trims surrounding whitespace, normalises to Unicode NFC (so one text has one spelling), and
    /// refuses control, format (zero-width, bidi overrides and isolates) and line-separator
    /// characters and lengths out of range.
    static func text(_ value: String, field: String, min: Int = 1, max: Int) throws -> String {
        // Measured before normalising too, so a huge input is refused before any work on it.
        guard value.utf8.count <= max * 4 + 64 else {
            throw StampError.invalid(field, "\(field) must have at most \(max) characters")
        }
        let trimmed = value.trimmingCharacters(in: .whitespacesAndNewlines).precomposedStringWithCanonicalMapping
        // Code points, as JSON Schema counts them, not grapheme clusters.
        let length = trimmed.unicodeScalars.count
        if length < min {
            throw StampError.invalid(field, min == 1 ? "\(field) must not be empty" : "\(field) must have at least \(min) characters")
        }
        if length > max { throw StampError.invalid(field, "\(field) must have at most \(max) characters") }
        if let bad = trimmed.unicodeScalars.first(where: isHostile) {
            throw StampError.invalid(field, "\(field) must not contain control, format or bidi characters (U+\(hex(bad)))")
        }
        return trimmed
    }

    static func optionalText(_ value: String?, field: String, max: Int) throws -> String? {
        guard let value else { return nil }
        let text = try Validate.text(value, field: field, min: 0, max: max)
        return text.isEmpty ? nil : text
    }

    /// Characters that change how the text around them looks or reads without being seen: C0/C1
    /// controls, format characters (Cf: zero-width spaces and joiners, bidi embeddings, overrides
    /// and isolates, the BOM, soft hyphens) and the line and paragraph separators.
    static func isHostile(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .control, .format, .lineSeparator, .paragraphSeparator: true
        default: false
        }
    }

    static func hex(_ scalar: Unicode.Scalar) -> String {
        let digits = String(scalar.value, radix: 16, uppercase: true)
        return String(repeating: "0", count: Swift.max(0, 4 - digits.count)) + digits
    }

    /// 8 to 200 characters, not all spaces. Never trimmed or normalised: it is hashed as typed.
    static func newPassword(_ password: String, field: String = "password") throws {
        guard (8...200).contains(password.unicodeScalars.count) else {
            throw StampError.invalid(field, "\(field) must have 8 to 200 characters")
        }
        guard password.unicodeScalars.contains(where: { !$0.properties.isWhitespace }) else {
            throw StampError.invalid(field, "\(field) must not be only spaces")
        }
    }

    static func range(_ value: Int, field: String, _ range: ClosedRange<Int>) throws -> Int {
        guard range.contains(value) else {
            throw StampError.invalid(field, "\(field) must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return value
    }

    /// A coordinate in range, kept to 7 decimal places (about 1 cm): finer digits mean nothing
    /// for a cafe, and a value like 1e-200 would make the distance ordering underflow, which
    /// PostgreSQL refuses as an error where SQLite rounds to 0.
    static func coordinate(_ value: Double?, field: String, limit: Double) throws -> Double? {
        guard let value else { return nil }
        guard value.isFinite, abs(value) <= limit else {
            throw StampError.invalid(field, "\(field) must be between -\(Int(limit)) and \(Int(limit))")
        }
        return (value * 1e7).rounded() / 1e7
    }

    /// The most items a menu holds, and the longest item name: a store's whole answer stays small.
    static let menuItems = 50

    static func menu(_ items: [MenuItem], field: String = "menu") throws -> [MenuItem] {
        guard items.count <= menuItems else { throw StampError.invalid(field, "\(field) has at most \(menuItems) items") }
        return try items.enumerated().map { index, item in
            MenuItem(name: try text(item.name, field: "\(field)[\(index)].name", max: 60),
                     price: try range(item.price, field: "\(field)[\(index)].price", 0...100_000_000))
        }
    }
}

/// How a login is written and what makes two logins the same person's.
enum Login {
    /// The login as stored: the text rules (trimmed, NFC, no hostile characters), 3 to 100
    /// characters, and no `:` (which the keys of held cards and erased accounts use, so that no
    /// login can ever equal one of them).
    static func validate(_ login: String, field: String = "login") throws -> String {
        let text = try Validate.text(login, field: field, min: 3, max: 100)
        guard !text.contains(":") else { throw StampError.invalid(field, "\(field) must not contain “:”") }
        return text
    }

    /// What makes logins equal: NFKC (compatibility forms such as full-width letters fold to the
    /// plain ones) and lower case for names and e-mail addresses; the digits for a phone number,
    /// however it is written (`+82 10-5555-0101`, `(+82) 10 5555 0101` are `tel:+821055550101`).
    static func key(_ login: String) -> String {
        let trimmed = login.trimmingCharacters(in: .whitespacesAndNewlines)
        if let digits = phoneDigits(trimmed) { return "tel:" + digits }
        return trimmed.precomposedStringWithCompatibilityMapping.lowercased()
    }

    /// The key as the first release made it (case and surrounding spaces only), for accounts made
    /// before `key` existed: sign-in tries both.
    static func legacyKey(_ login: String) -> String {
        let trimmed = login.trimmingCharacters(in: .whitespacesAndNewlines)
        if let digits = phoneDigits(trimmed) { return "tel:" + digits }
        return trimmed.lowercased()
    }

    /// The digits of a phone number (with a leading `+` when the number starts with one, inside
    /// brackets or not), or nil when the text is not one.
    static func phoneDigits(_ text: String) -> String? {
        let allowed = Set("0123456789 -().+")
        guard text.allSatisfy({ allowed.contains($0) }) else { return nil }
        let digits = text.filter { $0.isASCII && $0.isNumber }
        guard (6...20).contains(digits.count) else { return nil }
        // Only one `+`, and before every digit: `(+49) 30 …` is international, `49+30` is not a number.
        let pluses = text.filter { $0 == "+" }.count
        guard pluses <= 1 else { return nil }
        if pluses == 1 {
            guard let plus = text.firstIndex(of: "+"), !text[..<plus].contains(where: \.isNumber) else { return nil }
            return "+" + digits
        }
        return digits
    }
}
