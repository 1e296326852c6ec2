import Foundation
import PackagePlugin

/// Writes `Revision.swift` (`let meshinitRevision = "<commit>[-dirty]"`) for the target it is
/// applied to, from `git` in the package directory ("unknown" outside a git checkout), so
/// that `meshinit --version` names the revision it was built from. Re-run when HEAD moves
/// or the index changes.
@main
struct GitRevision: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let package = context.package.directoryURL
        let output = context.pluginWorkDirectoryURL.appending(path: "Revision.swift")
        let git = package.appending(path: ".git")
        let inputs = ["HEAD", "index", "logs/HEAD", "packed-refs"].map { git.appending(path: $0) }
            .filter { FileManager.default.fileExists(atPath: $0.path) }
        let script = """
            set -u
            rev=$(git -C "$1" rev-parse --short=12 HEAD 2>/dev/null) || rev=unknown
            if [ "$rev" != unknown ] && [ -n "$(git -C "$1" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
                rev="$rev-dirty"
            fi
            printf '/// The git revision this binary was built from (GitRevision plugin).\\nlet meshinitRevision = "%s"\\n' "$rev" >"$2.tmp"
            mv -f "$2.tmp" "$2"
            """
        return [
            .buildCommand(
                displayName: "Recording the git revision for meshinit --version",
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: ["-c", script, "sh", package.path, output.path],
                inputFiles: inputs, outputFiles: [output])
        ]
    }
}
