plugins {
    id("com.android.application")
}

android {
    namespace = "com.example.mobilebench"
    compileSdk = 36

    defaultConfig {
        applicationId = "com.example.mobilebench"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "1.0"
        // The runtimes ship native code for these ABIs only.
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
    }

    buildTypes {
        // benchmark.py reads the results with `run-as`, which only works on a debuggable
        // build, so benchmark the debug APK. The timed work runs in the runtimes' native
        // libraries, which are release builds either way.
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        // Java 8 language level: the same sources are compiled here with
        // `javac -source 8 -target 8` against android-23.jar (make android-check).
        sourceCompatibility = JavaVersion.VERSION_1_8
        targetCompatibility = JavaVersion.VERSION_1_8
    }

    packaging {
        // fbjni (pulled in by ExecuTorch) and LiteRT may both bring the C++ runtime.
        jniLibs { pickFirsts += "**/libc++_shared.so" }
    }

    androidResources {
        // Models are copied out of the APK to a file; keep them stored, not deflated.
        noCompress += listOf("pte", "tflite", "u8")
    }
}

dependencies {
    // Must match the Python `executorch` that wrote the .pte files (1.5.1), so the
    // program format and the XNNPACK delegate agree. Pulls fbjni and soloader.
    implementation("org.pytorch:executorch-android:1.5.1")
    // LiteRT (the successor of TensorFlow Lite). 2.1.0 and later contain
    // org.tensorflow.lite.Interpreter again (2.0.x did not); 2.3.0 matches the
    // Python ai-edge-litert 2.3.0 used for the host numbers.
    implementation("com.google.ai.edge.litert:litert:2.3.0")
}
