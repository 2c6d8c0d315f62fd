using System.Globalization;

namespace ShareGPT4V.Cli;

/// <summary>Thrown for a command line the CLI cannot run; the message is shown with the usage hint.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>
/// The parsed options of one command: <c>--name value</c>, <c>--name=value</c>, repeatable options and flags.
/// Every option a command accepts is declared up front, so a misspelt option is an error rather than ignored.
/// </summary>
internal sealed class CommandLine
{
    private readonly Dictionary<string, List<string>> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _flags = new(StringComparer.Ordinal);

    public string Command { get; }

    private CommandLine(string command) => Command = command;

    /// <param name="args">The arguments after the command name.</param>
    /// <param name="valued">Options that take a value.</param>
    /// <param name="flags">Options without a value.</param>
    public static CommandLine Parse(string command, IReadOnlyList<string> args, IReadOnlyCollection<string> valued, IReadOnlyCollection<string> flags)
    {
        var cl = new CommandLine(command);
        for (int i = 0; i < args.Count; i++)
        {
            var a = args[i];
            if (!a.StartsWith("--", StringComparison.Ordinal))
                throw new UsageException($"Unexpected argument '{a}' (options start with --)");
            string name = a[2..];
            string? value = null;
            int eq = name.IndexOf('=');
            if (eq >= 0) { value = name[(eq + 1)..]; name = name[..eq]; }
            if (flags.Contains(name))
            {
                if (value is not null) throw new UsageException($"--{name} takes no value");
                cl._flags.Add(name);
            }
            else if (valued.Contains(name))
            {
                if (value is null)
                {
                    if (i + 1 >= args.Count) throw new UsageException($"--{name} needs a value");
                    value = args[++i];
                }
                if (!cl._values.TryGetValue(name, out var list)) cl._values[name] = list = new List<string>();
                list.Add(value);
            }
            else
                throw new UsageException($"Unknown option --{name} for '{command}'");
        }
        return cl;
    }

    public bool Flag(string name) => _flags.Contains(name);

    public IReadOnlyList<string> All(string name) => _values.TryGetValue(name, out var l) ? l : Array.Empty<string>();

    public string? Value(string name)
    {
        var all = All(name);
        if (all.Count > 1) throw new UsageException($"--{name} is given {all.Count} times; it takes one value");
        return all.Count == 1 ? all[0] : null;
    }

    public string Required(string name) => Value(name) ?? throw new UsageException($"--{name} is required for '{Command}'");

    public int? Int(string name, int min, int max)
    {
        var v = Value(name);
        if (v is null) return null;
        if (!int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) || n < min || n > max)
            throw new UsageException($"--{name} must be a whole number in [{min}, {max}], got '{v}'");
        return n;
    }

    public double? Double(string name, double min, double max)
    {
        var v = Value(name);
        if (v is null) return null;
        if (!double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) || !(d >= min && d <= max))
            throw new UsageException($"--{name} must be a number in [{min}, {max}], got '{v}'");
        return d;
    }

    /// <summary>A byte size such as <c>2GB</c>, <c>500MB</c>, <c>4GiB</c> or a plain number of bytes.</summary>
    public long? Size(string name)
    {
        var v = Value(name);
        if (v is null) return null;
        var s = v.Trim().ToUpperInvariant();
        (string Suffix, long Factor)[] units = { ("GIB", 1L << 30), ("MIB", 1L << 20), ("KIB", 1L << 10), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1_000), ("B", 1) };
        long factor = 1;
        foreach (var (suffix, f) in units)
            if (s.EndsWith(suffix, StringComparison.Ordinal)) { s = s[..^suffix.Length]; factor = f; break; }
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var n) || !(n > 0) || n * factor > long.MaxValue / 2)
            throw new UsageException($"--{name} must be a size such as 2GB or 500MB, got '{v}'");
        return (long)(n * factor);
    }
}
