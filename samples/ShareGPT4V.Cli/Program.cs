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
      train     fine-tune a model (ShareGPT4V / LLaVA stages, LoRA, HF Trainer semantics), resumable checkpoints
      merge-lora  fold a LoRA adapter (PEFT format) into its base model

    Each command's options: sharegpt4v <command> --help
    """;

if (args.Length == 0 || args[0] is "--help" or "-h" or "help")
{
    Console.WriteLine(Usage);
    return args.Length == 0 ? 2 : 0;
}

var command = args[0];
var rest = args.Skip(1).ToArray();
string? help = command switch
{
    "caption" => CaptionCommand.Help,
    "chat" => ChatCommand.Help,
    "convert" => ConvertCommand.Help,
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
        "train" => await TrainCommand.RunAsync(rest, interrupts.Process),
        "merge-lora" => MergeLoraCommand.Run(rest),
        _ => ConvertCommand.Run(rest),
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
catch (Exception e) when (e is IOException or UnauthorizedAccessException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}
