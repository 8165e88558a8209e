import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// A file built into the executable by the `EmbedStaticFiles` plugin (`embeddedFiles`).
struct EmbeddedFile: Sendable {
    let contentType: String
    let etag: String
    let base64: String

    /// The file's bytes, decoded once.
    var bytes: ByteBuffer { ByteBuffer(bytes: Data(base64Encoded: base64) ?? Data()) }
}

/// The dashboard (`GET /`, its files under `/dashboard/`) and the JavaScript client
/// (`/js/streambroker.js`), served from the executable (SPEC §13, §14). These are open in every
/// auth mode: they hold no data, and the page asks for a token before it reads any. The client
/// may be imported by pages of any origin (CORS `*`); the dashboard only runs on its own.
enum StaticFiles {
    /// Path → (file, its bytes), decoded at first use.
    static let files: [String: (file: EmbeddedFile, body: ByteBuffer)] = embeddedFiles.mapValues { ($0, $0.bytes) }

    /// Only the broker's own origin: scripts, styles, fetches and the WebSocket (CSP level 3
    /// browsers match a same-origin `ws:`/`wss:` URL with `'self'`).
    static let contentSecurityPolicy =
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        + "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

    static func response(path: String, request: Request) -> Response? {
        guard let (file, body) = files[path] else { return nil }
        var headers: HTTPFields = [
            .contentType: file.contentType, .eTag: file.etag, .cacheControl: "no-cache",
            HTTPField.Name("X-Content-Type-Options")!: "nosniff",
        ]
        if path.hasPrefix("/js/") {
            // The client is public code: pages of any origin may import it as a module.
            headers[HTTPField.Name("Access-Control-Allow-Origin")!] = "*"
        }
        if file.contentType.hasPrefix("text/html") {
            headers[HTTPField.Name("Content-Security-Policy")!] = contentSecurityPolicy
        }
        if request.headers[.ifNoneMatch]?.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == file.etag }) == true {
            return Response(status: .notModified, headers: headers)
        }
        if request.method == .head {
            // The headers a GET would have, its length included, and no body.
            headers[.contentLength] = String(body.readableBytes)
            return Response(status: .ok, headers: headers)
        }
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: body))
    }
}

func addStaticRoutes(to router: Router<GatewayRequestContext>) {
    let routes = [("/", "/dashboard/index.html")] + StaticFiles.files.keys.sorted().map { ($0, $0) }
    for (route, path) in routes {
        let serve: @Sendable (Request, GatewayRequestContext) async throws -> Response = { request, _ in
            StaticFiles.response(path: path, request: request) ?? Response(status: .notFound)
        }
        router.get(RouterPath(route), use: serve)
        router.head(RouterPath(route), use: serve)
    }
}
