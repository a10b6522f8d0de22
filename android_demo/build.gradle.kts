// Top-level build file. The app module is plain Java (no Kotlin plugin), so that
// `make android-check` can compile the same sources with javac on a machine
// without Gradle or the Android SDK.
plugins {
    id("com.android.application") version "8.13.2" apply false
}
