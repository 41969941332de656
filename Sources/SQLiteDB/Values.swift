// Reading columns of the current row of a stepping statement as engine-neutral values.
import CSQLite
import Storage

extension Statement: RowSource {
    var columnCount: Int { Int(sqlite3_column_count(handle)) }

    func value(at index: Int) -> SQLValue {
        let index = Int32(index)
        switch sqlite3_column_type(handle, index) {
        case SQLITE_NULL:
            return .null
        case SQLITE_INTEGER:
            return .integer(sqlite3_column_int64(handle, index))
        case SQLITE_FLOAT:
            return .real(sqlite3_column_double(handle, index))
        case SQLITE_BLOB:
            let count = Int(sqlite3_column_bytes(handle, index))
            guard count > 0, let base = sqlite3_column_blob(handle, index) else { return .blob([]) }
            return .blob(Array(UnsafeRawBufferPointer(start: base, count: count)))
        default:
            let count = Int(sqlite3_column_bytes(handle, index))
            guard let base = sqlite3_column_text(handle, index) else { return .text("") }
            return .text(String(decoding: UnsafeBufferPointer(start: base, count: count), as: UTF8.self))
        }
    }
}
