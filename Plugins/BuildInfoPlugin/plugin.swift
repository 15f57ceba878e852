import Foundation
import PackagePlugin

/// Generates `BuildInfo.swift` (the version from the VERSION file plus the git commit) before every
/// build, so `macvtapd --version` names exactly what was built. A prebuild command, because the
/// commit changes without any input file SwiftPM tracks changing.
@main
struct BuildInfoPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let output = context.pluginWorkDirectoryURL.appending(path: "BuildInfo")
        let script = context.package.directoryURL.appending(path: "scripts/build-info.sh")
        return [
            .prebuildCommand(
                displayName: "BuildInfo.swift from VERSION and git",
                executable: URL(filePath: "/bin/sh"),
                arguments: [script.path(), context.package.directoryURL.path(), output.path()],
                outputFilesDirectory: output)
        ]
    }
}
