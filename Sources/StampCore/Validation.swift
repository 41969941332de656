// Field rules shared by every interface: a broken rule names the field.
import Foundation

enum Validate {
    /// Trims surrounding whitespace; refuses control characters and lengths out of range.
    static func text(_ value: String, field: String, min: Int = 1, max: Int) throws -> String {
        let trimmed = value.trimmingCharacters(in: .whitespacesAndNewlines)
        // Code points, as JSON Schema counts them, not grapheme clusters.
        let length = trimmed.unicodeScalars.count
        if length < min {
            throw StampError.invalid(field, min == 1 ? "\(field) must not be empty" : "\(field) must have at least \(min) characters")
        }
        if length > max { throw StampError.invalid(field, "\(field) must have at most \(max) characters") }
        if trimmed.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) {
            throw StampError.invalid(field, "\(field) must not contain control characters")
        }
        return trimmed
    }

    static func optionalText(_ value: String?, field: String, max: Int) throws -> String? {
        guard let value else { return nil }
        let text = try Validate.text(value, field: field, min: 0, max: max)
        return text.isEmpty ? nil : text
    }

    static func range(_ value: Int, field: String, _ range: ClosedRange<Int>) throws -> Int {
        guard range.contains(value) else {
            throw StampError.invalid(field, "\(field) must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return value
    }

    static func coordinate(_ value: Double?, field: String, limit: Double) throws -> Double? {
        guard let value else { return nil }
        guard value.isFinite, abs(value) <= limit else {
            throw StampError.invalid(field, "\(field) must be between -\(Int(limit)) and \(Int(limit))")
        }
        return value
    }

    static func menu(_ items: [MenuItem], field: String = "menu") throws -> [MenuItem] {
        guard items.count <= 200 else { throw StampError.invalid(field, "\(field) has at most 200 items") }
        return try items.enumerated().map { index, item in
            MenuItem(name: try text(item.name, field: "\(field)[\(index)].name", max: 100),
                     price: try range(item.price, field: "\(field)[\(index)].price", 0...100_000_000))
        }
    }
}
