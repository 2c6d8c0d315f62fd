using System.Text.Json;
using ShareGPT4V.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace ShareGPT4V.Tests.Oracle;

/// <summary>One oracle case: its golden.json, golden tensors, and where its checkpoint folders are.</summary>
internal sealed class GoldenCase
{
    public string Name { get; }
    public string Dir { get; }
    public JsonElement Golden { get; }
    /// <summary>The folder to load the model from.</summary>
    public string ModelPath { get; }
    public string PrimaryVariant => Golden.GetProperty("primary_pixel_variant").GetString()!;

    /// <summary>The image placeholder the golden ids use, and the one the model under test expects.</summary>
    private readonly (long Golden, long Model) _placeholder;

    public GoldenCase(string name, string? modelSubdir = null, string? goldenFrom = null, string? modelPath = null, long? modelPlaceholder = null)
    {
        Name = name;
        Dir = Fixtures.Path("oracle/" + (goldenFrom ?? name));
        Golden = JsonDocument.Parse(File.ReadAllBytes(System.IO.Path.Combine(Dir, "golden.json"))).RootElement.Clone();
        ModelPath = modelPath ?? Fixtures.Path("oracle/" + name + (modelSubdir is null ? "" : "/" + modelSubdir));
        var special = Golden.GetProperty("special_ids");
        long golden = special.TryGetProperty("image_token_index", out var hf) ? hf.GetInt64() : special.GetProperty("image_placeholder").GetInt64();
        _placeholder = (golden, modelPlaceholder ?? golden);
    }

    public static GoldenCase Get(string name) => name switch
    {
        "llava_tiny336" => new GoldenCase(name, "model"),
        "llava_tiny336_bin" => new GoldenCase(name, "model", "llava_tiny336"),
        // Oracle cases rewritten by ModelConverter into the other layout: the goldens must still hold.
        "llava_tiny336_as_hf" => Converted(name, "llava_tiny336", "model", TargetLayout.LlavaHf),
        "hf_tiny_as_original" => Converted(name, "hf_tiny", null, TargetLayout.Original),
        _ => new GoldenCase(name),
    };

    private static readonly Dictionary<string, ModelConversionResult> ConvertedFolders = new();

    private static GoldenCase Converted(string name, string source, string? subdir, TargetLayout layout)
    {
        ModelConversionResult result;
        lock (ConvertedFolders)
        {
            if (!ConvertedFolders.TryGetValue(name, out result!))
            {
                var dir = Directory.CreateTempSubdirectory("sgpt4v-" + name + "-").FullName;
                AppDomain.CurrentDomain.ProcessExit += (_, _) => { try { Directory.Delete(dir, true); } catch (IOException) { } };
                var from = Fixtures.Path("oracle/" + source + (subdir is null ? "" : "/" + subdir));
                ConvertedFolders[name] = result = ModelConverter.Convert(from, System.IO.Path.Combine(dir, "out"), new ModelConversionOptions { Layout = layout });
            }
        }
        var placeholder = Configuration.ModelFolder.Open(result.ModelPath).Config.ImageTokenIndex;
        return new GoldenCase(name, goldenFrom: source, modelPath: result.ModelPath, modelPlaceholder: placeholder);
    }

    /// <summary>Input ids of the golden with the image placeholder the model under test expects.</summary>
    public long[] InputIds(JsonElement e) => Ids(e).Select(x => x == _placeholder.Golden ? _placeholder.Model : x).ToArray();
    public long[][] InputIdRows(JsonElement e) => e.EnumerateArray().Select(InputIds).ToArray();

    public Tensor Tensor(string file, string key)
    {
        using var f = SafeTensorsFile.Open(System.IO.Path.Combine(Dir, file));
        using var t = f.Load(key);
        return t.clone();
    }

    public bool HasTensor(string file, string key)
    {
        using var f = SafeTensorsFile.Open(System.IO.Path.Combine(Dir, file));
        return f.Contains(key);
    }

    public IReadOnlyList<string> TensorNames(string file)
    {
        using var f = SafeTensorsFile.Open(System.IO.Path.Combine(Dir, file));
        return f.Names.ToList();
    }

    public JsonElement Prompt(string name) => Golden.GetProperty("prompts").GetProperty(name);

    public static long[] Ids(JsonElement e) => e.EnumerateArray().Select(x => x.GetInt64()).ToArray();
    public static long[][] IdRows(JsonElement e) => e.EnumerateArray().Select(Ids).ToArray();

    /// <summary>Pixel tensor [1, 3, H, W] for an image and variant.</summary>
    public Tensor Pixels(string image, string variant) => Tensor("pixel_values.safetensors", $"{image}_{variant}").unsqueeze(0);
}

internal static class TensorAssert
{
    /// <summary>Asserts max |a - b| ≤ tol and returns the max difference (recorded for the closing note).</summary>
    public static double Close(Tensor expected, Tensor actual, double tol, string what)
    {
        Xunit.Assert.Equal(expected.shape, actual.shape);
        using var diff = (expected.to(ScalarType.Float64) - actual.to(ScalarType.Float64)).abs().max();
        double d = diff.item<double>();
        MaxDiffs.Record(what, d);
        Xunit.Assert.True(d <= tol, $"{what}: max abs diff {d:E3} exceeds {tol:E1}");
        return d;
    }
}

/// <summary>Collects the largest differences seen, printed by the test host for the record.</summary>
internal static class MaxDiffs
{
    private static readonly object Gate = new();
    public static void Record(string what, double d)
    {
        lock (Gate)
        {
            var path = System.IO.Path.Combine(AppContext.BaseDirectory, "max-diffs.txt");
            File.AppendAllText(path, $"{what}\t{d:E3}\n");
        }
    }
}
