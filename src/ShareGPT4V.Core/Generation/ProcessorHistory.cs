using ShareGPT4V.Configuration;

namespace ShareGPT4V.Generation;

/// <summary>
/// The prompt part of the history the logits processors see, as each layout's reference generates
/// (transformers 4.45.2 / LLaVA ≥ 1.2; see <see cref="GenerationOptions"/>).
/// </summary>
internal static class ProcessorHistory
{
    /// <summary>
    /// llava-hf: the prompt ids as <c>LlavaForConditionalGeneration.generate</c> gets them from a current processor
    /// — each image placeholder expanded to one image id per image feature (a run already expanded stays as it is).
    /// Original layout: nothing, since LLaVA calls <c>generate(inputs_embeds=...)</c> without ids; the history is
    /// then the generated ids only.
    /// </summary>
    public static List<int> ForPrompt(LlavaConfig config, IReadOnlyList<int> promptIds)
    {
        var history = new List<int>();
        if (config.Layout != CheckpointLayout.LlavaHf) return history;
        int placeholder = config.ImageTokenIndex, perImage = config.ImageSeqLength;
        for (int i = 0; i < promptIds.Count;)
        {
            if (promptIds[i] != placeholder) { history.Add(promptIds[i++]); continue; }
            int run = 0;
            while (i + run < promptIds.Count && promptIds[i + run] == placeholder) run++;
            // The same rule as LlavaModel.BuildInputs: a whole multiple of the feature count is pre-expanded.
            int total = perImage > 1 && run % perImage == 0 ? run : run * perImage;
            for (int k = 0; k < total; k++) history.Add(placeholder);
            i += run;
        }
        return history;
    }
}
