// sharegpt4v: caption and chat about images with ShareGPT4V / LLaVA-1.5 models, and convert checkpoints.
// Run with no arguments (or --help) for the commands; each command has its own --help. The verbs are declared in their
// XxxCommand.cs files and parsed by the command-line setup the bench and the GPU check share (samples/Shared).
using ShareGPT4V;
using ShareGPT4V.Cli;
using ShareGPT4V.CommandLineTools;

const string Description = """
    sharegpt4v: caption images and chat about them with ShareGPT4V / LLaVA-1.5 models, convert and download checkpoints,
    evaluate and fine-tune. Each command's options: sharegpt4v <command> --help.
    Exit codes: 0 done, 1 error, 2 bad command line, 130 cancelled.
    """;

using var interrupts = new Interrupts();
VerbSpec[] verbs =
[
    CaptionCommand.Verb,
    ChatCommand.Verb(interrupts),
    ConvertCommand.Verb,
    EvalCommand.Verb,
    DownloadCommand.Verb,
    MergeCommand.Verb,
    TrainCommand.Verb,
    MergeLoraCommand.Verb,
];
return await CommandLineApp.RunAsync("sharegpt4v", Description, verbs, args, Failure, interrupts.Process);

static int? Failure(Exception e)
{
    switch (e)
    {
        case ShareGPT4VException or IOException or UnauthorizedAccessException or InvalidDataException:
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        case OperationCanceledException:
            Console.Error.WriteLine("cancelled");
            return 130;
        default:
            return null;
    }
}
