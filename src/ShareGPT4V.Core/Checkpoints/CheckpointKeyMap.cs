using System.Text.RegularExpressions;
using ShareGPT4V.Configuration;

namespace ShareGPT4V.Checkpoints;

/// <summary>Where a checkpoint's tensors come from, relative to the model.</summary>
internal enum CheckpointPart
{
    /// <summary>A llava-hf folder (everything in one checkpoint).</summary>
    LlavaHf,
    /// <summary>The LLM folder of an original LLaVA / ShareGPT4V checkpoint (LLaMA + <c>model.mm_projector</c>).</summary>
    OriginalLanguageModel,
    /// <summary>A separate CLIP tower folder (<c>CLIPVisionModel</c> or full <c>CLIPModel</c>).</summary>
    VisionTower,
}

/// <summary>
/// The declarative map from checkpoint keys to our parameter names (the llava-hf names of transformers 4.36–4.51).
/// A key maps to a name, or to null when it is a known tensor the model does not use (rotary inv_freq buffers,
/// position_ids, CLIP's text tower).
/// </summary>
internal static partial class CheckpointKeyMap
{
    [GeneratedRegex(@"^model\.mm_projector\.(\d+)\.(weight|bias)$")]
    private static partial Regex OriginalProjector();

    /// <summary>Maps one key; null = known and unused. Unknown keys map to themselves and are reported as unexpected.</summary>
    public static string? Map(string key, CheckpointPart part, LlavaConfig config)
    {
        if (key.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal) || key.EndsWith("embeddings.position_ids", StringComparison.Ordinal))
            return null;
        switch (part)
        {
            case CheckpointPart.LlavaHf:
                // transformers >= 4.52 names; the older (hub) names are ours already.
                if (key.StartsWith("model.language_model.", StringComparison.Ordinal)) return "language_model.model." + key["model.language_model.".Length..];
                if (key.StartsWith("model.vision_tower.", StringComparison.Ordinal)) return "vision_tower." + key["model.vision_tower.".Length..];
                if (key.StartsWith("model.multi_modal_projector.", StringComparison.Ordinal)) return "multi_modal_projector." + key["model.multi_modal_projector.".Length..];
                if (key.StartsWith("lm_head.", StringComparison.Ordinal)) return "language_model." + key;
                return key;

            case CheckpointPart.OriginalLanguageModel:
                var m = OriginalProjector().Match(key);
                if (m.Success)
                {
                    // nn.Sequential(Linear, GELU, Linear, ...): Linear k sits at index 2(k-1).
                    int idx = int.Parse(m.Groups[1].Value);
                    return idx % 2 == 0 ? $"multi_modal_projector.linear_{idx / 2 + 1}.{m.Groups[2].Value}" : key;
                }
                if (key is "model.mm_projector.weight" or "model.mm_projector.bias")
                    return "multi_modal_projector.linear_1." + key["model.mm_projector.".Length..];
                if (key.StartsWith("model.vision_tower.", StringComparison.Ordinal))
                    return null; // some LLaVA saves embed a tower copy; the tower folder is authoritative
                if (key.StartsWith("model.", StringComparison.Ordinal)) return "language_model." + key;
                if (key.StartsWith("lm_head.", StringComparison.Ordinal)) return "language_model." + key;
                return key;

            case CheckpointPart.VisionTower:
                if (key.StartsWith("vision_model.", StringComparison.Ordinal)) return "vision_tower." + key;
                if (key.StartsWith("vision_tower.vision_model.", StringComparison.Ordinal)) return key;
                // A full CLIPModel also holds the text tower and both projections: not part of LLaVA.
                if (key.StartsWith("text_model.", StringComparison.Ordinal) || key.StartsWith("visual_projection.", StringComparison.Ordinal)
                    || key.StartsWith("text_projection.", StringComparison.Ordinal) || key == "logit_scale")
                    return null;
                return key;
        }
        return key;
    }
}
