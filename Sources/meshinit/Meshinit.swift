import ArgumentParser
import MeshConfig

/// `meshinit`: with no sub-command (or Istio's leading `istio-iptables`) it installs.
struct Meshinit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "meshinit",
        abstract: "Install Istio's traffic capture rules in a pod network namespace.",
        discussion: """
            Accepts istio-iptables' flags and environment variables. With no sub-command (or \
            with Istio's leading `istio-iptables`) it installs; `plan` prints the rules; `explain` \
            walks packets through them; `clean` removes them; `verify` compares what is installed with the plan; `stats` counts what the rules capture.

            """ + IstioFlagHelp.text,
        version: meshinitVersionLine,
        subcommands: [
            Install.self, PlanCommand.self, ExplainCommand.self, Clean.self, Verify.self, StatsCommand.self,
            CNINodeCommand.self,
        ],
        defaultSubcommand: Install.self
    )
}
