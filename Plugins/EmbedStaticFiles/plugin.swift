import Foundation
import PackagePlugin

/// Embeds the dashboard (`web/`, served under `/` and `/dashboard/`) and the JavaScript client
/// (`clients/js/`, served under `/js/`) in the target that uses this plugin, as `embeddedFiles`:
/// the files directly in those folders but dot-files and `README.md`.
@main
struct EmbedStaticFiles: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: any Target) throws -> [Command] {
        let root = context.package.directoryURL
        var mappings: [(urlPath: String, file: URL)] = []
        for (directory, prefix) in [("web", "/dashboard/"), ("clients/js", "/js/")] {
            let folder = root.appending(path: directory)
            let names = try FileManager.default.contentsOfDirectory(atPath: folder.path(percentEncoded: false)).sorted()
            for name in names where !name.hasPrefix(".") && name != "README.md" {
                let file = folder.appending(path: name)
                var isDirectory: ObjCBool = false
                // Files only: a folder (node_modules, say) is not served.
                guard FileManager.default.fileExists(atPath: file.path(percentEncoded: false), isDirectory: &isDirectory), !isDirectory.boolValue
                else { continue }
                mappings.append((prefix + name, file))
            }
        }
        let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedFiles.swift")
        return [
            .buildCommand(
                displayName: "Embedding \(mappings.count) static files",
                executable: try context.tool(named: "embed-static").url,
                arguments: [output.path(percentEncoded: false)] + mappings.map { "\($0.urlPath)=\($0.file.path(percentEncoded: false))" },
                inputFiles: mappings.map(\.file),
                outputFiles: [output])
        ]
    }
}
