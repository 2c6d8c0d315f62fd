// sharegpt4v: caption and chat about images with ShareGPT4V / LLaVA-1.5 models, and convert checkpoints.
// Run with no arguments (or --help) for the commands; each command has its own --help.
using ShareGPT4V;
using ShareGPT4V.Cli;

const string Usage = """
    usage: sharegpt4v <command> [options]

    commands:
      caption   caption one image, several, or a folder of images (JSON lines)
      chat      ask about images, once (--prompt) or as an interactive conversation
      convert   rewrite a checkpoint (PyTorch .bin or safetensors) as safetensors, in either layout
      eval      run a benchmark (reference prompts), merge shards, score answers exactly as the official scripts
      download  fetch a Hugging Face hub repository into the hub cache (or a folder), with its vision tower
      merge     join the JSON lines of sharded caption runs in input order
      train     fine-tune a model (ShareGPT4V / LLaVA stages, LoRA, HF Trainer semantics), resumable checkpoints
      merge-lora  fold a LoRA adapter (PEFT format) into its base model

    Each command's options: sharegpt4v <command> --help. sharegpt4v --version prints the version.
    """;

if (args.Length == 0 || args[0] is "--help" or "-h" or "help")
{
    Console.WriteLine(Usage);
    return args.Length == 0 ? 2 : 0;
}

if (args[0] is "--version")
{
    Console.WriteLine(typeof(MultimodalPipeline).Assembly
        .GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
        .OfType<System.Reflection.AssemblyInformationalVersionAttribute>().FirstOrDefault()?.InformationalVersion.Split('+')[0] ?? "unknown");
    return 0;
}

var command = args[0];
var rest = args.Skip(1).ToArray();
string? help = command switch
{
    "caption" => CaptionCommand.Help,
    "chat" => ChatCommand.Help,
    "convert" => ConvertCommand.Help,
    "eval" => rest.Length > 0 && rest[0] == "run" ? EvalRunCommand.Help : EvalCommand.Help,
    "download" => DownloadCommand.Help,
    "merge" => MergeCommand.Help,
    "train" => TrainCommand.Help,
    "merge-lora" => MergeLoraCommand.Help,
    _ => null,
};
if (help is null)
{
    Console.Error.WriteLine($"Unknown command '{command}'.\n\n{Usage}");
    return 2;
}
if (rest.Any(a => a is "--help" or "-h"))
{
    Console.WriteLine(help);
    return 0;
}

using var interrupts = new Interrupts();
try
{
    return command switch
    {
        "caption" => await CaptionCommand.RunAsync(rest, interrupts.Process),
        "chat" => await ChatCommand.RunAsync(rest, interrupts),
        "eval" => await EvalCommand.RunAsync(rest, interrupts.Process),
        "convert" => await ConvertCommand.RunAsync(rest, interrupts.Process),
        "download" => await DownloadCommand.RunAsync(rest, interrupts.Process),
        "merge" => MergeCommand.Run(rest),
        "train" => await TrainCommand.RunAsync(rest, interrupts.Process),
        "merge-lora" => MergeLoraCommand.Run(rest),
        _ => throw new InvalidOperationException($"no handler for '{command}'"), // every command with a Help has a line here
    };
}
catch (UsageException e)
{
    Console.Error.WriteLine($"error: {e.Message}\n(see 'sharegpt4v {command} --help')");
    return 2;
}
catch (ShareGPT4VException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}
catch (OperationCanceledException)
{
    Console.Error.WriteLine("cancelled");
    return 130;
}
catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}
