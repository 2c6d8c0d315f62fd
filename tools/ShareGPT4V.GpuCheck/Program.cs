using System.Text.Json;
using System.Text.Json.Nodes;
using ShareGPT4V;
using ShareGPT4V.Cuda;
using ShareGPT4V.GpuCheck;

// sharegpt4v-gpucheck native|oracle [--option value ...]; every command prints a table and can write JSON. Timings and the
// benchmark checkpoint are the bench's (samples/ShareGPT4V.Bench: run --device cuda:N, make-checkpoint).
var (command, opts) = Args.Parse(args);
try
{
    // An external libtorch must be in place before anything touches TorchSharp.
    if (opts.Get("libtorch-dir") is { } dir) Console.WriteLine(NativeLibTorch.Load(dir).Summary);
    JsonObject result = command switch
    {
        "native" => NativeCommand.Run(opts),
        "oracle" => OracleCommand.Run(opts),
        _ => throw new ArgumentException("usage: sharegpt4v-gpucheck native|oracle [--libtorch-dir DIR] [options]; see scripts/gpu/README.md"),
    };
    if (opts.Get("json") is { } path)
        File.WriteAllText(path, result.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    return result["ok"]?.GetValue<bool>() == false ? 1 : 0;
}
catch (ShareGPT4VException e)
{
    Console.Error.WriteLine($"{e.GetType().Name}: {e.Message}");
    if (opts.Get("json") is { } path)
        File.WriteAllText(path, new JsonObject { ["ok"] = false, ["error"] = e.GetType().Name, ["message"] = e.Message }.ToJsonString());
    return 3;
}
catch (ArgumentException e)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}
