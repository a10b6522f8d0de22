import Foundation

/// The runtimes this app can measure. Raw values are the schema's `runtime` names.
enum Runtime: String, Codable {
    case coreml
    case executorch
}

/// One entry of `models.json`, as written by `make export-ios`.
struct ModelSpec: Decodable {
    struct TensorSpec: Decodable {
        let shape: [Int]
        let layout: String?
        let dtype: String
        let mean: [Double]?
        let std: [Double]?
        let scale: Double?
        let zeroPoint: Int?

        enum CodingKeys: String, CodingKey {
            case shape, layout, dtype, mean, std, scale
            case zeroPoint = "zero_point"
        }
    }

    let file: String
    let backend: String
    let quant: String?
    let input: TensorSpec?
    let output: TensorSpec?
}

struct ModelsManifest: Decodable {
    let schemaVersion: Int
    let models: [ModelSpec]

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case models
    }
}

/// A model the app will try to measure. `problem` is set when it cannot run;
/// the suite turns that into an error row instead of stopping.
struct ModelEntry {
    let name: String
    let runtime: Runtime
    let spec: ModelSpec?
    let url: URL?
    let problem: String?
}

/// Finds the models at run time: the generated files differ from one export to the next.
enum ModelCatalog {
    static let manifestName = "models"

    /// Entries from models.json (LiteRT entries are skipped: they are for Android),
    /// plus any bundled model that models.json does not describe.
    static func discover(in bundle: Bundle) -> (entries: [ModelEntry], warning: String?) {
        var entries: [ModelEntry] = []
        var warning: String?
        do {
            for spec in try loadManifest(from: bundle).models {
                guard let runtime = Runtime(rawValue: spec.backend) else { continue }
                entries.append(entry(for: spec, runtime: runtime, in: bundle))
            }
        } catch {
            warning = error.localizedDescription
        }
        let listed = Set(entries.map { $0.name })
        for url in bundledFiles(withExtension: "mlmodelc", in: bundle) {
            let name = url.deletingPathExtension().lastPathComponent + ".mlpackage"
            if !listed.contains(name) {
                entries.append(ModelEntry(name: name, runtime: .coreml, spec: nil, url: url, problem: nil))
            }
        }
        for url in bundledFiles(withExtension: "pte", in: bundle) where !listed.contains(url.lastPathComponent) {
            let problem = "not described in models.json, so its input normalisation is unknown"
            entries.append(ModelEntry(name: url.lastPathComponent, runtime: .executorch, spec: nil, url: url, problem: problem))
        }
        return (entries.sorted { $0.name < $1.name }, warning)
    }

    static func loadManifest(from bundle: Bundle) throws -> ModelsManifest {
        guard let url = bundle.url(forResource: manifestName, withExtension: "json") else {
            throw BenchError.missingResource("models.json is not in the app bundle (run make export-ios, then xcodegen generate)")
        }
        do {
            return try JSONDecoder().decode(ModelsManifest.self, from: Data(contentsOf: url))
        } catch {
            throw BenchError.badResource("models.json is unreadable: \(error.localizedDescription)")
        }
    }

    /// Core ML entries name the `.mlpackage`; Xcode bundles it compiled, as `.mlmodelc`.
    private static func entry(for spec: ModelSpec, runtime: Runtime, in bundle: Bundle) -> ModelEntry {
        let base = (spec.file as NSString).deletingPathExtension
        let url: URL?
        switch runtime {
        case .coreml:
            url = bundle.url(forResource: base, withExtension: "mlmodelc")
        case .executorch:
            url = bundle.url(forResource: spec.file, withExtension: nil)
        }
        let problem = url == nil ? "\(spec.file) is not in the app bundle (run make export-ios, then xcodegen generate)" : nil
        return ModelEntry(name: spec.file, runtime: runtime, spec: spec, url: url, problem: problem)
    }

    private static func bundledFiles(withExtension ext: String, in bundle: Bundle) -> [URL] {
        bundle.urls(forResourcesWithExtension: ext, subdirectory: nil) ?? []
    }
}

/// Class names in the order of the model's outputs (labels.txt, one per line).
enum LabelList {
    static func load(from bundle: Bundle) throws -> [String] {
        guard let url = bundle.url(forResource: "labels", withExtension: "txt") else {
            throw BenchError.missingResource("labels.txt is not in the app bundle")
        }
        let text = try String(contentsOf: url, encoding: .utf8)
        return text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
    }
}

/// Errors with messages meant for the results table.
enum BenchError: LocalizedError {
    case missingResource(String)
    case badResource(String)
    case unavailable(String)
    case notLoaded
    case input(String)
    case output(String)
    case memoryProbe(Int32)

    var errorDescription: String? {
        switch self {
        case .missingResource(let text), .badResource(let text), .unavailable(let text):
            return text
        case .notLoaded:
            return "model is not loaded"
        case .input(let text):
            return "input: \(text)"
        case .output(let text):
            return "output: \(text)"
        case .memoryProbe(let code):
            return "task_info(TASK_VM_INFO) failed with kern_return \(code)"
        }
    }
}
