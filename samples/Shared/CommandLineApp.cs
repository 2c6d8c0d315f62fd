// The one command-line setup of the sharegpt4v tool, the bench and the GPU check (compiled into each of them): verbs
// and options are declared as specs, System.CommandLine parses them (help, --version, [suggest] completions, errors),
// and each verb's handler reads its values through CommandLine. Exit codes: 0 done, 1 error, 2 bad command line,
// 130 cancelled (the tools map their own exceptions to 1 and 130).
using System.CommandLine;
using System.Globalization;

namespace ShareGPT4V.CommandLineTools;

/// <summary>Thrown for a command line the tool cannot run; shown with the hint to the verb's help, exit code 2.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>
/// One option of a verb, written <c>--name VALUE</c> (or <c>--name=VALUE</c>); a flag when <see cref="ValueName"/> is
/// null. <see cref="Choices"/> are offered by tab completion (the handler checks the value).
/// </summary>
internal sealed record OptionSpec(string Name, string? ValueName, string Description, bool Repeatable = false, IReadOnlyList<string>? Choices = null)
{
    public bool IsFlag => ValueName is null;

    public static OptionSpec Flag(string name, string description) => new(name, null, description);
}

/// <summary>A positional argument of a verb (e.g. the repository of <c>download REPO</c>).</summary>
internal sealed record ArgumentSpec(string Name, string Description);

/// <summary>
/// A verb: a one-line summary (listed by the parent's help), the longer text its own help shows, its options, positional
/// arguments, sub-verbs, and the handler that runs it.
/// </summary>
internal sealed class VerbSpec(string name, string summary)
{
    public string Name { get; } = name;
    public string Summary { get; } = summary;
    public string? Details { get; init; }
    public List<OptionSpec> Options { get; init; } = [];
    public List<ArgumentSpec> Arguments { get; init; } = [];
    public List<VerbSpec> Verbs { get; init; } = [];
    /// <summary>Runs the verb; null for a verb that only groups sub-verbs.</summary>
    public Func<CommandLine, CancellationToken, Task<int>>? Run { get; init; }
}

/// <summary>The values of one parsed verb, read by name; numbers and sizes are checked with messages naming the option.</summary>
internal sealed class CommandLine
{
    private readonly Dictionary<string, IReadOnlyList<string>> _values;
    private readonly HashSet<string> _flags;
    private readonly IReadOnlyList<string> _arguments;

    /// <summary>The verb path, e.g. <c>caption</c> or <c>eval run</c>.</summary>
    public string Command { get; }

    public CommandLine(string command, Dictionary<string, IReadOnlyList<string>> values, HashSet<string> flags, IReadOnlyList<string> arguments)
    {
        Command = command;
        _values = values;
        _flags = flags;
        _arguments = arguments;
    }

    public bool Flag(string name) => _flags.Contains(name);

    public bool Has(string name) => _values.ContainsKey(name) || _flags.Contains(name);

    public IReadOnlyList<string> All(string name) => _values.TryGetValue(name, out var l) ? l : Array.Empty<string>();

    public string? Argument(int index) => index < _arguments.Count ? _arguments[index] : null;

    public string? Value(string name)
    {
        var all = All(name);
        if (all.Count > 1) throw new UsageException($"--{name} is given {all.Count} times; it takes one value");
        return all.Count == 1 ? all[0] : null;
    }

    public string Value(string name, string fallback) => Value(name) ?? fallback;

    public string Required(string name) => Value(name) ?? throw new UsageException($"--{name} is required for '{Command}'");

    public int? Int(string name, int min, int max)
    {
        var v = Value(name);
        if (v is null) return null;
        if (!int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) || n < min || n > max)
            throw new UsageException($"--{name} must be a whole number in [{min}, {max}], got '{v}'");
        return n;
    }

    public int Int(string name, int fallback, int min, int max) => Int(name, min, max) ?? fallback;

    /// <summary>A number in [min, max], or in (min, max] when <paramref name="minExclusive"/>: the message says which.</summary>
    public double? Double(string name, double min, double max, bool minExclusive = false)
    {
        var v = Value(name);
        if (v is null) return null;
        if (!double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) || !(minExclusive ? d > min : d >= min) || !(d <= max))
            throw new UsageException($"--{name} must be in {(minExclusive ? "(" : "[")}{Format(min)}, {Format(max)}], got {v}");
        return d;
    }

    /// <summary>A comma-separated list of whole numbers in [min, max] (empty when the option is absent).</summary>
    public IReadOnlyList<int> IntList(string name, int min, int max)
    {
        var v = Value(name);
        if (v is null) return Array.Empty<int>();
        var list = new List<int>();
        foreach (var part in v.Split(',', StringSplitOptions.TrimEntries))
        {
            if (!int.TryParse(part, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) || n < min || n > max)
                throw new UsageException($"--{name} must be a list of whole numbers in [{min}, {max}] such as 1,2,4,8, got '{v}'");
            list.Add(n);
        }
        return list;
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

    private static string Format(double x) => x == double.MaxValue ? "inf" : x.ToString(CultureInfo.InvariantCulture);
}

/// <summary>Builds the System.CommandLine tree from verb specs, parses, and runs the chosen verb.</summary>
internal static class CommandLineApp
{
    /// <summary>
    /// Parses <paramref name="args"/> and runs the verb. Bad command lines print <c>error: ...</c> and the verb's help
    /// hint and return 2; <paramref name="handle"/> maps other exceptions to an exit code after printing them (null:
    /// rethrow). No arguments print the help and return 2; <c>help</c> is <c>--help</c>.
    /// </summary>
    public static async Task<int> RunAsync(string tool, string description, IReadOnlyList<VerbSpec> verbs, string[] args,
        Func<Exception, int?> handle, CancellationToken cancellationToken)
    {
        var specs = new Dictionary<Command, (VerbSpec Spec, string Path)>();
        var root = new RootCommand(description);
        foreach (var v in verbs) root.Subcommands.Add(Build(v, "", specs));
        bool noArguments = args.Length == 0;
        if (noArguments || args is ["help"]) args = ["--help"];
        else if (args.Length >= 2 && args[0] == "help") args = [.. args[1..], "--help"];

        if (args is ["--version"])
        {
            // The package version, without the commit that SourceLink appends to the informational version.
            var version = System.Reflection.Assembly.GetEntryAssembly()?.GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
                .OfType<System.Reflection.AssemblyInformationalVersionAttribute>().FirstOrDefault()?.InformationalVersion.Split('+')[0];
            Console.WriteLine(version ?? "unknown");
            return 0;
        }

        var result = root.Parse(args);
        string helpHint = $"(see '{tool} {HelpPath(result, specs)}--help')";
        if (result.Errors.Count > 0)
        {
            // Unknown verbs and options, missing values: System.CommandLine's messages, one per line.
            var messages = ErrorMessages(result, specs);
            foreach (var e in messages)
                Console.Error.WriteLine($"error: {e}");
            Console.Error.WriteLine(helpHint);
            return 2;
        }
        if (result.Action is not null)
        {
            // --help and the [suggest] completion directive. A verb's own help shows its details under its summary.
            if (specs.TryGetValue(result.CommandResult.Command, out var shown) && shown.Spec.Details is { } details)
                result.CommandResult.Command.Description = shown.Spec.Summary + Environment.NewLine + Environment.NewLine + details.TrimEnd();
            int code = await result.InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = null, EnableDefaultExceptionHandler = false }, cancellationToken);
            return noArguments ? 2 : code;
        }
        if (!specs.TryGetValue(result.CommandResult.Command, out var chosen) || chosen.Spec.Run is null)
        {
            var sub = chosen.Spec?.Verbs.Select(v => v.Name) ?? verbs.Select(v => v.Name);
            Console.Error.WriteLine($"error: '{tool} {chosen.Path}' needs a sub-command: {string.Join(", ", sub)}");
            Console.Error.WriteLine(helpHint);
            return 2;
        }

        try
        {
            return await chosen.Spec.Run(Read(result, chosen.Spec, chosen.Path), cancellationToken);
        }
        catch (UsageException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            Console.Error.WriteLine(helpHint);
            return 2;
        }
        catch (Exception e) when (handle(e) is int code)
        {
            return code;
        }
    }

    /// <summary>Parses the arguments of one verb (those after its name) into a <see cref="CommandLine"/>, or throws <see cref="UsageException"/>.</summary>
    public static CommandLine ParseVerb(VerbSpec verb, IReadOnlyList<string> args)
    {
        var specs = new Dictionary<Command, (VerbSpec Spec, string Path)>();
        var root = new RootCommand { Build(verb, "", specs) };
        var result = root.Parse([verb.Name, .. args]);
        if (result.Errors.Count > 0) throw new UsageException(string.Join("; ", ErrorMessages(result, specs)));
        return Read(result, verb, verb.Name);
    }

    private static IEnumerable<string> ErrorMessages(ParseResult result, Dictionary<Command, (VerbSpec Spec, string Path)> specs)
    {
        // Unknown options and verbs in our words (naming the verb); System.CommandLine's other messages as they are.
        string where = specs.TryGetValue(result.CommandResult.Command, out var at) ? at.Path : "";
        var unmatched = result.UnmatchedTokens;
        return unmatched.Select(t => t.StartsWith('-') ? $"Unknown option {t}" + (where.Length > 0 ? $" for '{where}'" : "")
                : where.Length == 0 ? $"Unknown command '{t}'"
                : at.Spec.Verbs.Count > 0 ? $"Unknown command '{t}' for '{where}'" : $"Unexpected argument '{t}' for '{where}'")
            .Concat(result.Errors.Select(e => e.Message)
                .Where(m => !unmatched.Any(t => m.Contains($"'{t}'", StringComparison.Ordinal)))
                .Where(m => unmatched.Count == 0 || !m.StartsWith("Required command", StringComparison.Ordinal)))
            .Distinct();
    }

    private static string HelpPath(ParseResult result, Dictionary<Command, (VerbSpec Spec, string Path)> specs) =>
        specs.TryGetValue(result.CommandResult.Command, out var s) ? s.Path + " " : "";

    private static Command Build(VerbSpec verb, string parentPath, Dictionary<Command, (VerbSpec, string)> specs)
    {
        var command = new Command(verb.Name, verb.Summary);
        string path = parentPath.Length == 0 ? verb.Name : parentPath + " " + verb.Name;
        specs[command] = (verb, path);
        foreach (var o in verb.Options) command.Options.Add(Build(o));
        foreach (var a in verb.Arguments)
            command.Arguments.Add(new Argument<string>(a.Name) { Description = a.Description, Arity = ArgumentArity.ExactlyOne });
        foreach (var v in verb.Verbs) command.Subcommands.Add(Build(v, path, specs));
        return command;
    }

    private static Option Build(OptionSpec o)
    {
        Option option;
        if (o.IsFlag)
            option = new Option<bool>("--" + o.Name) { Arity = ArgumentArity.Zero };
        else if (o.Repeatable)
            option = new Option<string[]>("--" + o.Name) { Arity = ArgumentArity.OneOrMore, AllowMultipleArgumentsPerToken = false, HelpName = o.ValueName };
        else
            option = new Option<string>("--" + o.Name) { Arity = ArgumentArity.ExactlyOne, HelpName = o.ValueName };
        option.Description = o.Description;
        if (o.Choices is { } choices) option.CompletionSources.Add(choices.ToArray());
        return option;
    }

    private static CommandLine Read(ParseResult result, VerbSpec verb, string path)
    {
        var values = new Dictionary<string, IReadOnlyList<string>>(StringComparer.Ordinal);
        var flags = new HashSet<string>(StringComparer.Ordinal);
        foreach (var option in result.CommandResult.Command.Options)
        {
            var name = option.Name.TrimStart('-');
            if (result.GetResult(option) is not { Implicit: false } found) continue; // not on the command line
            if (option is Option<bool>) flags.Add(name);
            else if (option is Option<string[]> many) values[name] = result.GetValue(many) ?? Array.Empty<string>();
            else if (option is Option<string> one)
            {
                // Given twice: System.CommandLine keeps the last; a repeated single-value option is a mistake here.
                if (found.Tokens.Count > 1) throw new UsageException($"--{name} is given {found.Tokens.Count} times; it takes one value");
                values[name] = [result.GetValue(one)!];
            }
        }
        var arguments = verb.Arguments.Select((a, i) => result.GetValue<string>(a.Name) ?? "").ToList();
        return new CommandLine(path, values, flags, arguments);
    }

}
