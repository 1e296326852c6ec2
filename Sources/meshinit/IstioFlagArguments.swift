import ArgumentParser
import MeshConfig

/// Istio's `istio-iptables` flags on a sub-command's command line. swift-argument-parser
/// leaves them alone (`.allUnrecognized`) and `IstioArguments` parses them from
/// `IstioFlag.table` — the same parser as the install fast path, so there is one declaration
/// of every flag; the help text below is generated from that table.
struct IstioFlagArguments: ParsableArguments {
    @Argument(
        parsing: .allUnrecognized,
        help: ArgumentHelp("Istio's istio-iptables flags (listed below).", valueName: "istio-flags"),
        completion: .list(IstioFlagHelp.spellings))
    var arguments: [String] = []

    /// The flags as text, by flag.
    func given() throws -> FlagMap<String> {
        do {
            return try IstioArguments.parse(arguments)
        } catch {
            throw failure(error)
        }
    }
}
