using Microsoft.Extensions.Logging;
using ShareGPT4V.Cuda;

namespace ShareGPT4V.Tests.Cuda;

/// <summary>A probe that answers what the test says, counting calls.</summary>
internal sealed class FakeProbe : ICudaProbe
{
    private readonly CudaProbeResult _result;
    public int Calls { get; private set; }
    public FakeProbe(CudaProbeResult result) => _result = result;
    public CudaProbeResult Probe() { Calls++; return _result; }

    public static FakeProbe Unavailable(string problem) => new(new CudaProbeResult { Available = false, Problem = problem });

    public static FakeProbe With(params CudaDeviceInfo[] devices) => new(new CudaProbeResult { Available = true, Devices = devices });

    public static CudaDeviceInfo Gpu(int index, double freeGib, int major = 9, int minor = 0, double totalGib = 80, string name = "Test GPU") => new()
    {
        Index = index, Name = name, ComputeCapabilityMajor = major, ComputeCapabilityMinor = minor,
        TotalBytes = (long)(totalGib * (1L << 30)), FreeBytes = (long)(freeGib * (1L << 30)),
    };
}

/// <summary>Collects log entries so tests can check that a fallback was logged.</summary>
internal sealed class ListLogger : ILogger
{
    public List<(LogLevel Level, string Message)> Entries { get; } = new();
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => true;
    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        lock (Entries) Entries.Add((logLevel, formatter(state, exception)));
    }
}

/// <summary>A logger factory handing out one <see cref="ListLogger"/> (the test project has no logging implementation).</summary>
internal sealed class ListLoggerFactory : ILoggerFactory
{
    public ListLogger Logger { get; } = new();
    public ILogger CreateLogger(string categoryName) => Logger;
    public void AddProvider(ILoggerProvider provider) { }
    public void Dispose() { }
}
