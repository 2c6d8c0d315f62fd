using Microsoft.Extensions.Logging;

namespace ShareGPT4V.GpuCheck;

/// <summary>Writes log entries to the console (the app carries no logging package).</summary>
internal sealed class ConsoleLogger : ILogger
{
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;
    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel)) Console.WriteLine($"[{logLevel}] {formatter(state, exception)}");
    }
}
