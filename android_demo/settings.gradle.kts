pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}

dependencyResolutionManagement {
    repositoriesMode.set(RepositoriesMode.FAIL_ON_PROJECT_REPOS)
    repositories {
        google()        // com.google.ai.edge.litert
        mavenCentral()  // org.pytorch:executorch-android, fbjni, soloader
    }
}

rootProject.name = "MobileBench"
include(":app")
