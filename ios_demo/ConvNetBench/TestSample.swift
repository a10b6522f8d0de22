import Foundation

/// The bundled test images: test_sample.json describes test_sample.u8,
/// which holds count * C * H * W raw uint8 pixels, NCHW, one image after another.
struct TestSample {
    let count: Int
    let channels: Int
    let height: Int
    let width: Int
    let labels: [Int]
    let pixels: [UInt8]

    var imageSize: Int { channels * height * width }

    private struct Header: Decodable {
        let count: Int
        let shape: [Int]
        let dtype: String
        let pixels: String
        let labels: [Int]
    }

    static func load(from bundle: Bundle) throws -> TestSample {
        guard let headerURL = bundle.url(forResource: "test_sample", withExtension: "json") else {
            throw BenchError.missingResource("test_sample.json is not in the app bundle")
        }
        let header: Header
        do {
            header = try JSONDecoder().decode(Header.self, from: Data(contentsOf: headerURL))
        } catch {
            throw BenchError.badResource("test_sample.json is unreadable: \(error.localizedDescription)")
        }
        guard header.dtype == "uint8", header.shape.count == 3, header.count > 0 else {
            throw BenchError.badResource("test_sample.json: expected dtype uint8, shape [C, H, W] and count > 0")
        }
        guard header.labels.count == header.count else {
            throw BenchError.badResource("test_sample.json: \(header.labels.count) labels for \(header.count) images")
        }
        guard let pixelURL = bundle.url(forResource: header.pixels, withExtension: nil) else {
            throw BenchError.missingResource("\(header.pixels) is not in the app bundle")
        }
        let bytes = try [UInt8](Data(contentsOf: pixelURL))
        let expected = header.count * header.shape[0] * header.shape[1] * header.shape[2]
        guard bytes.count == expected else {
            throw BenchError.badResource("\(header.pixels): \(bytes.count) bytes, expected \(expected)")
        }
        return TestSample(count: header.count, channels: header.shape[0], height: header.shape[1],
                          width: header.shape[2], labels: header.labels, pixels: bytes)
    }

    /// Image `index` as floats x = (pixel / 255 - mean[c]) / std[c], NCHW.
    func normalized(_ index: Int, mean: [Double], std: [Double]) -> [Float] {
        let plane = height * width
        let start = index * imageSize
        var out = [Float](repeating: 0, count: imageSize)
        for c in 0..<channels {
            let m = mean[c], s = std[c]
            for p in 0..<plane {
                let value = Double(pixels[start + c * plane + p]) / 255.0
                out[c * plane + p] = Float((value - m) / s)
            }
        }
        return out
    }

    /// Image `index` normalised, then quantised to int8 with the model's input scale and zero point.
    func quantized(_ index: Int, mean: [Double], std: [Double], scale: Double, zeroPoint: Int) -> [Int8] {
        normalized(index, mean: mean, std: std).map { x in
            let q = (Double(x) / scale).rounded() + Double(zeroPoint)
            return Int8(max(-128, min(127, q)))
        }
    }
}
