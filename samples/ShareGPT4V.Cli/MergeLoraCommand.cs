using ShareGPT4V.Training;

namespace ShareGPT4V.Cli;

/// <summary><c>merge-lora</c>: fold a LoRA adapter into its base model and write the merged model.</summary>
internal static class MergeLoraCommand
{
    public static VerbSpec Verb => new("merge-lora", "fold a LoRA adapter (PEFT format) into its base model")
    {
        Details = """
        usage: sharegpt4v merge-lora --model DIR --adapter DIR --output DIR

        Applies a LoRA adapter in PEFT's format (adapter_config.json + adapter_model.safetensors, as
        'sharegpt4v train --lora-r N' writes it; its non_lora_trainables.safetensors projector too when present) to the
        base model and writes the merged model, in the base model's layout, into the output folder (must not exist or
        be empty).
        """,
        Options =
        [
            new("model", "DIR", "base model folder (required)"),
            new("vision-tower", "DIR", "CLIP tower folder, when mm_vision_tower cannot be found next to the model"),
            new("adapter", "DIR", "the adapter folder (required)"),
            new("output", "DIR", "where to write the merged model (required)"),
        ],
        Run = (cl, _) => Task.FromResult(Run(cl)),
    };

    public static int Run(CommandLine cl)
    {
        var path = LoraMerger.Merge(Shared.CheckModelPath(cl, hubId: false, gguf: false), cl.Required("adapter"), cl.Required("output"), cl.Value("vision-tower"));
        Console.WriteLine($"Merged model written; load it with --model {path}.");
        return 0;
    }
}
