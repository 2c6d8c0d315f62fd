using ShareGPT4V.Conversation;

namespace ShareGPT4V.Cli;

/// <summary><c>chat</c>: one question (<c>--prompt</c>) or an interactive multi-turn conversation about images.</summary>
internal static class ChatCommand
{
    public static VerbSpec Verb(Interrupts interrupts) => new("chat", "ask about images, once (--prompt) or as an interactive conversation")
    {
        Details = """
        usage: sharegpt4v chat --model DIR [--image FILE ...] [--prompt TEXT] [options]

        With --prompt, answers once (streamed, or as JSON with --json). Without it, reads your turns from standard
        input and keeps the conversation: /image FILE attaches an image to your next turn, /reset starts over,
        /exit (or end of input) quits; a line starting with // sends text that begins with /. Ctrl+C stops the answer
        being generated; at the prompt, Ctrl+C twice quits. When the conversation outgrows the context window, the oldest
        turns are dropped and answers are shortened to fit.
        """,
        Options =
        [
            new("image", "FILE", "image for the first turn (repeatable)", Repeatable: true),
            new("prompt", "TEXT", "the question (one answer, then exit)"),
            new("system", "TEXT", "replaces the template's system message"),
            OptionSpec.Flag("json", "print the answer as JSON (text, token_ids, ...); needs --prompt"),
            .. Shared.ModelOptions,
            .. Shared.GenerationOptionSpecs,
        ],
        Run = (cl, _) => RunAsync(cl, interrupts),
    };

    public static async Task<int> RunAsync(CommandLine cl, Interrupts interrupts)
    {
        var generation = Shared.Generation(cl);
        foreach (var f in cl.All("image"))
            if (!File.Exists(f)) throw new UsageException($"Image '{f}' does not exist");
        var pending = cl.All("image").Select(ImageInput.FromFile).ToList();
        string? system = cl.Value("system");
        string? prompt = cl.Value("prompt");
        if (cl.Flag("json") && prompt is null) throw new UsageException("--json needs --prompt (one answer)");
        // The conversation grows with every turn: an answer is shortened to fit rather than refused.
        using var pipeline = Shared.Load(cl, generation, overflow: prompt is null ? PromptOverflow.ClampNewTokens : null);

        if (prompt is not null)
        {
            var messages = new[] { new ConversationMessage(ConversationRole.User, prompt, pending.Count) };
            var text = pipeline.BuildPrompt(messages, system);
            using var cts = interrupts.ForOperation();
            try
            {
                if (cl.Flag("json"))
                    Console.WriteLine(Shared.ToJson(await pipeline.GenerateAsync(text, pending, null, cts.Token)));
                else
                {
                    await StreamAsync(pipeline, text, pending, new System.Text.StringBuilder(), cts.Token);
                    Console.WriteLine();
                }
            }
            catch (PromptException e) when (Shared.ContextOverflow(e, pipeline, text, pending.Count, generation) is { } explained)
            {
                throw explained;
            }
            return 0;
        }

        bool interactive = !Console.IsInputRedirected;
        var history = new List<ConversationMessage>();
        var images = new List<ImageInput>();
        if (interactive)
            Console.Error.WriteLine($"Chatting with {Path.GetFileName(pipeline.Options.ModelPath.TrimEnd('/'))} (template {pipeline.Template.Name}). {Commands}.");
        while (true)
        {
            if (interactive) Console.Error.Write(pending.Count > 0 ? $"you ({pending.Count} image(s))> " : "you> ");
            interrupts.AtPrompt = true;
            string? line;
            try { line = Console.ReadLine(); }
            finally { interrupts.AtPrompt = false; }
            if (line is null) break;
            var trimmed = line.Trim();
            if (trimmed.Length == 0) continue;
            if (trimmed.StartsWith("//", StringComparison.Ordinal)) line = trimmed[1..]; // "//text" sends "/text"
            else if (trimmed.StartsWith('/'))
            {
                var (name, argument) = SplitCommand(trimmed);
                switch (name)
                {
                    case "/exit":
                        return 0;
                    case "/reset":
                        history.Clear();
                        images.Clear();
                        pending.Clear();
                        Console.Error.WriteLine("(conversation cleared)");
                        continue;
                    case "/image":
                        if (CheckImage(argument, pipeline) is { } image)
                        {
                            pending.Add(image);
                            Console.Error.WriteLine($"(image {Path.GetFileName(argument)} attached to your next turn)");
                        }
                        continue;
                    default:
                        Console.Error.WriteLine($"Unknown command '{name}': {Commands}; start a line with // to send text that begins with /.");
                        continue;
                }
            }

            var turn = new ConversationMessage(ConversationRole.User, line, pending.Count);
            var answer = new System.Text.StringBuilder();
            using var cts = interrupts.ForOperation();
            try
            {
                while (true)
                {
                    try
                    {
                        var conversation = history.Append(turn).ToList();
                        await StreamAsync(pipeline, pipeline.BuildPrompt(conversation, system), images.Concat(pending).ToList(), answer, cts.Token);
                        break;
                    }
                    catch (PromptException) when (answer.Length == 0 && history.Count >= 2)
                    {
                        // The conversation outgrew the context window: forget the oldest exchange (and its images) and retry,
                        // rather than failing this turn and every later one.
                        images.RemoveRange(0, history[0].ImageCount);
                        history.RemoveRange(0, 2);
                        Console.Error.WriteLine("(the oldest turn was dropped to fit the context window)");
                    }
                }
                Console.WriteLine();
            }
            catch (OperationCanceledException)
            {
                Console.WriteLine();
                Console.Error.WriteLine("[stopped]");
            }
            catch (ShareGPT4VException e)
            {
                // A bad turn (unreadable image, a turn longer than the whole context window) leaves the conversation as it was.
                Console.Error.WriteLine("error: " + e.Message);
                if (e is PromptException) Console.Error.WriteLine("(a shorter message, fewer images or /reset may fit)");
                pending.Clear();
                continue;
            }
            // What was said, even if stopped early, is part of the conversation now.
            history.Add(turn);
            history.Add(new ConversationMessage(ConversationRole.Assistant, answer.ToString().Trim()));
            images.AddRange(pending);
            pending.Clear();
        }
        return 0;
    }

    private const string Commands = "/image FILE attaches an image, /reset starts over, /exit quits";

    private static (string Name, string Argument) SplitCommand(string line)
    {
        int space = line.IndexOf(' ');
        return space < 0 ? (line, "") : (line[..space], line[(space + 1)..].Trim());
    }

    /// <summary>Decodes an image now, with the pipeline's limits, so a bad file is refused at /image, not a turn later.</summary>
    private static ImageInput? CheckImage(string path, MultimodalPipeline pipeline)
    {
        if (path.Length == 0) { Console.Error.WriteLine("usage: /image FILE"); return null; }
        if (!File.Exists(path)) { Console.Error.WriteLine($"No such file: {path}"); return null; }
        try
        {
            var image = ImageInput.FromFile(path);
            image.Validate(pipeline.Options.ImageLimits);
            return image;
        }
        catch (ShareGPT4VException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return null;
        }
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
