// The frozen route tree: a literal before a parameter, parameters named by their own template,
// HEAD served by GET, and 405 naming every method of every template the path matches.
import NIOCore
import NIOHTTP1
@testable import StampHTTP
import Testing

@Suite struct RouterTests {
    static func tree() -> RouteTree {
        var router = Router()
        let ok: ImmediateEndpoint = { _ in Response(status: .ok) }
        router.addImmediate(.GET, "/v1/stores/{storeId}", ok)
        router.addImmediate(.PATCH, "/v1/stores/{storeId}", ok)
        router.addImmediate(.GET, "/v1/stores/mine", ok)
        router.addImmediate(.POST, "/v1/stores/{id}/requests", ok)
        router.addImmediate(.DELETE, "/v1/stores/mine/requests", ok)
        return RouteTree(router)
    }

    static func found(_ match: Router.Match) -> (String, [String: String])? {
        if case .found(let route, let parameters) = match { return (route.template, parameters) }
        return nil
    }

    @Test func aLiteralSegmentWinsOverAParameterAndParametersAreNamedByTheirTemplate() {
        let tree = Self.tree()
        #expect(Self.found(tree.match(.GET, ["v1", "stores", "mine"]))?.0 == "/v1/stores/mine")
        #expect(Self.found(tree.match(.GET, ["v1", "stores", "sto_1"]))?.1 == ["storeId": "sto_1"])
        #expect(Self.found(tree.match(.HEAD, ["v1", "stores", "sto_1"]))?.0 == "/v1/stores/{storeId}")
        // "mine" is also a store id where the literal branch has no such method.
        #expect(Self.found(tree.match(.PATCH, ["v1", "stores", "mine"]))?.1 == ["storeId": "mine"])
        #expect(Self.found(tree.match(.POST, ["v1", "stores", "mine", "requests"]))?.1 == ["id": "mine"])
    }

    @Test func aPathWithoutItsMethodIs405WithTheMethodsOfEveryTemplateItMatches() {
        let tree = Self.tree()
        guard case .methodNotAllowed(let allowed) = tree.match(.PUT, ["v1", "stores", "mine"]) else {
            Issue.record("expected 405")
            return
        }
        #expect(Set(allowed.map(\.rawValue)) == ["GET", "HEAD", "PATCH"])
        guard case .methodNotAllowed(let more) = tree.match(.GET, ["v1", "stores", "mine", "requests"]) else {
            Issue.record("expected 405")
            return
        }
        #expect(Set(more.map(\.rawValue)) == ["DELETE", "POST"])
        guard case .notFound = tree.match(.GET, ["v1", "stores"]) else { Issue.record("expected 404"); return }
        guard case .notFound = tree.match(.GET, ["v1", "stores", "a", "b", "c"]) else { Issue.record("expected 404"); return }
    }
}
