import ArgumentParser

/// `mesh`: the one executable of SwiftMesh. Each subcommand lives in `Commands/`.
public struct MeshCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "mesh",
        abstract: "SwiftMesh: a zero-trust service mesh (mTLS, discovery, policy, observability).",
        subcommands: [ControlCommand.self, ProxyCommand.self, TokenCommand.self, ServicesCommand.self, CACommand.self, CheckCommand.self, ApplyCommand.self,
                      GetCommand.self, DeleteCommand.self, HistoryCommand.self, ExplainCommand.self, TestCommand.self, StatCommand.self, EdgesCommand.self, TopCommand.self, TapCommand.self, DashboardCommand.self,
                      DemoCommand.self])

    public init() {}
}
