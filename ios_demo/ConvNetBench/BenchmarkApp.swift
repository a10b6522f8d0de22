import SwiftUI

@main
struct BenchmarkApp: App {
    var body: some Scene {
        WindowGroup {
            ContentView()
        }
    }
}
