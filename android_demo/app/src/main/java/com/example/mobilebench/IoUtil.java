package com.example.mobilebench;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.Charset;

/** Small file helpers (java.nio.file needs API 26; the compile check uses the API 23 jar). */
final class IoUtil {

    private static final Charset UTF8 = Charset.forName("UTF-8");

    private IoUtil() {
    }

    static byte[] readBytes(File f) throws IOException {
        InputStream in = new FileInputStream(f);
        try {
            return readAll(in);
        } finally {
            in.close();
        }
    }

    static String readText(File f) throws IOException {
        return new String(readBytes(f), UTF8);
    }

    static byte[] readAll(InputStream in) throws IOException {
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        copy(in, buf);
        return buf.toByteArray();
    }

    static void copy(InputStream in, OutputStream out) throws IOException {
        byte[] block = new byte[1 << 16];
        int n;
        while ((n = in.read(block)) > 0) {
            out.write(block, 0, n);
        }
    }

    /** Writes to name.tmp, syncs, then renames over the target, so readers never see half a file. */
    static void writeAtomically(File target, String text) throws IOException {
        File tmp = new File(target.getParentFile(), target.getName() + ".tmp");
        FileOutputStream out = new FileOutputStream(tmp);
        try {
            out.write(text.getBytes(UTF8));
            out.flush();
            out.getFD().sync();
        } finally {
            out.close();
        }
        if (!tmp.renameTo(target)) {
            throw new IOException("rename " + tmp + " -> " + target + " failed");
        }
    }
}
