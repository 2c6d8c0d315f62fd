using ShareGPT4V.Conversation;

namespace ShareGPT4V.Cli;

/// <summary><c>chat</c>: one question (<c>--prompt</c>) or an interactive multi-turn conversation about images.</summary>
internal static class ChatCommand
{
    public const string Help = """
        usage: sharegpt4v chat --model DIR [--image FILE ...] [--prompt TEXT] [options]

        With --prompt, answers once (streamed, or as JSON with --json). Without it, reads your turns from standard
        input and keeps the conversation: /image FILE attaches an image to your next turn, /reset starts over,
        /exit (or end of input) quits. Ctrl+C stops the answer being generated.

          --image FILE            image for the first turn (repeatable)
          --prompt TEXT           the question (one answer, then exit)
          --system TEXT           replaces the template's system message
          --json                  print the answer as JSON (text, token_ids, ...); needs --prompt

        """ + Shared.ModelHelp + Shared.GenerationHelp;

    public static async Task<int> RunAsync(IReadOnlyList<string> args, Interrupts interrupts)
    {
        var cl = CommandLine.Parse("chat", args,
            new[] { "image", "prompt", "system" }.Concat(Shared.ModelOptions).Concat(Shared.GenerationOptionNames).ToArray(),
            new[] { "json" }.Concat(Shared.GenerationFlags).ToArray());
        var generation = Shared.Generation(cl);
        foreach (var f in cl.All("image"))
            if (!File.Exists(f)) throw new UsageException($"Image '{f}' does not exist");
        var pending = cl.All("image").Select(ImageInput.FromFile).ToList();
        string? system = cl.Value("system");
        string? prompt = cl.Value("prompt");
        if (cl.Flag("json") && prompt is null) throw new UsageException("--json needs --prompt (one answer)");
        using var pipeline = Shared.Load(cl, generation);

        if (prompt is not null)
        {
            var messages = new[] { new ChatMessage(ChatRole.User, prompt, pending.Count) };
            var text = pipeline.BuildPrompt(messages, system);
            using var cts = interrupts.ForOperation();
            if (cl.Flag("json"))
                Console.WriteLine(Shared.ToJson(await pipeline.GenerateAsync(text, pending, null, cts.Token)));
            else
            {
                await StreamAsync(pipeline, text, pending, new System.Text.StringBuilder(), cts.Token);
                Console.WriteLine();
            }
            return 0;
        }

        bool interactive = !Console.IsInputRedirected;
        var history = new List<ChatMessage>();
        var images = new List<ImageInput>();
        if (interactive)
            Console.Error.WriteLine($"Chatting with {Path.GetFileName(pipeline.Folder.ModelPath.TrimEnd('/'))} (template {pipeline.Template.Name}). /image FILE, /reset, /exit.");
        while (true)
        {
            if (interactive) Console.Error.Write(pending.Count > 0 ? $"you ({pending.Count} image(s))> " : "you> ");
            var line = Console.ReadLine();
            if (line is null || line.Trim() == "/exit") break;
            if (line.Trim().Length == 0) continue;
            if (line.StartsWith("/image ", StringComparison.Ordinal))
            {
                var file = line[7..].Trim();
                if (File.Exists(file)) pending.Add(ImageInput.FromFile(file));
                else Console.Error.WriteLine($"No such file: {file}");
                continue;
            }
            if (line.Trim() == "/reset")
            {
                history.Clear();
                images.Clear();
                pending.Clear();
                continue;
            }
            var turn = new ChatMessage(ChatRole.User, line, pending.Count);
            var conversation = history.Append(turn).ToList();
            var turnImages = images.Concat(pending).ToList();
            var answer = new System.Text.StringBuilder();
            using var cts = interrupts.ForOperation();
            try
            {
                await StreamAsync(pipeline, pipeline.BuildPrompt(conversation, system), turnImages, answer, cts.Token);
                Console.WriteLine();
            }
            catch (OperationCanceledException)
            {
                Console.WriteLine();
                Console.Error.WriteLine("[stopped]");
            }
            catch (ShareGPT4VException e)
            {
                // A bad turn (unreadable image, too long for the context) leaves the conversation as it was.
                Console.Error.WriteLine("error: " + e.Message);
                pending.Clear();
                continue;
            }
            // What was said, even if stopped early, is part of the conversation now.
            history.Add(turn);
            history.Add(new ChatMessage(ChatRole.Assistant, answer.ToString().Trim()));
            images.AddRange(pending);
            pending.Clear();
        }
        return 0;
    }

    /// <summary>Generates from a rendered prompt, printing text as it becomes final; <paramref name="answer"/> collects it (also when stopped).</summary>
    private static Task StreamAsync(MultimodalPipeline pipeline, string prompt, IReadOnlyList<ImageInput> images,
        System.Text.StringBuilder answer, CancellationToken ct) =>
        pipeline.GenerateBatchAsync(new[] { new PromptRequest(prompt, images) }, null, (_, piece) =>
        {
            // Called on the pipeline's inference thread, one piece at a time.
            lock (answer) answer.Append(piece);
            Console.Write(piece);
        }, ct);
}
