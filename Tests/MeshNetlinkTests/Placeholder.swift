import Testing

@Test func netlinkPlaceholder() {
    #expect(Bool(true))
}
