import MeshCLI

/// Entry point, thin on purpose: everything lives in MeshCLI so that it can be tested and reused.
@main
struct Mesh {
    static func main() async {
        await MeshCommand.main(nil)
    }
}
