using System.Reflection;
using System.Text.Json;

namespace ShareGPT4V.Configuration;

/// <summary>A published model, described as data: its hub ids, layout, weight format and configuration.</summary>
internal sealed record ModelPreset(string Name, string HubId, CheckpointLayout Layout, string Weights, string? VisionTowerHubId, LlavaConfig Config);

/// <summary>
/// The released LLaVA-1.5 / ShareGPT4V checkpoints as data (the configs they ship, embedded in the assembly), so a
/// model of the real size can be built on the meta device, estimated or validated without the weights.
/// </summary>
internal static class ModelPresets
{
    private static readonly Lazy<IReadOnlyDictionary<string, ModelPreset>> All = new(LoadAll);

    public static IReadOnlyCollection<string> Names => All.Value.Keys.ToList();

    /// <summary>A preset by name (case-insensitive), e.g. <c>ShareGPT4V-7B</c>.</summary>
    public static ModelPreset Get(string name) =>
        All.Value.TryGetValue(name, out var p) ? p
        : throw new ModelConfigurationException($"Unknown model preset '{name}' (known: {string.Join(", ", All.Value.Keys)})", null, "preset");

    public static ModelPreset ShareGPT4V_7B => Get("ShareGPT4V-7B");
    public static ModelPreset ShareGPT4V_13B => Get("ShareGPT4V-13B");

    private static IReadOnlyDictionary<string, ModelPreset> LoadAll()
    {
        var asm = typeof(ModelPresets).Assembly;
        var result = new Dictionary<string, ModelPreset>(StringComparer.OrdinalIgnoreCase);
        foreach (var res in asm.GetManifestResourceNames().Where(n => n.Contains(".Presets.") && n.EndsWith(".json")))
        {
            using var s = asm.GetManifestResourceStream(res)!;
            using var doc = JsonDocument.Parse(s);
            var root = new JsonConfigReader(doc.RootElement.Clone(), "preset:" + res);
            var name = root.String("name")!;
            var layout = root.String("layout") == "llava-hf" ? CheckpointLayout.LlavaHf : CheckpointLayout.Original;
            var cfgReader = root.Object("config")!;
            var modelType = cfgReader.String("model_type") ?? "llava";
            var config = layout == CheckpointLayout.LlavaHf
                ? ModelFolder.ParseLlavaHf(cfgReader, modelType)
                : ModelFolder.ParseOriginal(cfgReader, modelType, root.Object("vision_tower_config")!);
            result[name] = new ModelPreset(name, root.String("hub_id")!, layout, root.String("weights")!, root.String("vision_tower_hub_id"), config);
        }
        return result;
    }
}
