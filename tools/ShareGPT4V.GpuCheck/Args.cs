namespace ShareGPT4V.GpuCheck;

/// <summary>"command --name value --flag" parsing; unknown names are kept and ignored.</summary>
internal sealed class Args
{
    private readonly Dictionary<string, string> _values = new(StringComparer.Ordinal);

    public static (string Command, Args Options) Parse(string[] argv)
    {
        var a = new Args();
        string command = argv.Length > 0 && !argv[0].StartsWith("--", StringComparison.Ordinal) ? argv[0] : "";
        for (int i = command.Length > 0 ? 1 : 0; i < argv.Length; i++)
        {
            if (!argv[i].StartsWith("--", StringComparison.Ordinal)) throw new ArgumentException($"Unexpected argument '{argv[i]}'");
            var name = argv[i][2..];
            bool hasValue = i + 1 < argv.Length && !argv[i + 1].StartsWith("--", StringComparison.Ordinal);
            a._values[name] = hasValue ? argv[++i] : "true";
        }
        return (command, a);
    }

    public string? Get(string name) => _values.TryGetValue(name, out var v) ? v : null;
    public string Get(string name, string fallback) => Get(name) ?? fallback;
    public int GetInt(string name, int fallback) => Get(name) is { } v ? int.Parse(v) : fallback;
    public bool Has(string name) => _values.ContainsKey(name);
    public int[] GetInts(string name, string fallback) => Get(name, fallback).Split(',', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
    public string[] GetList(string name, string fallback) => Get(name, fallback).Split(',', StringSplitOptions.RemoveEmptyEntries);
}
