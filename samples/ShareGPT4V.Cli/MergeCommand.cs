using System.Text.Json;

namespace ShareGPT4V.Cli;

/// <summary><c>merge</c>: joins the JSON lines of sharded caption runs into one file in input order.</summary>
internal static class MergeCommand
{
    public static VerbSpec Verb => new("merge", "join the JSON lines of sharded caption runs in input order")
    {
        Details = """
        usage: sharegpt4v merge --input FILE|FOLDER [--input ...] --output FILE

        Joins the outputs of 'caption --shard i/N' runs (or any caption JSON lines) into one file, ordered by each
        line's "index" (the image's position in the whole input), so the result equals an unsharded run's output
        (timings aside). An image found more than once keeps its first line; a partial last line of an input (a
        killed run) is skipped. The output is written to a temporary file and renamed into place.
        """,
        Options =
        [
            new("input", "FILE|FOLDER", "a JSON-lines file, or a folder whose *.jsonl files are all read (repeatable)", Repeatable: true),
            new("output", "FILE", "the merged file"),
        ],
        Run = (cl, _) => Task.FromResult(Run(cl)),
    };

    public static int Run(CommandLine cl)
    {
        var output = cl.Required("output");
        var inputs = new List<string>();
        foreach (var i in cl.All("input"))
        {
            if (Directory.Exists(i))
                inputs.AddRange(Directory.EnumerateFiles(i, "*.jsonl").Where(f => Path.GetFullPath(f) != Path.GetFullPath(output)).OrderBy(f => f, StringComparer.Ordinal));
            else if (File.Exists(i)) inputs.Add(i);
            else throw new UsageException($"Input '{i}' does not exist");
        }
        if (inputs.Count == 0) throw new UsageException("--input is required for 'merge' (files or folders of *.jsonl)");

        var lines = new List<(long Index, int Order, string Line)>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        int duplicates = 0;
        foreach (var input in inputs)
        {
            var text = File.ReadAllText(input);
            int end = text.LastIndexOf('\n') + 1;
            if (end < text.Length) Console.Error.WriteLine($"{input}: skipped a partial last line ({text.Length - end} characters)");
            int lineNo = 0;
            foreach (var line in text[..end].Split('\n'))
            {
                lineNo++;
                if (string.IsNullOrWhiteSpace(line)) continue;
                long index;
                string image;
                try
                {
                    using var doc = JsonDocument.Parse(line);
                    var root = doc.RootElement;
                    index = root.TryGetProperty("index", out var ix) && ix.TryGetInt64(out var v) ? v : long.MaxValue;
                    image = root.TryGetProperty("image", out var im) && im.GetString() is { } s ? s : throw new InvalidDataException($"{input}:{lineNo}: the line has no \"image\"");
                }
                catch (JsonException e) { throw new InvalidDataException($"{input}:{lineNo}: not a JSON line ({e.Message})"); }
                if (!seen.Add(image)) { duplicates++; continue; }
                lines.Add((index, lines.Count, line));
            }
        }
        lines.Sort((a, b) => a.Index != b.Index ? a.Index.CompareTo(b.Index) : a.Order.CompareTo(b.Order));
        var temp = output + ".tmp-" + Environment.ProcessId;
        using (var w = new StreamWriter(temp, append: false, new System.Text.UTF8Encoding(false)))
        {
            foreach (var l in lines) { w.Write(l.Line); w.Write('\n'); }
        }
        File.Move(temp, output, overwrite: true);
        Console.Error.WriteLine($"merged {lines.Count} line(s) from {inputs.Count} file(s) into {output}" + (duplicates > 0 ? $" ({duplicates} duplicate(s) dropped)" : ""));
        return 0;
    }
}
