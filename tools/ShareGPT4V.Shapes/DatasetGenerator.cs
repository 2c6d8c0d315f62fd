using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace ShareGPT4V.Shapes;

/// <summary>What <c>generate</c> writes.</summary>
/// <param name="OutputDir">The dataset folder.</param>
/// <param name="Seed">Seed of everything drawn; the same seed gives the same bytes.</param>
/// <param name="Stage1">Images with one caption each (stage 1).</param>
/// <param name="Stage2">Images with one multi-turn conversation each (stage 2).</param>
/// <param name="Eval">Held-out images with the evaluation questions.</param>
/// <param name="Renderer">Which renderer draws the images.</param>
/// <param name="Overwrite">Replace a non-empty output folder.</param>
/// <param name="ExtraQuestions">Add the binding questions (shape / colour in a cell, size, empty cells) to stage 2.</param>
/// <param name="Threads">Images rendered at once (0 = one per processor); the output does not depend on it.</param>
/// <param name="LabelCells">Label masks name each object's colour, shape and grid cell (<see cref="World.CellClassId"/>)
/// instead of its colour, shape and size.</param>
internal sealed record GenerateOptions(string OutputDir, int Seed = 1, int Stage1 = 20000, int Stage2 = 20000, int Eval = 200,
    RendererKind Renderer = RendererKind.Default, bool Overwrite = false, bool ExtraQuestions = false, int Threads = 0,
    bool LabelCells = false)
{
    public const int MaxImagesPerSplit = 10_000_000;

    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(OutputDir)) throw new ArgumentException("--out names no folder");
        foreach (var (name, n) in new[] { ("--stage1", Stage1), ("--stage2", Stage2), ("--eval", Eval) })
            if (n < 0 || n > MaxImagesPerSplit) throw new ArgumentException($"{name} must be in [0, {MaxImagesPerSplit}], not {n}");
        if (Stage1 + Stage2 + Eval == 0) throw new ArgumentException("Nothing to generate: --stage1, --stage2 and --eval are all 0");
        if (Threads < 0 || Threads > 1024) throw new ArgumentException($"--threads must be in [0, 1024], not {Threads}");
    }
}

/// <summary>Puts a finished folder in place of another without a moment where neither exists.</summary>
internal static class FolderSwap
{
    /// <summary>Moves <paramref name="finished"/> to <paramref name="target"/>; an existing target is set aside first and deleted last.</summary>
    public static void Replace(string finished, string target)
    {
        if (!Directory.Exists(target))
        {
            Directory.Move(finished, target);
            return;
        }
        string aside = Path.Combine(Path.GetDirectoryName(target) ?? ".", $".{Path.GetFileName(target)}.old-{Environment.ProcessId}");
        if (Directory.Exists(aside)) Directory.Delete(aside, recursive: true);
        Directory.Move(target, aside);
        try { Directory.Move(finished, target); }
        catch
        {
            Directory.Move(aside, target);
            throw;
        }
        Directory.Delete(aside, recursive: true);
    }
}

/// <summary>One generated image: its scene and the text written about it.</summary>
internal sealed record GeneratedImage(string Id, string ImagePath, string LabelPath, Scene Scene, IReadOnlyList<SceneQuestion> Turns,
    IReadOnlyList<SceneQuestion> EvalQuestions);

/// <summary>Writes a shapes-world dataset: images, label masks, stage-1/2 LLaVA JSON, eval questions and annotations.</summary>
internal static class DatasetGenerator
{
    public static readonly string[] Splits = ["stage1", "stage2", "eval"];
    private static readonly string[] SplitPrefix = ["s1", "s2", "ev"];

    internal static readonly JsonSerializerOptions Json = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
    private static readonly JsonWriterOptions WriterOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping, Indented = false };

    /// <summary>The seed of one image; each image draws from its own generators, so images can be made in any order.</summary>
    public static int ImageSeed(int seed, int split, int index) => unchecked((int)(seed * 1000003L + split * 100_000_000L + index));

    /// <summary>Draws the scene, settings and text of one image (no pixels).</summary>
    public static (Scene Scene, RenderSettings Settings, List<SceneQuestion> Turns, List<SceneQuestion> Eval) Plan(
        int seed, int split, int index, RendererKind renderer, bool extraQuestions = false)
    {
        int s = ImageSeed(seed, split, index);
        var (scene, settings) = SceneSampler.Sample(new Random(s), renderer);
        var text = new Random(s ^ 0x27d4eb2f);
        var turns = split switch
        {
            0 => [new SceneQuestion("caption", Language.DescribeRequests[text.Next(Language.DescribeRequests.Length)], Language.Caption(scene, text))],
            1 => Language.Stage2Turns(scene, text, extraQuestions),
            _ => new List<SceneQuestion>(),
        };
        var eval = split == 2 ? Language.EvalQuestions(scene, text) : new List<SceneQuestion>();
        return (scene, settings, turns, eval);
    }

    public static void Generate(GenerateOptions o, TextWriter log, CancellationToken ct)
    {
        o.Validate();
        string target = Path.GetFullPath(o.OutputDir);
        if (File.Exists(target)) throw new IOException($"--out '{target}' is a file, not a folder");
        if (Directory.Exists(target) && Directory.EnumerateFileSystemEntries(target).Any() && !o.Overwrite)
            throw new IOException($"--out '{target}' is not empty (pass --overwrite to replace it)");
        string parent = Path.GetDirectoryName(target) ?? ".";
        Directory.CreateDirectory(parent);
        // Everything is written beside the target first and moved into place at the end, so a failed or cancelled run
        // leaves an earlier dataset as it was.
        string temp = Path.Combine(parent, $".{Path.GetFileName(target)}.partial-{Environment.ProcessId}");
        if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        try
        {
            var counts = new[] { o.Stage1, o.Stage2, o.Eval };
            var results = new GeneratedImage[3][];
            var started = System.Diagnostics.Stopwatch.StartNew();
            int total = counts.Sum(), done = 0;
            for (int split = 0; split < 3; split++)
            {
                if (counts[split] == 0) { results[split] = []; continue; }
                Directory.CreateDirectory(Path.Combine(temp, "images", Splits[split]));
                Directory.CreateDirectory(Path.Combine(temp, "labels", Splits[split]));
                int width = Math.Max(6, counts[split].ToString(CultureInfo.InvariantCulture).Length);
                var items = new GeneratedImage[counts[split]];
                int sp = split;
                try
                {
                    Parallel.For(0, counts[split], new ParallelOptions { CancellationToken = ct, MaxDegreeOfParallelism = o.Threads > 0 ? o.Threads : Environment.ProcessorCount }, i =>
                    {
                        items[i] = MakeImage(temp, o, sp, i, width);
                        int d = Interlocked.Increment(ref done);
                        if (d % 500 == 0 || d == total)
                            lock (log) log.WriteLine($"generate: {d}/{total} images ({d / Math.Max(started.Elapsed.TotalSeconds, 1e-3):F1}/s)");
                    });
                }
                catch (AggregateException e) when (e.InnerExceptions.Count > 0)
                {
                    // A full disk or an unwritable folder: report the first worker's error itself.
                    System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw();
                }
                results[split] = items;
            }
            WriteJson(temp, results, o);
            FolderSwap.Replace(temp, target);
            log.WriteLine($"generate: {total} images in {started.Elapsed.TotalSeconds:F1} s ({total / Math.Max(started.Elapsed.TotalSeconds, 1e-3):F1}/s) -> {target}");
        }
        catch
        {
            try { if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>The curriculum files <see cref="WriteCurriculum"/> writes beside stage2.json, in the order they are trained.</summary>
    public static readonly string[] CurriculumFiles = ["stage2-lookup.json", "stage2-binding.json"];

    /// <summary>
    /// Writes the two curriculum steps over the stage-2 images of a generated dataset (no new pixels): lookups
    /// (<see cref="Language.LookupTurns"/>), then binding (<see cref="Language.BindingTurns"/>). The scenes are drawn again
    /// from the seed and renderer in dataset.json and checked against scenes/stage2.jsonl, so the questions are about
    /// exactly the images on disk. Deterministic for the dataset.
    /// </summary>
    public static void WriteCurriculum(string dataDir, TextWriter log, CancellationToken ct)
    {
        string root = Path.GetFullPath(dataDir);
        string manifestPath = Path.Combine(root, "dataset.json");
        if (!File.Exists(manifestPath)) throw new IOException($"'{manifestPath}' not found: --data must be a folder written by 'generate'");
        int seed, count;
        RendererKind renderer;
        try
        {
            using var manifest = JsonDocument.Parse(File.ReadAllText(manifestPath));
            var m = manifest.RootElement;
            seed = m.GetProperty("seed").GetInt32();
            count = m.GetProperty("stage2").GetInt32();
            renderer = m.GetProperty("renderer").GetString() switch
            {
                "default" => RendererKind.Default,
                "alt" => RendererKind.Alt,
                var r => throw new InvalidDataException($"'{manifestPath}': unknown renderer '{r}'"),
            };
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"'{manifestPath}' is not a dataset manifest of this generator: {e.Message}", e);
        }
        if (count <= 0) throw new InvalidDataException($"'{manifestPath}': the dataset has no stage-2 images");
        if (count > GenerateOptions.MaxImagesPerSplit) throw new InvalidDataException($"'{manifestPath}': stage2 {count} is out of range");
        string scenesPath = Path.Combine(root, "scenes", "stage2.jsonl");
        if (!File.Exists(scenesPath)) throw new IOException($"'{scenesPath}' not found: --data must be a folder written by 'generate'");

        int width = Math.Max(6, count.ToString(CultureInfo.InvariantCulture).Length);
        var lookup = new GeneratedImage[count];
        var binding = new GeneratedImage[count];
        using (var scenes = new StreamReader(scenesPath))
        {
            for (int i = 0; i < count; i++)
            {
                ct.ThrowIfCancellationRequested();
                var (scene, _) = SceneSampler.Sample(new Random(ImageSeed(seed, 1, i)), renderer);
                string id = $"{SplitPrefix[1]}_{(i + 1).ToString(CultureInfo.InvariantCulture).PadLeft(width, '0')}";
                string imagePath = $"images/{Splits[1]}/{id}.png", labelPath = $"labels/{Splits[1]}/{id}.png";
                string? line = scenes.ReadLine();
                string expected = SceneJson(new GeneratedImage(id, imagePath, labelPath, scene, [], []));
                if (line != expected)
                    throw new InvalidDataException($"'{scenesPath}' line {i + 1} does not match scene '{id}' drawn again from seed {seed}: " +
                        "the dataset was written by another version of the generator or changed since");
                var text = new Random(ImageSeed(seed, 1, i) ^ 0x3c6ef372);
                lookup[i] = new GeneratedImage(id + "_lookup", imagePath, labelPath, scene, Language.LookupTurns(scene, text), []);
                binding[i] = new GeneratedImage(id + "_binding", imagePath, labelPath, scene, Language.BindingTurns(scene, text), []);
            }
        }
        // Each file is written beside its final name and moved into place, so a failure leaves no half-written file.
        foreach (var (name, records) in new[] { (CurriculumFiles[0], lookup), (CurriculumFiles[1], binding) })
        {
            string final = Path.Combine(root, name), temp = final + $".partial-{Environment.ProcessId}";
            try
            {
                WriteRecords(temp, records);
                File.Move(temp, final, overwrite: true);
            }
            finally { if (File.Exists(temp)) File.Delete(temp); }
            log.WriteLine($"curriculum: {records.Length} records -> {final}");
        }
    }

    private static GeneratedImage MakeImage(string root, GenerateOptions o, int split, int index, int width)
    {
        var (scene, settings, turns, eval) = Plan(o.Seed, split, index, o.Renderer, o.ExtraQuestions);
        string id = $"{SplitPrefix[split]}_{(index + 1).ToString(CultureInfo.InvariantCulture).PadLeft(width, '0')}";
        string imagePath = $"images/{Splits[split]}/{id}.png";
        string labelPath = $"labels/{Splits[split]}/{id}.png";
        var render = new Random(ImageSeed(o.Seed, split, index) ^ 0x5bd1e995);
        var image = Renderer.Render(scene, settings, render, o.LabelCells);
        PngFile.Write(Path.Combine(root, imagePath), image.Rgb, image.Width, image.Height, 3);
        PngFile.Write(Path.Combine(root, labelPath), image.Mask, image.Width, image.Height, 1);
        return new GeneratedImage(id, imagePath, labelPath, scene, turns, eval);
    }

    private static void WriteJson(string root, GeneratedImage[][] results, GenerateOptions o)
    {
        WriteRecords(Path.Combine(root, "stage1.json"), results[0]);
        WriteRecords(Path.Combine(root, "stage2.json"), results[1]);
        Directory.CreateDirectory(Path.Combine(root, "scenes"));
        for (int split = 0; split < 3; split++)
            WriteLines(Path.Combine(root, "scenes", Splits[split] + ".jsonl"), results[split].Select(g => SceneJson(g)));

        Directory.CreateDirectory(Path.Combine(root, "eval"));
        var evalQuestions = results[2].SelectMany(g => g.EvalQuestions.Select(q => (g, q))).ToList();
        string Qid((GeneratedImage g, SceneQuestion q) x) => $"{x.g.Id}_{(x.q.Category == "yesno" ? (x.q.Present == true ? "yes" : "no") : x.q.Category)}";
        WriteLines(Path.Combine(root, "eval", "questions.jsonl"), evalQuestions.Select(x => Line(w =>
        {
            w.WriteString("question_id", Qid(x));
            w.WriteString("image", x.g.ImagePath);
            w.WriteString("text", x.q.Question);
            w.WriteString("category", x.q.Category);
        })));
        // The same questions with the short-answer instruction on the short-answer ones (the reference's eval prompts).
        WriteLines(Path.Combine(root, "eval", "questions_short.jsonl"), evalQuestions.Select(x => Line(w =>
        {
            w.WriteString("question_id", Qid(x));
            w.WriteString("image", x.g.ImagePath);
            w.WriteString("text", x.q.Category == "caption" ? x.q.Question : x.q.Question + Language.ShortAnswerSuffix);
            w.WriteString("category", x.q.Category);
        })));
        WriteLines(Path.Combine(root, "eval", "annotations.jsonl"), evalQuestions.Select(x => Line(w =>
        {
            w.WriteString("question_id", Qid(x));
            w.WriteString("category", x.q.Category);
            w.WriteString("answer", x.q.Answer);
            switch (x.q.Category)
            {
                case "count": w.WriteNumber("count", x.g.Scene.Objects.Count); break;
                case "color": w.WriteString("color", x.q.Color); w.WriteString("shape", x.q.Shape); break;
                case "yesno": w.WriteString("label", x.q.Present == true ? "yes" : "no"); w.WriteString("color", x.q.Color); w.WriteString("shape", x.q.Shape); break;
                case "position":
                    var obj = x.g.Scene.Objects.First(ob => ob.ColorName == x.q.Color && ob.ShapeName == x.q.Shape);
                    w.WriteString("color", x.q.Color); w.WriteString("shape", x.q.Shape);
                    w.WriteString("row", World.Rows[obj.Row]); w.WriteString("col", World.Cols[obj.Col]);
                    break;
            }
            w.WriteStartArray("objects");
            foreach (var ob in x.g.Scene.Objects)
            {
                w.WriteStartObject();
                w.WriteString("color", ob.ColorName); w.WriteString("shape", ob.ShapeName); w.WriteString("size", ob.SizeName);
                w.WriteString("row", World.Rows[ob.Row]); w.WriteString("col", World.Cols[ob.Col]);
                w.WriteEndObject();
            }
            w.WriteEndArray();
        })));

        var manifest = new Dictionary<string, object>
        {
            ["generator"] = "sharegpt4v-shapes",
            ["seed"] = o.Seed,
            ["renderer"] = o.Renderer.ToString().ToLowerInvariant(),
            ["stage1"] = o.Stage1, ["stage2"] = o.Stage2, ["eval"] = o.Eval,
            ["extra_questions"] = o.ExtraQuestions,
            ["label_classes"] = o.LabelCells ? World.CellClassCount : World.ClassCount,
            ["label_scheme"] = o.LabelCells ? "color-shape-cell" : "color-shape-size",
        };
        File.WriteAllText(Path.Combine(root, "dataset.json"), JsonSerializer.Serialize(manifest, new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    private static string SceneJson(GeneratedImage g) => Line(w =>
    {
        var s = g.Scene;
        w.WriteString("id", g.Id);
        w.WriteString("image", g.ImagePath);
        w.WriteNumber("width", s.Width);
        w.WriteNumber("height", s.Height);
        w.WriteString("background", s.BackgroundName);
        w.WriteStartArray("background_rgb");
        w.WriteNumberValue(s.BackgroundRgb.R); w.WriteNumberValue(s.BackgroundRgb.G); w.WriteNumberValue(s.BackgroundRgb.B);
        w.WriteEndArray();
        w.WriteString("texture", s.Texture.ToString().ToLowerInvariant());
        w.WriteStartArray("objects");
        foreach (var o in s.Objects)
        {
            w.WriteStartObject();
            w.WriteString("color", o.ColorName);
            w.WriteString("shape", o.ShapeName);
            w.WriteString("size", o.SizeName);
            w.WriteString("row", World.Rows[o.Row]);
            w.WriteString("col", World.Cols[o.Col]);
            w.WriteString("position", o.Position);
            w.WriteNumber("class_id", o.ClassId);
            w.WriteNumber("cx", Math.Round(o.Cx, 2));
            w.WriteNumber("cy", Math.Round(o.Cy, 2));
            w.WriteNumber("extent", Math.Round(o.Extent, 2));
            w.WriteNumber("rotation_deg", Math.Round(o.Rotation * 180 / Math.PI, 2));
            w.WriteStartArray("rgb"); w.WriteNumberValue(o.Rgb.R); w.WriteNumberValue(o.Rgb.G); w.WriteNumberValue(o.Rgb.B); w.WriteEndArray();
            w.WriteEndObject();
        }
        w.WriteEndArray();
    });

    /// <summary>A LLaVA-format JSON array: one record per image, one line per record.</summary>
    private static void WriteRecords(string path, GeneratedImage[] images)
    {
        using var writer = new StreamWriter(path, false, new UTF8Encoding(false));
        writer.Write("[\n");
        for (int i = 0; i < images.Length; i++)
        {
            var g = images[i];
            writer.Write(Line(w =>
            {
                w.WriteString("id", g.Id);
                w.WriteString("image", g.ImagePath);
                w.WriteString("patch_labels", g.LabelPath);
                w.WriteStartArray("conversations");
                for (int t = 0; t < g.Turns.Count; t++)
                {
                    w.WriteStartObject();
                    w.WriteString("from", "human");
                    w.WriteString("value", (t == 0 ? "<image>\n" : "") + g.Turns[t].Question);
                    w.WriteEndObject();
                    w.WriteStartObject();
                    w.WriteString("from", "gpt");
                    w.WriteString("value", g.Turns[t].Answer);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            }));
            writer.Write(i + 1 < images.Length ? ",\n" : "\n");
        }
        writer.Write("]\n");
    }

    private static void WriteLines(string path, IEnumerable<string> lines)
    {
        using var writer = new StreamWriter(path, false, new UTF8Encoding(false));
        foreach (var l in lines) { writer.Write(l); writer.Write('\n'); }
    }

    private static string Line(Action<Utf8JsonWriter> body)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer, WriterOptions))
        {
            w.WriteStartObject();
            body(w);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }
}
