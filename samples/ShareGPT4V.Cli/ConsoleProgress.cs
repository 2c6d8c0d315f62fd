namespace ShareGPT4V.Cli;

/// <summary>
/// A progress bar on standard error (redrawn in place on a terminal, a line every few seconds when redirected),
/// so standard output stays clean for answers and JSON.
/// </summary>
internal sealed class ConsoleProgress
{
    private readonly string _label;
    private readonly bool _interactive = !Console.IsErrorRedirected;
    private readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();
    private TimeSpan _lastDraw = TimeSpan.FromDays(-1);
    private bool _drawn;

    public ConsoleProgress(string label) => _label = label;

    public void Report(double done, double total, string? detail = null)
    {
        var now = _clock.Elapsed;
        bool finished = done >= total;
        if (!finished && now - _lastDraw < (_interactive ? TimeSpan.FromMilliseconds(100) : TimeSpan.FromSeconds(5))) return;
        _lastDraw = now;
        double f = total > 0 ? Math.Clamp(done / total, 0, 1) : 1;
        const int width = 30;
        int filled = (int)Math.Round(f * width);
        var line = $"{_label} [{new string('#', filled)}{new string('.', width - filled)}] {f * 100,5:F1}% {detail}";
        if (_interactive)
        {
            int max = Math.Max(20, SafeWindowWidth() - 1);
            if (line.Length > max) line = line[..max];
            Console.Error.Write("\r" + line.PadRight(max));
            _drawn = true;
            if (finished) Done();
        }
        else
            Console.Error.WriteLine(line);
    }

    /// <summary>Ends the bar's line (on a terminal).</summary>
    public void Done()
    {
        if (_interactive && _drawn) Console.Error.WriteLine();
        _drawn = false;
    }

    private static int SafeWindowWidth()
    {
        try { return Console.WindowWidth > 0 ? Console.WindowWidth : 100; }
        catch (IOException) { return 100; }
    }
}

/// <summary>Adapts <see cref="IProgress{T}"/> reports to a <see cref="ConsoleProgress"/> bar, on the reporting thread.</summary>
internal sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
