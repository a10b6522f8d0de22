package com.example.mobilebench;

import android.content.Context;
import android.content.res.AssetManager;

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;

/**
 * Where the models and their side files (models.json, test_sample.*) come from: a
 * folder given with --es model_dir, or the APK's assets, copied to files/models/
 * because both runtimes load from a file path. Side files missing from model_dir
 * fall back to the asset copies.
 */
final class ModelStore {

    static final String MANIFEST = "models.json";
    static final String SAMPLE = "test_sample.json";

    final File modelDir;
    final File assetCopyDir;

    private ModelStore(File modelDir, File assetCopyDir) {
        this.modelDir = modelDir;
        this.assetCopyDir = assetCopyDir;
    }

    static ModelStore open(Context context, String modelDir) throws IOException {
        File copies = new File(context.getFilesDir(), "models");
        copyAssets(context.getAssets(), copies);
        return new ModelStore(modelDir == null ? copies : new File(modelDir), copies);
    }

    static boolean isModel(String name) {
        return name.endsWith(".pte") || name.endsWith(".tflite");
    }

    /**
     * The named model files, or every model file in the folder, sorted by name. Naming
     * them (--es model_files) avoids listing /data/local/tmp, which an app may be
     * allowed to read files from but not to list.
     */
    List<File> models(String[] names) throws IOException {
        if (names != null) {
            List<File> named = new ArrayList<File>();
            for (String name : names) {
                if (isModel(name)) {
                    named.add(new File(modelDir, name));
                }
            }
            Collections.sort(named);
            return named;
        }
        File[] files = modelDir.listFiles();
        if (files == null) {
            throw new IOException("cannot list " + modelDir + " (missing, or not readable by the app)");
        }
        Arrays.sort(files);
        List<File> out = new ArrayList<File>();
        for (File f : files) {
            if (f.isFile() && isModel(f.getName())) {
                out.add(f);
            }
        }
        return out;
    }

    /** A side file from the model folder, else from the asset copies; null if in neither. */
    File sideFile(String name) {
        File f = new File(modelDir, name);
        if (f.isFile()) {
            return f;
        }
        f = new File(assetCopyDir, name);
        return f.isFile() ? f : null;
    }

    private static void copyAssets(AssetManager assets, File dir) throws IOException {
        if (!dir.isDirectory() && !dir.mkdirs()) {
            throw new IOException("cannot create " + dir);
        }
        String[] names = assets.list("");
        if (names == null) {
            return;
        }
        for (String name : names) {
            boolean wanted = isModel(name) || name.endsWith(".json") || name.endsWith(".u8") || name.endsWith(".txt");
            if (!wanted) {
                continue;
            }
            InputStream in;
            try {
                in = assets.open(name);
            } catch (IOException notAFile) {
                continue; // a folder such as images/ or webkit/
            }
            try {
                File tmp = new File(dir, name + ".tmp");
                FileOutputStream out = new FileOutputStream(tmp);
                try {
                    IoUtil.copy(in, out);
                } finally {
                    out.close();
                }
                if (!tmp.renameTo(new File(dir, name))) {
                    throw new IOException("cannot rename " + tmp);
                }
            } finally {
                in.close();
            }
        }
    }
}
