extension Duration {
    /// The whole milliseconds of this duration (toward zero): the unit of every time in the
    /// protocol and of the state machines' clocks.
    public var wholeMilliseconds: Int64 {
        components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }
}
