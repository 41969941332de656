// The owner's page (/) and the customer's page (/app), bundled into the binary as resources.
import Foundation
import NIOCore

enum WebPages {
    /// Files under Web/, read once at start: name → (content type, bytes).
    static let files: [String: (String, ByteBuffer)] = {
        guard let root = Bundle.module.url(forResource: "Web", withExtension: nil),
              let names = try? FileManager.default.contentsOfDirectory(atPath: root.path) else { return [:] }
        var files: [String: (String, ByteBuffer)] = [:]
        for name in names where !name.hasPrefix(".") {
            guard let data = FileManager.default.contents(atPath: root.appendingPathComponent(name).path) else { continue }
            files[name] = (contentType(name), ByteBuffer(bytes: data))
        }
        return files
    }()

    static func register(on router: inout Router) {
        router.addImmediate(.GET, "/") { _ in page("owner.html") }
        router.addImmediate(.GET, "/app") { _ in page("app.html") }
        router.addImmediate(.GET, "/assets/{name}") { request in page(request.parameter("name")) }
    }

    /// `STAMPD_WEB_DIR` serves the pages from a folder, read on every request, to edit them live.
    static let liveFolder = ProcessInfo.processInfo.environment["STAMPD_WEB_DIR"]

    static func page(_ name: String) -> Response {
        var file = files[name]
        if let liveFolder, !name.contains("/"), !name.hasPrefix("."),
           let data = FileManager.default.contents(atPath: liveFolder + "/" + name) {
            file = (contentType(name), ByteBuffer(bytes: data))
        }
        guard let (type, body) = file else {
            return .problem(HTTPError(.notFound, detail: "no such page"))
        }
        return Response(status: .ok, headers: [
            "Content-Type": type, "Cache-Control": "no-cache",
            // No framing (clickjacking), no <base> or form posts elsewhere, nothing but this origin.
            "Content-Security-Policy": "default-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
                + "media-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
        ], body: body)
    }

    static func contentType(_ name: String) -> String {
        switch (name as NSString).pathExtension {
        case "html": "text/html; charset=utf-8"
        case "js": "text/javascript; charset=utf-8"
        case "css": "text/css; charset=utf-8"
        case "svg": "image/svg+xml"
        case "wav": "audio/wav"
        default: "application/octet-stream"
        }
    }
}
