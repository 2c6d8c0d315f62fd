using ShareGPT4V.Conversation;

namespace ShareGPT4V.Cli;

/// <summary><c>caption</c>: one image, several, or every image of a folder (as JSON lines, with a progress bar).</summary>
internal static class CaptionCommand
{
    public static VerbSpec Verb => new("caption", "caption one image, several, or a folder of images (JSON lines)")
    {
        Details = """
        usage: sharegpt4v caption --model DIR --image FILE|FOLDER [--image ...] [options]
               sharegpt4v caption --model DIR --manifest FILE.jsonl --output FILE [--shard i/N] [options]

        Captions each image. One image prints its caption as it is generated; several images, a folder (every
        .png .jpg .jpeg .webp .gif .bmp in it, sorted by name) or a manifest are captioned in batches and written
        as JSON lines (one object per image: index, image, text, token_ids, finish_reason, ...; an image that
        cannot be read gets a line with its error and the rest go on).

        Bulk runs resume: when --output exists, the images it already has are skipped (a partial last line left
        by a killed run is dropped first). --shard i/N (or a Kubernetes Indexed Job's JOB_COMPLETION_INDEX and
        JOB_COMPLETIONS) captions every N-th image starting at i; 'sharegpt4v merge' joins the shards' outputs
        into the unsharded order. "{shard}" in --output is replaced by the shard index.
        """,
        Options =
        [
            new("image", "FILE|FOLDER", "image to caption (repeatable)", Repeatable: true),
            new("manifest", "FILE", "JSON lines, one {\"image\": PATH, \"prompt\": TEXT (optional)} per image; relative paths are read from the manifest's folder"),
            new("prompt", "TEXT", "the instruction (default: \"Describe this image in detail.\")"),
            OptionSpec.Flag("json", "print JSON (one object per answer, with text and token_ids)"),
            new("output", "FILE", "write the JSON lines to FILE instead of standard output (resumed if it exists)"),
            OptionSpec.Flag("overwrite", "start --output afresh instead of resuming it"),
            new("shard", "i/N", "caption only shard i (0-based) of N"),
            new("batch-size", "N", "images generated together (default 8)"),
            .. Shared.ModelOptions,
            .. Shared.GenerationOptionSpecs,
        ],
        Run = RunAsync,
    };

    private static readonly string[] ImageExtensions = { ".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp" };

    public static async Task<int> RunAsync(CommandLine cl, CancellationToken ct)
    {
        var generation = Shared.Generation(cl);
        if (cl.Value("manifest") is not null && cl.All("image").Count > 0) throw new UsageException("Give --image or --manifest, not both");
        var manifest = cl.Value("manifest") is { } m ? CaptionJob.ReadManifest(m) : null; // checked before the model loads
        var (images, fromFolder) = manifest is not null ? (new List<string>(), true) : CollectImages(cl.All("image"));
        string? prompt = cl.Value("prompt");
        var shard = CaptionJob.Shard(cl.Value("shard"));
        bool lines = fromFolder || images.Count > 1 || cl.Value("output") is not null || shard.Count > 1;
        using var pipeline = Shared.Load(cl, generation, cl.Int("batch-size", 1, 256));

        if (!lines)
        {
            var image = ImageInput.FromFile(images[0]);
            var messages = new[] { new ConversationMessage(ConversationRole.User, prompt ?? MultimodalPipeline.DefaultCaptionPrompt, 1) };
            try
            {
                if (cl.Flag("json"))
                {
                    var r = await pipeline.CaptionAsync(image, prompt, null, ct);
                    Console.WriteLine(Shared.ToJson(r));
                }
                else
                {
                    await foreach (var piece in pipeline.ChatStreamingAsync(messages, new[] { image }, null, ct))
                        Console.Write(piece);
                    Console.WriteLine();
                }
            }
            catch (PromptException e) when (Shared.ContextOverflow(e, pipeline, pipeline.BuildPrompt(messages), 1, generation) is { } explained)
            {
                throw explained;
            }
            return 0;
        }

        var all = manifest ?? images.Select((f, i) => new CaptionItem(i, f, f, null)).ToList();
        var output = cl.Value("output")?.Replace("{shard}", shard.Index.ToString(System.Globalization.CultureInfo.InvariantCulture));
        var already = output is null ? new HashSet<string>() : CaptionJob.PrepareOutput(output, cl.Flag("overwrite"));
        var todo = all.Where(item => item.Index % shard.Count == shard.Index && !already.Contains(item.Image)).ToList();
        if (already.Count > 0) Console.Error.WriteLine($"{output}: resuming, {already.Count} image(s) already captioned");
        int failed = await CaptionJob.RunAsync(pipeline, todo, prompt, Console.Out, output, ct);
        if (failed > 0) Console.Error.WriteLine($"{failed} of {todo.Count} image(s) could not be captioned");
        return failed > 0 ? 1 : 0;
    }

    private static (List<string> Files, bool FromFolder) CollectImages(IReadOnlyList<string> given)
    {
        if (given.Count == 0) throw new UsageException("--image is required for 'caption'");
        var files = new List<string>();
        bool folder = false;
        foreach (var g in given)
        {
            if (Directory.Exists(g))
            {
                folder = true;
                var found = Directory.EnumerateFiles(g)
                    .Where(f => ImageExtensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
                    .OrderBy(f => f, StringComparer.Ordinal).ToList();
                if (found.Count == 0) throw new UsageException($"The folder '{g}' holds no images ({string.Join(" ", ImageExtensions)})");
                files.AddRange(found);
            }
            else if (File.Exists(g))
                files.Add(g);
            else
                throw new UsageException($"Image '{g}' does not exist");
        }
        return (files, folder);
    }
}
