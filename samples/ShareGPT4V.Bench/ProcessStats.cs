using System.Diagnostics;
using System.Globalization;

namespace ShareGPT4V.Bench;

/// <summary>Resident memory of this process and the machine's load, from /proc where it exists.</summary>
public static class ProcessStats
{
    /// <summary>Peak resident set size in bytes (VmHWM), which counts native memory and mapped files that were touched.</summary>
    public static long PeakRssBytes() => ReadStatusKb("VmHWM:") is long kb ? kb * 1024 : Process.GetCurrentProcess().PeakWorkingSet64;

    /// <summary>Current resident set size in bytes (VmRSS).</summary>
    public static long RssBytes() => ReadStatusKb("VmRSS:") is long kb ? kb * 1024 : Process.GetCurrentProcess().WorkingSet64;

    /// <summary>The 1-minute load average, or null where /proc/loadavg does not exist.</summary>
    public static double? LoadAverage1()
    {
        try
        {
            var text = File.ReadAllText("/proc/loadavg");
            return double.Parse(text.Split(' ')[0], CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return null;
        }
    }

    private static long? ReadStatusKb(string field)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith(field, StringComparison.Ordinal))
                    return long.Parse(line.AsSpan(field.Length).Trim().ToString().Split(' ')[0], CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { }
        return null;
    }
}
