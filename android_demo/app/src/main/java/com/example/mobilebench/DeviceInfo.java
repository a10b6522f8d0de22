package com.example.mobilebench;

import android.app.ActivityManager;
import android.content.Context;
import android.os.Build;
import android.util.Log;

import java.io.File;
import java.io.IOException;
import java.lang.reflect.Field;
import java.util.ArrayList;
import java.util.List;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * The "device" object of benchmark_results.json. Every field has a fallback, and
 * {@link #defaultsLeft} lists any that still ended up unknown or zero.
 */
final class DeviceInfo {

    static final String UNKNOWN = "unknown";

    private DeviceInfo() {
    }

    static JSONObject collect(Context context) throws JSONException {
        JSONObject d = new JSONObject();
        d.put("model", orUnknown(Build.MODEL));
        d.put("manufacturer", orUnknown(Build.MANUFACTURER));
        d.put("soc", soc());
        d.put("abi", Build.SUPPORTED_ABIS.length > 0 ? Build.SUPPORTED_ABIS[0] : UNKNOWN);
        d.put("os_version", "Android " + orUnknown(Build.VERSION.RELEASE) + " (API " + Build.VERSION.SDK_INT + ")");
        d.put("cores", cores());
        d.put("total_ram_mb", round1(totalRamMb(context)));
        d.put("is_simulator", isEmulator());
        // extra fields, not required by the schema
        d.put("api_level", Build.VERSION.SDK_INT);
        d.put("online_cores", Runtime.getRuntime().availableProcessors());
        JSONArray abis = new JSONArray();
        for (String abi : Build.SUPPORTED_ABIS) {
            abis.put(abi);
        }
        d.put("supported_abis", abis);
        d.put("hardware", orUnknown(Build.HARDWARE));
        d.put("fingerprint", orUnknown(Build.FINGERPRINT));
        return d;
    }

    /** Names of required fields that are still "unknown" or 0 after every fallback. */
    static List<String> defaultsLeft(JSONObject d) {
        List<String> left = new ArrayList<String>();
        String[] text = {"model", "manufacturer", "soc", "abi"};
        for (String key : text) {
            if (UNKNOWN.equals(d.optString(key, UNKNOWN))) {
                left.add(key);
            }
        }
        if (d.optInt("cores", 0) <= 0) {
            left.add("cores");
        }
        if (d.optDouble("total_ram_mb", 0) <= 0) {
            left.add("total_ram_mb");
        }
        return left;
    }

    /** SoC: Build.SOC_MANUFACTURER/SOC_MODEL (API 31+), else Build.HARDWARE, /proc/cpuinfo, Build.BOARD. */
    static String soc() {
        if (Build.VERSION.SDK_INT >= 31) {
            String maker = buildField("SOC_MANUFACTURER");
            String model = buildField("SOC_MODEL");
            if (isKnown(model)) {
                return isKnown(maker) ? maker + " " + model : model;
            }
        }
        if (isKnown(Build.HARDWARE)) {
            return Build.HARDWARE;
        }
        String fromCpuinfo = cpuinfoHardware();
        if (isKnown(fromCpuinfo)) {
            return fromCpuinfo;
        }
        return orUnknown(Build.BOARD);
    }

    /** Possible CPUs from /sys (counts cores that are offline right now), at least the online count. */
    static int cores() {
        int online = Runtime.getRuntime().availableProcessors();
        int possible = 0;
        try {
            String range = IoUtil.readText(new File("/sys/devices/system/cpu/possible")).trim();
            for (String part : range.split(",")) {
                String[] ends = part.split("-");
                int lo = Integer.parseInt(ends[0].trim());
                int hi = ends.length > 1 ? Integer.parseInt(ends[1].trim()) : lo;
                possible += hi - lo + 1;
            }
        } catch (IOException | RuntimeException e) {
            Log.w(BenchmarkActivity.TAG, "cannot read /sys/devices/system/cpu/possible: " + e);
        }
        return Math.max(online, possible);
    }

    static double totalRamMb(Context context) {
        ActivityManager am = (ActivityManager) context.getSystemService(Context.ACTIVITY_SERVICE);
        if (am != null) {
            ActivityManager.MemoryInfo mi = new ActivityManager.MemoryInfo();
            am.getMemoryInfo(mi);
            if (mi.totalMem > 0) {
                return mi.totalMem / (1024.0 * 1024.0);
            }
        }
        try {
            for (String line : IoUtil.readText(new File("/proc/meminfo")).split("\n")) {
                if (line.startsWith("MemTotal:")) {
                    return Long.parseLong(line.replaceAll("[^0-9]", "")) / 1024.0;
                }
            }
        } catch (IOException | RuntimeException e) {
            Log.w(BenchmarkActivity.TAG, "cannot read /proc/meminfo: " + e);
        }
        return 0;
    }

    static boolean isEmulator() {
        String fp = Build.FINGERPRINT == null ? "" : Build.FINGERPRINT;
        String hw = Build.HARDWARE == null ? "" : Build.HARDWARE;
        String product = Build.PRODUCT == null ? "" : Build.PRODUCT;
        return fp.startsWith("generic") || fp.contains("emulator")
                || hw.contains("goldfish") || hw.contains("ranchu")
                || product.startsWith("sdk") || product.contains("emulator");
    }

    private static String buildField(String name) {
        try {
            Field f = Build.class.getField(name);
            Object v = f.get(null);
            return v == null ? null : v.toString();
        } catch (NoSuchFieldException | IllegalAccessException e) {
            return null;
        }
    }

    private static String cpuinfoHardware() {
        try {
            for (String line : IoUtil.readText(new File("/proc/cpuinfo")).split("\n")) {
                if (line.startsWith("Hardware")) {
                    int colon = line.indexOf(':');
                    return colon < 0 ? null : line.substring(colon + 1).trim();
                }
            }
        } catch (IOException e) {
            return null;
        }
        return null;
    }

    private static boolean isKnown(String s) {
        return s != null && !s.trim().isEmpty() && !UNKNOWN.equalsIgnoreCase(s.trim());
    }

    private static String orUnknown(String s) {
        return isKnown(s) ? s.trim() : UNKNOWN;
    }

    private static double round1(double v) {
        return Math.round(v * 10.0) / 10.0;
    }
}
