using System.Diagnostics;
using System.Text.Json;
using ShareGPT4V.Devices;
using ShareGPT4V.Tests.Oracle;
using Xunit;

namespace ShareGPT4V.Tests.Hub;

/// <summary>The <c>sharegpt4v</c> process against the fake hub, configured only through the HF_* environment, as a user runs it.</summary>
public sealed class CliHubTests : IDisposable
{
    private readonly FakeHub _hub = new();
    private readonly string _home = Directory.CreateTempSubdirectory("sharegpt4v-hfhome-").FullName;

    public void Dispose()
    {
        _hub.Dispose();
        try { Directory.Delete(_home, recursive: true); } catch (IOException) { }
    }

    private sealed record Run(int ExitCode, string Out, string Err);

    private Run Cli(Dictionary<string, string>? env, params string[] args)
    {
        var psi = Samples.CliProcess.StartInfo(args);
        foreach (var name in new[] { "HF_TOKEN", "HF_HUB_CACHE", "HF_TOKEN_PATH", "HF_HUB_OFFLINE" }) psi.Environment.Remove(name);
        psi.Environment["HF_ENDPOINT"] = _hub.Endpoint;
        psi.Environment["HF_HOME"] = _home;
        foreach (var (k, v) in env ?? new()) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(120_000)) { p.Kill(entireProcessTree: true); Assert.Fail("the CLI did not finish within 2 minutes"); }
        return new Run(p.ExitCode, stdout.Result, stderr.Result);
    }

    [Fact]
    public void DownloadThenCaptionOfflineByHubId()
    {
        var c = GoldenCase.Get("hf_llama2vocab");
        var files = Directory.GetFiles(c.ModelPath).Where(f => Path.GetFileName(f) is "config.json" or "model.safetensors" or "tokenizer.json"
                or "tokenizer_config.json" or "special_tokens_map.json" or "preprocessor_config.json" or "generation_config.json" or "image1.png")
            .ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes);
        var commit = _hub.AddRepo("tiny/llava-hf", files);

        var d = Cli(null, "download", "tiny/llava-hf", "--include", "*.json", "--include", "*.safetensors");
        Assert.True(d.ExitCode == 0, d.Err);
        var snapshot = Path.Combine(_home, "hub", "models--tiny--llava-hf", "snapshots", commit);
        Assert.Equal(snapshot, d.Out.Trim());
        Assert.False(File.Exists(Path.Combine(snapshot, "image1.png")));        // --include
        Assert.Contains("model.safetensors", d.Err);                           // the progress bar names the file

        int before = _hub.Log.Count;
        var r = Cli(new() { ["HF_HUB_OFFLINE"] = "1" }, "caption", "--model", "tiny/llava-hf", "--image", Path.Combine(c.Dir, "image1.png"),
            "--template", "llava_v1", "--max-new-tokens", "12", "--json");
        Assert.True(r.ExitCode == 0, r.Err);
        var ids = JsonDocument.Parse(r.Out).RootElement.GetProperty("token_ids").EnumerateArray().Select(x => x.GetInt32());
        Assert.Equal(c.Prompt("main").GetProperty("generated_ids").EnumerateArray().Select(x => x.GetInt32()), ids);
        Assert.Equal(before, _hub.Log.Count);                                   // offline: no request at all
    }

    [Fact]
    public void ErrorsAndVersionUseTheDocumentedExitCodes()
    {
        _hub.Token = "hf_right";
        _hub.AddRepo("org/gated", new Dictionary<string, byte[]> { ["config.json"] = "{}"u8.ToArray() }, gated: true);
        var denied = Cli(null, "download", "org/gated");
        Assert.Equal(1, denied.ExitCode);
        Assert.Contains("HF_TOKEN", denied.Err);
        var allowed = Cli(new() { ["HF_TOKEN"] = "hf_right" }, "download", "org/gated");
        Assert.True(allowed.ExitCode == 0, allowed.Err);

        Assert.Equal(2, Cli(null, "download").ExitCode);
        Assert.Equal(2, Cli(null, "download", "not a repo").ExitCode);
        var v = Cli(null, "--version");
        Assert.Equal(0, v.ExitCode);
        Assert.Matches(@"^\d+\.\d+\.\d+", v.Out.Trim());
    }

    [Fact]
    public void MissingLibTorchNamesThePackageForThisPlatform()
    {
        var e = LibTorchRuntime.Missing(new TypeInitializationException("TorchSharp.torch", new NotSupportedException("no native backend\nmore trace")));
        Assert.IsAssignableFrom<ShareGPT4VException>(e);
        if (OperatingSystem.IsLinux() && System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture == System.Runtime.InteropServices.Architecture.X64)
        {
            Assert.Equal("libtorch-cpu-linux-x64", e.PackageId);
            Assert.Contains("dotnet add package libtorch-cpu-linux-x64 --version 2.10.0", e.Message);
        }
        Assert.Contains("no native backend", e.Message);
        Assert.DoesNotContain("more trace", e.Message);
    }
}
