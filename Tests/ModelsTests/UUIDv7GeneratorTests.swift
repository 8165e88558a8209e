import Foundation
import Models
import Testing

@Suite("UUIDv7 generator")
struct UUIDv7GeneratorTests {
    private func isWellFormed(_ id: String) -> Bool {
        let chars = Array(id)
        return id.count == 36 && chars[8] == "-" && chars[13] == "-" && chars[18] == "-" && chars[23] == "-" && chars[14] == "7"
            && "89ab".contains(chars[19]) && id.allSatisfy { "0123456789abcdef-".contains($0) } && UUID(uuidString: id) != nil
    }

    @Test func idsAreWellFormedWithTheTimestampFirst() {
        let generator = UUIDv7()
        let id = generator.next(now: Date(timeIntervalSince1970: 1_700_000_000))
        #expect(isWellFormed(id))
        #expect(id.hasPrefix("018bcfe5-6800-7"), "48-bit millisecond timestamp, then the version")
        #expect(isWellFormed(UUIDv7.make()))
    }

    @Test func idsOfOneGeneratorIncreaseWithinAMillisecondAndAcrossThem() {
        let generator = UUIDv7()
        let start = Date(timeIntervalSince1970: 1_700_000_000)
        var ids: [String] = []
        for ms in 0..<5 {
            for _ in 0..<1000 { ids.append(generator.next(now: start.addingTimeInterval(Double(ms) / 1000))) }
        }
        // The clock going back does not break the order either.
        ids.append(generator.next(now: start))
        #expect(ids.allSatisfy(isWellFormed))
        #expect(zip(ids, ids.dropFirst()).allSatisfy { $0 < $1 }, "strictly increasing")
    }

    @Test func noDuplicatesOverManyIds() {
        let generator = UUIDv7()
        var seen = Set<String>()
        for _ in 0..<200_000 { seen.insert(generator.next()) }
        #expect(seen.count == 200_000)
    }

    @Test func generatorsSeededDifferentlyDoNotOverlap() {
        let now = Date(timeIntervalSince1970: 1_700_000_000)
        let a = UUIDv7(seed: 1)
        let b = UUIDv7(seed: 2)
        let fromA = Set((0..<1000).map { _ in a.next(now: now) })
        let fromB = Set((0..<1000).map { _ in b.next(now: now) })
        #expect(fromA.isDisjoint(with: fromB))
        #expect(UUIDv7(seed: 7).next(now: now) == UUIDv7(seed: 7).next(now: now), "the seed fixes the random bits")
    }

    @Test func randomBitsVaryBetweenMilliseconds() {
        let generator = UUIDv7(seed: 3)
        let start = Date(timeIntervalSince1970: 1_700_000_000)
        let tails = Set((0..<100).map { ms in String(generator.next(now: start.addingTimeInterval(Double(ms) / 1000)).suffix(17)) })
        #expect(tails.count == 100)
    }

    @Test func formatVersionAndOrder() throws {
        let a = UUIDv7.make(now: Date(timeIntervalSince1970: 1_700_000_000))
        let b = UUIDv7.make(now: Date(timeIntervalSince1970: 1_700_000_001))
        #expect(a.count == 36)
        #expect(Array(a)[14] == "7", "version nibble")
        #expect("89ab".contains(Array(a)[19]), "variant bits")
        #expect(a < b, "time-ordered")
        #expect(a.hasPrefix("018bcfe5-6800"), "48-bit millisecond timestamp first")
        #expect(UUID(uuidString: a) != nil)
    }
}
