using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V;
using ShareGPT4V.Cuda;
using ShareGPT4V.GpuCheck;

// sharegpt4v-gpucheck native|oracle [--option value ...]; every command prints a table and can write JSON. Timings and the
// benchmark checkpoint are the bench's (samples/ShareGPT4V.Bench: run --device cuda:N, make-checkpoint). The verbs are
// parsed by the command-line setup the sharegpt4v tool and the bench share (samples/Shared).
// Exit codes: 0 all checks passed, 1 a check failed, 2 bad command line, 3 the device or libtorch was refused.
const string Description = """
    sharegpt4v-gpucheck: which libtorch loads, and the oracle parity on a CUDA device (see scripts/gpu/README.md).
    Exit codes: 0 all checks passed, 1 a check failed, 2 bad command line, 3 the device or libtorch was refused.
    """;

OptionSpec libtorchDir = new("libtorch-dir", "DIR", "the lib folder of the libtorch to load first, e.g. a PyTorch install's torch/lib");
OptionSpec json = new("json", "FILE", "also write the result as JSON to FILE");
VerbSpec[] verbs =
[
    new("native", "which native libtorch, TorchSharp and CUDA libraries load, and whether CUDA works")
    {
        Options = [libtorchDir, json, OptionSpec.Flag("allow-cpu", "pass without CUDA (a CPU-only machine)")],
        Run = (cl, _) => Task.FromResult(Check(cl, NativeCommand.Run)),
    },
    new("oracle", "the tiny oracle checkpoints against their transformers goldens on a device, per precision mode")
    {
        Options =
        [
            libtorchDir, json,
            new("device", "NAME", "cuda:0 (default), cuda:N or cpu"),
            new("fixtures", "DIR", "the test fixtures folder (default tests/ShareGPT4V.Tests/Fixtures)"),
            new("modes", "LIST", "comma-separated: fp32, fp32-tf32, fp16, bf16 (default: all on CUDA, fp32 on the CPU)"),
        ],
        Run = (cl, _) => Task.FromResult(Check(cl, OracleCommand.Run)),
    },
];
return await CommandLineApp.RunAsync("sharegpt4v-gpucheck", Description, verbs, args, _ => null, CancellationToken.None);

static int Check(CommandLine opts, Func<CommandLine, JsonObject> run)
{
    try
    {
        // An external libtorch must be in place before anything touches TorchSharp.
        if (opts.Value("libtorch-dir") is { } dir) Console.WriteLine(NativeLibTorch.Load(dir).Summary);
        var result = run(opts);
        if (opts.Value("json") is { } path)
            File.WriteAllText(path, result.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        return result["ok"]?.GetValue<bool>() == false ? 1 : 0;
    }
    catch (ShareGPT4VException e)
    {
        Console.Error.WriteLine($"{e.GetType().Name}: {e.Message}");
        if (opts.Value("json") is { } path)
            File.WriteAllText(path, new JsonObject { ["ok"] = false, ["error"] = e.GetType().Name, ["message"] = e.Message }.ToJsonString());
        return 3;
    }
}
