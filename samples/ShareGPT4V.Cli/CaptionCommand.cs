using ShareGPT4V.Conversation;

namespace ShareGPT4V.Cli;

/// <summary><c>caption</c>: one image, several, or every image of a folder (as JSON lines, with a progress bar).</summary>
internal static class CaptionCommand
{
    public const string Help = """
        usage: sharegpt4v caption --model DIR --image FILE|FOLDER [--image ...] [options]

        Captions each image. One image prints its caption as it is generated; several images, or a folder
        (every .png .jpg .jpeg .webp .gif .bmp in it, sorted by name), are captioned in batches and written as
        JSON lines (one object per image: image, text, token_ids, finish_reason, ...; an image that cannot be
        read gets a line with its error and the rest go on).

          --image FILE|FOLDER     image to caption (repeatable)
          --prompt TEXT           the instruction (default: "Describe this image in detail.")
          --json                  print JSON (one object per answer, with text and token_ids)
          --output FILE           write the JSON lines to FILE instead of standard output
          --batch-size N          images generated together (default 8)

        """ + Shared.ModelHelp + Shared.GenerationHelp;

    private static readonly string[] ImageExtensions = { ".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp" };

    public static async Task<int> RunAsync(IReadOnlyList<string> args, CancellationToken ct)
    {
        var cl = CommandLine.Parse("caption", args,
            new[] { "image", "prompt", "output", "batch-size" }.Concat(Shared.ModelOptions).Concat(Shared.GenerationOptionNames).ToArray(),
            new[] { "json" }.Concat(Shared.GenerationFlags).ToArray());
        var generation = Shared.Generation(cl);
        var (images, fromFolder) = CollectImages(cl.All("image"));
        string? prompt = cl.Value("prompt");
        bool lines = fromFolder || images.Count > 1 || cl.Value("output") is not null;
        using var pipeline = Shared.Load(cl, generation, cl.Int("batch-size", 1, 256));

        if (!lines)
        {
            var image = ImageInput.FromFile(images[0]);
            if (cl.Flag("json"))
            {
                var r = await pipeline.CaptionAsync(image, prompt, null, ct);
                Console.WriteLine(Shared.ToJson(r));
            }
            else
            {
                var messages = new[] { new ChatMessage(ChatRole.User, prompt ?? MultimodalPipeline.DefaultCaptionPrompt, 1) };
                await foreach (var piece in pipeline.ChatStreamingAsync(messages, new[] { image }, null, ct))
                    Console.Write(piece);
                Console.WriteLine();
            }
            return 0;
        }

        using var output = cl.Value("output") is { } path ? new StreamWriter(path, append: false) : null;
        var writer = output ?? Console.Out;
        var bar = new ConsoleProgress("captioning");
        int done = 0, failed = 0;
        foreach (var chunk in images.Chunk(pipeline.Options.MaxBatchSize))
        {
            ct.ThrowIfCancellationRequested();
            bar.Report(done, images.Count, $"{done}/{images.Count} images");
            IReadOnlyList<GenerationOutcome> outcomes;
            try
            {
                var results = await pipeline.CaptionBatchAsync(chunk.Select(ImageInput.FromFile).ToList(), prompt, null, null, ct);
                outcomes = results.Select(r => new GenerationOutcome(r, null)).ToList();
            }
            catch (ShareGPT4VException) when (chunk.Length > 1)
            {
                // One bad image fails its whole batch: caption the batch one by one to report just the bad ones.
                var one = new List<GenerationOutcome>();
                foreach (var file in chunk)
                {
                    try { one.Add(new GenerationOutcome(await pipeline.CaptionAsync(ImageInput.FromFile(file), prompt, null, ct), null)); }
                    catch (ShareGPT4VException e) { one.Add(new GenerationOutcome(null, e)); }
                }
                outcomes = one;
            }
            catch (ShareGPT4VException e)
            {
                outcomes = new[] { new GenerationOutcome(null, e) };
            }
            for (int i = 0; i < chunk.Length; i++)
            {
                var (result, error) = outcomes[i];
                if (error is not null)
                {
                    failed++;
                    Console.Error.WriteLine($"{chunk[i]}: {error.Message}");
                }
                writer.WriteLine(result is not null ? Shared.ToJson(result, chunk[i]) : Shared.ErrorJson(chunk[i], error!));
            }
            writer.Flush();
            done += chunk.Length;
        }
        bar.Report(done, images.Count, $"{done}/{images.Count} images");
        if (failed > 0) Console.Error.WriteLine($"{failed} of {images.Count} image(s) could not be captioned");
        return failed > 0 ? 1 : 0;
    }

    private sealed record GenerationOutcome(Generation.GenerationResult? Result, Exception? Error);

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
