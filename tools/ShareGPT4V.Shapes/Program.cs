using System.Globalization;

namespace ShareGPT4V.Shapes;

/// <summary>sharegpt4v-shapes: the shapes world's dataset generator and model-folder writer.</summary>
internal static class Program
{
    private const string Usage = """
        usage: sharegpt4v-shapes generate --out DIR [--seed 1] [--stage1 N] [--stage2 N] [--eval 200] [--renderer default|alt]
                   [--extra-questions] [--label-cells] [--threads N] [--overwrite]
               sharegpt4v-shapes curriculum --data DIR
               sharegpt4v-shapes init-model --data DIR --out MODELDIR [--image-size 160] [--patch-size 16] [--vision-hidden 160]
                   [--vision-layers 5] [--vision-heads 5] [--vision-intermediate 640] [--hidden 192] [--layers 4] [--heads 6]
                   [--intermediate 512] [--max-positions 1024] [--overwrite]

        generate    draws the shapes world (docs/shapes-world.md): images/, labels/ (per-pixel class masks), stage1.json,
                    stage2.json (LLaVA format), eval/ (questions.jsonl, questions_short.jsonl, annotations.jsonl), scenes/.
                    Defaults: --stage1 20000 --stage2 20000 --eval 200. The same seed gives the same bytes.
                    --extra-questions adds binding questions to stage 2 (shape / colour in a cell, size, empty cells).
                    --label-cells makes the label masks name colour, shape and grid cell (217 classes) instead of
                    colour, shape and size (49 classes).
        curriculum  writes stage2-lookup.json and stage2-binding.json beside DIR/stage2.json, over the same images: the
                    recipe's last two instruction steps (one-word lookups, then the binding questions; docs/shapes-model.md).
        init-model  writes a llava-hf model folder without weights: configs and a word-level tokenizer built from DIR.
        """;

    public static int Main(string[] args)
    {
        using var cts = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
        return Run(args, Console.Error, cts.Token);
    }

    internal static int Run(string[] args, TextWriter log, CancellationToken ct)
    {
        if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
        {
            log.WriteLine(Usage);
            return args.Length == 0 ? 2 : 0;
        }
        Dictionary<string, string> options;
        try { options = ParseOptions(args.Skip(1).ToArray()); }
        catch (ArgumentException e) { log.WriteLine($"error: {e.Message}"); log.WriteLine(Usage); return 2; }
        try
        {
            switch (args[0])
            {
                case "generate":
                    Check(options, "out", "seed", "stage1", "stage2", "eval", "renderer", "overwrite", "extra-questions", "threads", "label-cells");
                    var g = new GenerateOptions(
                        Required(options, "out"),
                        Int(options, "seed", 1), Int(options, "stage1", 20000), Int(options, "stage2", 20000), Int(options, "eval", 200),
                        Get(options, "renderer") switch
                        {
                            null or "default" => RendererKind.Default,
                            "alt" => RendererKind.Alt,
                            var r => throw new ArgumentException($"--renderer must be 'default' or 'alt', not '{r}'"),
                        },
                        options.ContainsKey("overwrite"),
                        options.ContainsKey("extra-questions"),
                        Int(options, "threads", 0),
                        options.ContainsKey("label-cells"));
                    g.Validate();
                    DatasetGenerator.Generate(g, log, ct);
                    return 0;
                case "curriculum":
                    Check(options, "data");
                    DatasetGenerator.WriteCurriculum(Required(options, "data"), log, ct);
                    return 0;
                case "init-model":
                    Check(options, "data", "out", "image-size", "patch-size", "vision-hidden", "vision-layers", "vision-heads",
                        "vision-intermediate", "hidden", "layers", "heads", "intermediate", "max-positions", "overwrite");
                    var d = new InitModelOptions(Required(options, "data"), Required(options, "out"));
                    var m = d with
                    {
                        ImageSize = Int(options, "image-size", d.ImageSize),
                        PatchSize = Int(options, "patch-size", d.PatchSize),
                        VisionHidden = Int(options, "vision-hidden", d.VisionHidden),
                        VisionLayers = Int(options, "vision-layers", d.VisionLayers),
                        VisionHeads = Int(options, "vision-heads", d.VisionHeads),
                        VisionIntermediate = Int(options, "vision-intermediate", d.VisionIntermediate),
                        Hidden = Int(options, "hidden", d.Hidden),
                        Layers = Int(options, "layers", d.Layers),
                        Heads = Int(options, "heads", d.Heads),
                        Intermediate = Int(options, "intermediate", d.Intermediate),
                        MaxPositions = Int(options, "max-positions", d.MaxPositions),
                        Overwrite = options.ContainsKey("overwrite"),
                    };
                    m.Validate();
                    ModelFolderWriter.Write(m, log);
                    return 0;
                default:
                    log.WriteLine($"error: unknown command '{args[0]}'");
                    log.WriteLine(Usage);
                    return 2;
            }
        }
        catch (ArgumentException e) { log.WriteLine($"error: {e.Message}"); return 2; }
        catch (OperationCanceledException) { log.WriteLine("cancelled"); return 130; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException)
        {
            log.WriteLine($"error: {e.Message}");
            return 1;
        }
    }

    private static Dictionary<string, string> ParseOptions(string[] args)
    {
        var d = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < args.Length; i++)
        {
            if (!args[i].StartsWith("--", StringComparison.Ordinal) || args[i].Length == 2) throw new ArgumentException($"unexpected argument '{args[i]}'");
            string name = args[i][2..];
            bool flag = name is "overwrite" or "extra-questions" or "label-cells";
            if (!flag && i + 1 >= args.Length) throw new ArgumentException($"--{name} needs a value");
            if (!d.TryAdd(name, flag ? "true" : args[++i])) throw new ArgumentException($"--{name} is given twice");
        }
        return d;
    }

    private static void Check(Dictionary<string, string> options, params string[] known)
    {
        foreach (var k in options.Keys)
            if (!known.Contains(k)) throw new ArgumentException($"unknown option --{k}");
    }

    private static string? Get(Dictionary<string, string> o, string name) => o.TryGetValue(name, out var v) ? v : null;

    private static string Required(Dictionary<string, string> o, string name) =>
        Get(o, name) ?? throw new ArgumentException($"--{name} is required");

    private static int Int(Dictionary<string, string> o, string name, int fallback)
    {
        if (Get(o, name) is not { } v) return fallback;
        return int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) ? n : throw new ArgumentException($"--{name} must be an integer, not '{v}'");
    }
}
