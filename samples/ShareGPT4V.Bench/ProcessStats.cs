using System.Diagnostics;
using System.Globalization;

namespace ShareGPT4V.Bench;

/// <summary>Resident memory of this process and the machine's load, from /proc where it exists.</summary>
internal static class ProcessStats
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

    /// <summary>CPU time of the whole machine (busy and total, in clock ticks) and of this process, at one instant.</summary>
    public readonly record struct CpuSample(long MachineBusy, long MachineTotal, TimeSpan Own);

    public static CpuSample? SampleCpu()
    {
        try
        {
            var fields = File.ReadLines("/proc/stat").First().Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1)
                .Select(x => long.Parse(x, CultureInfo.InvariantCulture)).ToArray();
            long idle = fields[3] + fields[4]; // idle + iowait
            long total = fields.Take(8).Sum(); // user nice system idle iowait irq softirq steal
            return new CpuSample(total - idle, total, Process.GetCurrentProcess().TotalProcessorTime);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException or InvalidOperationException)
        {
            return null;
        }
    }

    /// <summary>
    /// Percent of the machine's CPU capacity that other processes used between two samples: how much the figures of
    /// that stretch were disturbed by other work (0 on a quiet machine).
    /// </summary>
    public static double? OtherCpuPercent(CpuSample? start, CpuSample? end)
    {
        if (start is not { } a || end is not { } b || b.MachineTotal <= a.MachineTotal) return null;
        double tick = 1.0 / 100; // USER_HZ: /proc/stat counts in 1/100 s on Linux
        double total = (b.MachineTotal - a.MachineTotal) * tick;
        double busy = (b.MachineBusy - a.MachineBusy) * tick;
        double own = (b.Own - a.Own).TotalSeconds;
        return Math.Clamp((busy - own) / total * 100, 0, 100);
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
